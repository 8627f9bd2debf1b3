//! Identity and key-policy calls: users, roles, inline policies, access keys,
//! AssumeRole, and the key policy of a key.
//!
//! ```no_run
//! # async fn demo(admin: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
//! let alice = admin.create_principal("user", "alice", None).await?;
//! admin
//!     .put_principal_policy(
//!         &alice.arn,
//!         "use-keys",
//!         r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["kms:Encrypt","kms:Decrypt"],"Resource":"*"}]}"#,
//!     )
//!     .await?;
//! let key = admin.create_access_key(Some(&alice.arn)).await?;
//! println!("{} / {}", key.access_key_id, key.secret_access_key);
//! # Ok(()) }
//! ```

use tonic::transport::Channel;

use keyraft_proto::v1::iam_service_client::IamServiceClient;
use keyraft_proto::v1::*;

use crate::{Client, Error, Route};

macro_rules! iam_method {
    ($name:literal) => {
        concat!("/keyraft.v1.IamService/", $name)
    };
}

fn iam(c: Channel) -> IamServiceClient<Channel> {
    IamServiceClient::new(c)
}

fn principal(resp: PrincipalResponse) -> Result<Principal, Error> {
    resp.principal
        .ok_or_else(|| Error::Transport("the answer carried no principal".into()))
}

impl Client {
    /// Creates a user or a role (`kind` is `user` or `role`); a role's trust policy
    /// defaults to "its account may assume it".
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let role = client.create_principal("role", "reader", None).await?;
    /// # Ok(()) }
    /// ```
    pub async fn create_principal(
        &self,
        kind: &str,
        name: &str,
        trust_policy: Option<&str>,
    ) -> Result<Principal, Error> {
        let req = CreatePrincipalRequest {
            kind: kind.to_string(),
            name: name.to_string(),
            trust_policy: trust_policy.unwrap_or_default().to_string(),
            request_id: Self::request_id(),
        };
        let resp = self
            .call(
                Route::Leader,
                iam_method!("CreatePrincipal"),
                req,
                |c, r| async move { iam(c).create_principal(r).await },
            )
            .await?;
        principal(resp)
    }

    /// Deletes a user or role with its access keys and policies.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// client.delete_principal("user/alice").await?;
    /// # Ok(()) }
    /// ```
    pub async fn delete_principal(&self, arn: &str) -> Result<(), Error> {
        let req = DeletePrincipalRequest {
            arn: arn.to_string(),
            request_id: Self::request_id(),
        };
        self.call(
            Route::Leader,
            iam_method!("DeletePrincipal"),
            req,
            |c, r| async move { iam(c).delete_principal(r).await },
        )
        .await
        .map(|_| ())
    }

    /// Enables or disables a user or role (its keys or sessions stop working at once).
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// client.set_principal_enabled("user/alice", false).await?;
    /// # Ok(()) }
    /// ```
    pub async fn set_principal_enabled(
        &self,
        arn: &str,
        enabled: bool,
    ) -> Result<Principal, Error> {
        let req = SetPrincipalEnabledRequest {
            arn: arn.to_string(),
            enabled,
            request_id: Self::request_id(),
        };
        let resp = self
            .call(
                Route::Leader,
                iam_method!("SetPrincipalEnabled"),
                req,
                |c, r| async move { iam(c).set_principal_enabled(r).await },
            )
            .await?;
        principal(resp)
    }

    /// A user or role.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let alice = client.get_principal("user/alice").await?;
    /// # Ok(()) }
    /// ```
    pub async fn get_principal(&self, arn: &str) -> Result<Principal, Error> {
        let req = GetPrincipalRequest {
            arn: arn.to_string(),
        };
        let resp = self
            .call(
                Route::Any,
                iam_method!("GetPrincipal"),
                req,
                |c, r| async move { iam(c).get_principal(r).await },
            )
            .await?;
        principal(resp)
    }

    /// The caller's account's users (`kind` = `user`) or roles (`role`).
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let users = client.list_principals("user").await?;
    /// # Ok(()) }
    /// ```
    pub async fn list_principals(&self, kind: &str) -> Result<Vec<Principal>, Error> {
        let req = ListPrincipalsRequest {
            kind: kind.to_string(),
        };
        self.call(
            Route::Any,
            iam_method!("ListPrincipals"),
            req,
            |c, r| async move { iam(c).list_principals(r).await },
        )
        .await
        .map(|r| r.principals)
    }

