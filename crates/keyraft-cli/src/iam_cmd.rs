//! `keyraft iam ...`: users, roles, inline policies, access keys and AssumeRole, printed
//! with AWS IAM's field names.

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::{json, Value};

use keyraft_client::types::{AccessKey, Principal};
use keyraft_client::Error;

use crate::Connection;

/// The IAM subcommands.
#[derive(Subcommand)]
pub(crate) enum IamCommand {
    /// Create a user.
    CreateUser {
        /// 1-64 of letters, digits and +=,.@_-.
        #[arg(long)]
        user_name: String,
    },
    /// Create a role (assumable by its account unless a trust policy says otherwise).
    CreateRole {
        /// 1-64 of letters, digits and +=,.@_-.
        #[arg(long)]
        role_name: String,
        /// The trust policy (who may assume it), a JSON file.
        #[arg(long)]
        assume_role_policy_file: Option<PathBuf>,
    },
    /// Delete a user with its access keys and policies.
    DeleteUser {
        /// The user.
        #[arg(long)]
        user_name: String,
    },
    /// Delete a role with its policies; its sessions stop working.
    DeleteRole {
        /// The role.
        #[arg(long)]
        role_name: String,
    },
    /// Enable (Active) or disable (Inactive) a user.
    UpdateUser {
        /// The user.
        #[arg(long)]
        user_name: String,
        /// Active or Inactive.
        #[arg(long)]
        status: String,
    },
    /// Enable (Active) or disable (Inactive) a role.
    UpdateRole {
        /// The role.
        #[arg(long)]
        role_name: String,
        /// Active or Inactive.
        #[arg(long)]
        status: String,
    },
    /// List the account's users.
    ListUsers,
    /// List the account's roles.
    ListRoles,
    /// Put (create or replace) an inline policy of a user.
    PutUserPolicy {
        /// The user.
        #[arg(long)]
        user_name: String,
        /// The policy's name.
        #[arg(long, default_value = "inline")]
        policy_name: String,
        /// The policy document, a JSON file.
        #[arg(long)]
        policy_file: PathBuf,
    },
    /// Put (create or replace) an inline policy of a role.
    PutRolePolicy {
        /// The role.
        #[arg(long)]
        role_name: String,
        /// The policy's name.
        #[arg(long, default_value = "inline")]
        policy_name: String,
        /// The policy document, a JSON file.
        #[arg(long)]
        policy_file: PathBuf,
    },
    /// Delete an inline policy of a user.
    DeleteUserPolicy {
        /// The user.
        #[arg(long)]
        user_name: String,
        /// The policy's name.
        #[arg(long)]
        policy_name: String,
    },
    /// Make an access key (at most two per user); prints the secret once.
    CreateAccessKey {
        /// The user (default: the caller).
        #[arg(long)]
        user_name: Option<String>,
    },
    /// Delete an access key.
    DeleteAccessKey {
        /// The access key id.
        #[arg(long)]
        access_key_id: String,
    },
    /// Activate or deactivate an access key.
    UpdateAccessKey {
        /// The access key id.
        #[arg(long)]
        access_key_id: String,
        /// Active or Inactive.
        #[arg(long)]
        status: String,
    },
    /// A user's access keys (default: the caller's), without secrets.
    ListAccessKeys {
        /// The user.
        #[arg(long)]
        user_name: Option<String>,
    },
    /// Temporary credentials for a role.
    AssumeRole {
        /// The role's ARN.
        #[arg(long)]
        role_arn: String,
        /// A name for the session (appears in the audit log).
        #[arg(long)]
        role_session_name: String,
        /// 900-43200 seconds.
        #[arg(long, default_value_t = 3600)]
        duration_seconds: u32,
    },
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

fn principal_json(p: &Principal) -> Value {
    let (id_field, name_field) = if p.kind == "role" {
        ("RoleId", "RoleName")
    } else {
        ("UserId", "UserName")
    };
    let mut v = json!({
        name_field: p.name,
        id_field: p.arn,
        "Arn": p.arn,
        "CreateDate": secs(p.create_date),
        "Status": if p.enabled { "Active" } else { "Inactive" },
        "PolicyNames": p.policies.keys().collect::<Vec<_>>(),
    });
    if p.root {
        v["Root"] = json!(true);
    }
    if p.kind == "role" {
        let trust: Value =
            serde_json::from_str(&p.trust_policy).unwrap_or(Value::String(p.trust_policy.clone()));
        v["AssumeRolePolicyDocument"] = trust;
    } else {
        v["AccessKeyIds"] = json!(p.access_key_ids);
    }
    v
}

fn access_key_json(k: &AccessKey) -> Value {
    let mut v = json!({
        "AccessKeyId": k.access_key_id,
        "Status": k.status,
        "CreateDate": secs(k.create_date),
        "Arn": k.principal_arn,
    });
    if let Some(name) = k.principal_arn.rsplit('/').next() {
        v["UserName"] = json!(name);
    }
    if !k.secret_access_key.is_empty() {
        v["SecretAccessKey"] = json!(k.secret_access_key);
    }
    if k.expiration != 0 {
        v["Expiration"] = json!(secs(k.expiration));
    }
    v
}

fn status(s: &str) -> Result<bool, Error> {
    match s {
        "Active" => Ok(true),
        "Inactive" => Ok(false),
        other => Err(Error::Config(format!(
            "--status must be Active or Inactive, not {other}"
        ))),
    }
}

fn read_text(path: &PathBuf) -> Result<String, Error> {
    std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))
}