    /// Puts (creates or replaces) an inline policy of a user or role.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// client.put_principal_policy("user/alice", "use", r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:Encrypt","Resource":"*"}]}"#).await?;
    /// # Ok(()) }
    /// ```
    pub async fn put_principal_policy(
        &self,
        arn: &str,
        policy_name: &str,
        policy: &str,
    ) -> Result<Principal, Error> {
        let req = PutPrincipalPolicyRequest {
            arn: arn.to_string(),
            policy_name: policy_name.to_string(),
            policy: policy.to_string(),
            request_id: Self::request_id(),
        };
        let resp = self
            .call(
                Route::Leader,
                iam_method!("PutPrincipalPolicy"),
                req,
                |c, r| async move { iam(c).put_principal_policy(r).await },
            )
            .await?;
        principal(resp)
    }

    /// Deletes an inline policy.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// client.delete_principal_policy("user/alice", "use").await?;
    /// # Ok(()) }
    /// ```
    pub async fn delete_principal_policy(
        &self,
        arn: &str,
        policy_name: &str,
    ) -> Result<Principal, Error> {
        let req = DeletePrincipalPolicyRequest {
            arn: arn.to_string(),
            policy_name: policy_name.to_string(),
            request_id: Self::request_id(),
        };
        let resp = self
            .call(
                Route::Leader,
                iam_method!("DeletePrincipalPolicy"),
                req,
                |c, r| async move { iam(c).delete_principal_policy(r).await },
            )
            .await?;
        principal(resp)
    }

    /// Makes an access key for a user (`None`: the caller itself). The secret is in this
    /// answer only; a retry of the same call returns the same key.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let key = client.create_access_key(Some("user/alice")).await?;
    /// # Ok(()) }
    /// ```
    pub async fn create_access_key(&self, user_arn: Option<&str>) -> Result<AccessKey, Error> {
        let req = CreateAccessKeyRequest {
            arn: user_arn.unwrap_or_default().to_string(),
            request_id: Self::request_id(),
        };
        self.call(
            Route::Leader,
            iam_method!("CreateAccessKey"),
            req,
            |c, r| async move { iam(c).create_access_key(r).await },
        )
        .await?
        .access_key
        .ok_or_else(|| Error::Transport("the answer carried no access key".into()))
    }

    /// Deletes an access key.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// client.delete_access_key("KREXAMPLEKEYID000000").await?;
    /// # Ok(()) }
    /// ```
    pub async fn delete_access_key(&self, access_key_id: &str) -> Result<(), Error> {
        let req = DeleteAccessKeyRequest {
            access_key_id: access_key_id.to_string(),
            request_id: Self::request_id(),
        };
        self.call(
            Route::Leader,
            iam_method!("DeleteAccessKey"),
            req,
            |c, r| async move { iam(c).delete_access_key(r).await },
        )
        .await
        .map(|_| ())
    }

    /// Activates or deactivates an access key.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// client.set_access_key_enabled("KREXAMPLEKEYID000000", false).await?;
    /// # Ok(()) }
    /// ```
    pub async fn set_access_key_enabled(
        &self,
        access_key_id: &str,
        enabled: bool,
    ) -> Result<(), Error> {
        let req = SetAccessKeyEnabledRequest {
            access_key_id: access_key_id.to_string(),
            enabled,
            request_id: Self::request_id(),
        };
        self.call(
            Route::Leader,
            iam_method!("SetAccessKeyEnabled"),
            req,
            |c, r| async move { iam(c).set_access_key_enabled(r).await },
        )
        .await
        .map(|_| ())
    }

    /// A user's access keys (`None`: the caller's), without secrets.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let keys = client.list_access_keys(Some("user/alice")).await?;
    /// # Ok(()) }
    /// ```
    pub async fn list_access_keys(&self, user_arn: Option<&str>) -> Result<Vec<AccessKey>, Error> {
        let req = ListAccessKeysRequest {
            arn: user_arn.unwrap_or_default().to_string(),
        };
        self.call(
            Route::Any,
            iam_method!("ListAccessKeys"),
            req,
            |c, r| async move { iam(c).list_access_keys(r).await },
        )
        .await
        .map(|r| r.access_keys)
    }