pub(crate) async fn iam(conn: &Connection, cmd: IamCommand) -> Result<Value, Error> {
    let c = crate::commands::client(conn)?;
    // `user/NAME` and `role/NAME` name principals of the caller's own account.
    let arn = |kind: &str, name: &str| format!("{kind}/{name}");
    Ok(match cmd {
        IamCommand::CreateUser { user_name } => {
            json!({"User": principal_json(&c.create_principal("user", &user_name, None).await?)})
        }
        IamCommand::CreateRole {
            role_name,
            assume_role_policy_file,
        } => {
            let trust = assume_role_policy_file
                .as_ref()
                .map(read_text)
                .transpose()?;
            json!({"Role": principal_json(&c.create_principal("role", &role_name, trust.as_deref()).await?)})
        }
        IamCommand::DeleteUser { user_name } => {
            c.delete_principal(&arn("user", &user_name)).await?;
            json!({})
        }
        IamCommand::DeleteRole { role_name } => {
            c.delete_principal(&arn("role", &role_name)).await?;
            json!({})
        }
        IamCommand::UpdateUser {
            user_name,
            status: s,
        } => {
            let p = c
                .set_principal_enabled(&arn("user", &user_name), status(&s)?)
                .await?;
            json!({"User": principal_json(&p)})
        }
        IamCommand::UpdateRole {
            role_name,
            status: s,
        } => {
            let p = c
                .set_principal_enabled(&arn("role", &role_name), status(&s)?)
                .await?;
            json!({"Role": principal_json(&p)})
        }
        IamCommand::ListUsers => {
            let users = c.list_principals("user").await?;
            json!({"Users": users.iter().map(principal_json).collect::<Vec<_>>()})
        }
        IamCommand::ListRoles => {
            let roles = c.list_principals("role").await?;
            json!({"Roles": roles.iter().map(principal_json).collect::<Vec<_>>()})
        }
        IamCommand::PutUserPolicy {
            user_name,
            policy_name,
            policy_file,
        } => {
            let text = read_text(&policy_file)?;
            c.put_principal_policy(&arn("user", &user_name), &policy_name, &text)
                .await?;
            json!({})
        }
        IamCommand::PutRolePolicy {
            role_name,
            policy_name,
            policy_file,
        } => {
            let text = read_text(&policy_file)?;
            c.put_principal_policy(&arn("role", &role_name), &policy_name, &text)
                .await?;
            json!({})
        }
        IamCommand::DeleteUserPolicy {
            user_name,
            policy_name,
        } => {
            c.delete_principal_policy(&arn("user", &user_name), &policy_name)
                .await?;
            json!({})
        }
        IamCommand::CreateAccessKey { user_name } => {
            let target = user_name.map(|name| arn("user", &name));
            let key = c.create_access_key(target.as_deref()).await?;
            json!({"AccessKey": access_key_json(&key)})
        }
        IamCommand::DeleteAccessKey { access_key_id } => {
            c.delete_access_key(&access_key_id).await?;
            json!({})
        }
        IamCommand::UpdateAccessKey {
            access_key_id,
            status: s,
        } => {
            c.set_access_key_enabled(&access_key_id, status(&s)?)
                .await?;
            json!({})
        }
        IamCommand::ListAccessKeys { user_name } => {
            let target = user_name.map(|name| arn("user", &name));
            let keys = c.list_access_keys(target.as_deref()).await?;
            json!({"AccessKeyMetadata": keys.iter().map(access_key_json).collect::<Vec<_>>()})
        }
        IamCommand::AssumeRole {
            role_arn,
            role_session_name,
            duration_seconds,
        } => {
            let r = c
                .assume_role(&role_arn, &role_session_name, duration_seconds)
                .await?;
            let creds = r.credentials.unwrap_or_default();
            json!({
                "Credentials": {
                    "AccessKeyId": creds.access_key_id,
                    "SecretAccessKey": creds.secret_access_key,
                    "Expiration": secs(creds.expiration),
                },
                "AssumedRoleUser": {"Arn": r.assumed_role_arn},
            })
        }
    })
}