    /// Assumes a role: temporary credentials (900–43200 s; 0 means 3600) for a session.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let session = client.assume_role("role/reader", "job-42", 900).await?;
    /// # Ok(()) }
    /// ```
    pub async fn assume_role(
        &self,
        role_arn: &str,
        session_name: &str,
        duration_seconds: u32,
    ) -> Result<AssumeRoleResponse, Error> {
        let req = AssumeRoleRequest {
            role_arn: role_arn.to_string(),
            role_session_name: session_name.to_string(),
            duration_seconds,
            request_id: Self::request_id(),
        };
        self.call(
            Route::Leader,
            iam_method!("AssumeRole"),
            req,
            |c, r| async move { iam(c).assume_role(r).await },
        )
        .await
    }

    /// Replaces a key's policy (`default`). A policy under which the caller could not
    /// change it again is refused (MalformedPolicyDocumentException).
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let policy = client.get_key_policy("alias/orders").await?;
    /// client.put_key_policy("alias/orders", &policy).await?;
    /// # Ok(()) }
    /// ```
    pub async fn put_key_policy(&self, key_id: &str, policy: &str) -> Result<(), Error> {
        self.put_key_policy_with(PutKeyPolicyRequest {
            key_id: key_id.to_string(),
            policy_name: "default".to_string(),
            policy: policy.to_string(),
            request_id: Self::request_id(),
        })
        .await
    }

    /// Replaces a key's policy from a full request. An empty `policy_name` means
    /// `default`; an empty `request_id` gets a fresh one, used for every retry of this
    /// call.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// use keyraft_client::types::PutKeyPolicyRequest;
    /// let policy = client.get_key_policy("alias/orders").await?;
    /// // An id of your own makes retrying after an unknown outcome safe across calls too.
    /// let req = PutKeyPolicyRequest {
    ///     key_id: "alias/orders".into(),
    ///     policy,
    ///     request_id: "orders-policy-v2".into(),
    ///     ..Default::default()
    /// };
    /// match client.put_key_policy_with(req.clone()).await {
    ///     Err(e) if e.is_outcome_unknown() => client.put_key_policy_with(req).await?,
    ///     other => other?,
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn put_key_policy_with(&self, mut req: PutKeyPolicyRequest) -> Result<(), Error> {
        if req.policy_name.is_empty() {
            req.policy_name = "default".to_string();
        }
        if req.request_id.is_empty() {
            req.request_id = Self::request_id();
        }
        self.call(
            Route::Leader,
            "/keyraft.v1.KeyService/PutKeyPolicy",
            req,
            |c, r| async move { Self::key(c).put_key_policy(r).await },
        )
        .await
        .map(|_| ())
    }

    /// A key's policy document (the default key policy if none was put).
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let policy = client.get_key_policy("alias/orders").await?;
    /// # Ok(()) }
    /// ```
    pub async fn get_key_policy(&self, key_id: &str) -> Result<String, Error> {
        let req = GetKeyPolicyRequest {
            key_id: key_id.to_string(),
            policy_name: "default".to_string(),
        };
        self.call(
            Route::Any,
            "/keyraft.v1.KeyService/GetKeyPolicy",
            req,
            |c, r| async move { Self::key(c).get_key_policy(r).await },
        )
        .await
        .map(|r| r.policy)
    }

    /// The names of a key's policies (always `["default"]`).
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let names = client.list_key_policies("alias/orders").await?;
    /// # Ok(()) }
    /// ```
    pub async fn list_key_policies(&self, key_id: &str) -> Result<Vec<String>, Error> {
        let req = ListKeyPoliciesRequest {
            key_id: key_id.to_string(),
        };
        self.call(
            Route::Any,
            "/keyraft.v1.KeyService/ListKeyPolicies",
            req,
            |c, r| async move { Self::key(c).list_key_policies(r).await },
        )
        .await
        .map(|r| r.policy_names)
    }
}

impl Client {
    /// Sets quotas with every field of the request (grants per key included); zero
    /// leaves a limit unchanged.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// client.set_quota_request(keyraft_client::types::SetQuotaRequest { grants_per_key: 500, ..Default::default() }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn set_quota_request(
        &self,
        mut req: SetQuotaRequest,
    ) -> Result<QuotaResponse, Error> {
        if req.request_id.is_empty() {
            req.request_id = Self::request_id();
        }
        self.call(
            Route::Leader,
            "/keyraft.v1.AdminService/SetQuota",
            req,
            |c, r| async move { Self::admin(c).set_quota(r).await },
        )
        .await
    }

    /// Creates a grant (an empty `request_id` gets a fresh one): the grantee may then do
    /// the grant's operations on the key, within its constraints, on every node at once.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let grant = client.create_grant(keyraft_client::types::CreateGrantRequest { key_id: "alias/orders".into(), grantee_principal: "arn:keyraft:iam::111122223333:user/bob".into(), operations: vec!["Encrypt".into()], ..Default::default() }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn create_grant(
        &self,
        mut req: CreateGrantRequest,
    ) -> Result<CreateGrantResponse, Error> {
        if req.request_id.is_empty() {
            req.request_id = Self::request_id();
        }
        self.call(
            Route::Leader,
            "/keyraft.v1.KeyService/CreateGrant",
            req,
            |c, r| async move { Self::key(c).create_grant(r).await },
        )
        .await
    }

    /// A key's grants.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let grants = client.list_grants("alias/orders").await?;
    /// # Ok(()) }
    /// ```
    pub async fn list_grants(&self, key_id: &str) -> Result<Vec<GrantListEntry>, Error> {
        let req = ListGrantsRequest {
            key_id: key_id.to_string(),
            ..Default::default()
        };
        self.call(
            Route::Any,
            "/keyraft.v1.KeyService/ListGrants",
            req,
            |c, r| async move { Self::key(c).list_grants(r).await },
        )
        .await
        .map(|r| r.grants)
    }

    /// The grants a principal may retire.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let grants = client.list_retirable_grants("arn:keyraft:iam::111122223333:user/carol").await?;
    /// # Ok(()) }
    /// ```
    pub async fn list_retirable_grants(
        &self,
        retiring_principal: &str,
    ) -> Result<Vec<GrantListEntry>, Error> {
        let req = ListRetirableGrantsRequest {
            retiring_principal: retiring_principal.to_string(),
        };
        self.call(
            Route::Any,
            "/keyraft.v1.KeyService/ListRetirableGrants",
            req,
            |c, r| async move { Self::key(c).list_retirable_grants(r).await },
        )
        .await
        .map(|r| r.grants)
    }

    /// Retires a grant, by token (`Some(token)`) or by key and grant id.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// client.retire_grant(Some("KRGT1.<key-id>.<grant-id>"), "", "").await?;
    /// # Ok(()) }
    /// ```
    pub async fn retire_grant(
        &self,
        token: Option<&str>,
        key_id: &str,
        grant_id: &str,
    ) -> Result<(), Error> {
        let req = RetireGrantRequest {
            grant_token: token.unwrap_or_default().to_string(),
            key_id: key_id.to_string(),
            grant_id: grant_id.to_string(),
            request_id: Self::request_id(),
        };
        self.call(
            Route::Leader,
            "/keyraft.v1.KeyService/RetireGrant",
            req,
            |c, r| async move { Self::key(c).retire_grant(r).await },
        )
        .await
        .map(|_| ())
    }

    /// Revokes a grant (needs kms:RevokeGrant on the key).
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// client.revoke_grant("alias/orders", "<grant-id>").await?;
    /// # Ok(()) }
    /// ```
    pub async fn revoke_grant(&self, key_id: &str, grant_id: &str) -> Result<(), Error> {
        let req = RevokeGrantRequest {
            key_id: key_id.to_string(),
            grant_id: grant_id.to_string(),
            request_id: Self::request_id(),
        };
        self.call(
            Route::Leader,
            "/keyraft.v1.KeyService/RevokeGrant",
            req,
            |c, r| async move { Self::key(c).revoke_grant(r).await },
        )
        .await
        .map(|_| ())
    }
}