/// The grant subcommands.
#[derive(Subcommand)]
pub(crate) enum GrantCommand {
    /// Allow a grantee some operations on a key (prints GrantId and GrantToken).
    Create {
        /// Key id, key ARN or alias.
        #[arg(long)]
        key_id: String,
        /// The grantee: a user, role or assumed-role ARN, or an account id.
        #[arg(long)]
        grantee_principal: String,
        /// Operations, comma-separated: Encrypt,Decrypt,GenerateDataKey,...
        #[arg(long, value_delimiter = ',', required = true)]
        operations: Vec<String>,
        /// Who may retire it.
        #[arg(long)]
        retiring_principal: Option<String>,
        /// EncryptionContextEquals entries (k=v, repeatable).
        #[arg(long = "constraint-equals", value_parser = crate::commands::parse_kv)]
        equals: Vec<(String, String)>,
        /// EncryptionContextSubset entries (k=v, repeatable).
        #[arg(long = "constraint-subset", value_parser = crate::commands::parse_kv)]
        subset: Vec<(String, String)>,
        /// A name; the same grant under the same name is created once.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// A key's grants.
    List {
        /// Key id, key ARN or alias.
        #[arg(long)]
        key_id: String,
    },
    /// The grants a principal may retire.
    ListRetirable {
        /// The retiring principal's ARN.
        #[arg(long)]
        retiring_principal: String,
    },
    /// Retire a grant (by token, or by key and grant id).
    Retire {
        /// The grant token.
        #[arg(long, conflicts_with_all = ["key_id", "grant_id"])]
        grant_token: Option<String>,
        /// Key id, key ARN or alias.
        #[arg(long, requires = "grant_id")]
        key_id: Option<String>,
        /// The grant id.
        #[arg(long, requires = "key_id")]
        grant_id: Option<String>,
    },
    /// Revoke a grant.
    Revoke {
        /// Key id, key ARN or alias.
        #[arg(long)]
        key_id: String,
        /// The grant id.
        #[arg(long)]
        grant_id: String,
    },
}

fn grant_json(g: &keyraft_client::types::GrantListEntry) -> Value {
    let mut v = json!({
        "KeyId": g.key_id,
        "GrantId": g.grant_id,
        "Name": g.name,
        "CreationDate": secs(g.creation_date),
        "GranteePrincipal": g.grantee_principal,
        "IssuingAccount": g.issuing_account,
        "Operations": g.operations,
    });
    if !g.retiring_principal.is_empty() {
        v["RetiringPrincipal"] = json!(g.retiring_principal);
    }
    if let Some(c) = &g.constraints {
        let mut cj = json!({});
        if !c.encryption_context_equals.is_empty() {
            cj["EncryptionContextEquals"] = json!(c.encryption_context_equals);
        }
        if !c.encryption_context_subset.is_empty() {
            cj["EncryptionContextSubset"] = json!(c.encryption_context_subset);
        }
        v["Constraints"] = cj;
    }
    v
}

pub(crate) async fn grant(conn: &Connection, cmd: GrantCommand) -> Result<Value, Error> {
    let c = crate::commands::client(conn)?;
    Ok(match cmd {
        GrantCommand::Create {
            key_id,
            grantee_principal,
            operations,
            retiring_principal,
            equals,
            subset,
            name,
        } => {
            let constraints = (!equals.is_empty() || !subset.is_empty()).then(|| {
                keyraft_client::types::GrantConstraints {
                    encryption_context_equals: equals.into_iter().collect(),
                    encryption_context_subset: subset.into_iter().collect(),
                }
            });
            let r = c
                .create_grant(keyraft_client::types::CreateGrantRequest {
                    key_id,
                    grantee_principal,
                    retiring_principal: retiring_principal.unwrap_or_default(),
                    operations,
                    constraints,
                    name,
                    request_id: String::new(),
                })
                .await?;
            json!({"GrantId": r.grant_id, "GrantToken": r.grant_token})
        }
        GrantCommand::List { key_id } => {
            let grants = c.list_grants(&key_id).await?;
            json!({"Grants": grants.iter().map(grant_json).collect::<Vec<_>>(), "Truncated": false})
        }
        GrantCommand::ListRetirable { retiring_principal } => {
            let grants = c.list_retirable_grants(&retiring_principal).await?;
            json!({"Grants": grants.iter().map(grant_json).collect::<Vec<_>>(), "Truncated": false})
        }
        GrantCommand::Retire {
            grant_token,
            key_id,
            grant_id,
        } => {
            c.retire_grant(
                grant_token.as_deref(),
                key_id.as_deref().unwrap_or_default(),
                grant_id.as_deref().unwrap_or_default(),
            )
            .await?;
            json!({})
        }
        GrantCommand::Revoke { key_id, grant_id } => {
            c.revoke_grant(&key_id, &grant_id).await?;
            json!({})
        }
    })
}
