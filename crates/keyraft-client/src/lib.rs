//! # The Keyraft client
//!
//! The seam every application, the CLI and the (coming) full SDK use to talk to a
//! cluster: give it any endpoints and credentials, and it
//!
//! - signs every request (HMAC-SHA256 with the secret access key, a fresh timestamp and
//!   nonce per attempt),
//! - sends mutations towards the leader and follows `NotLeaderException` hints (a
//!   follower also forwards mutations itself, so a stale view costs one hop, not an
//!   error),
//! - spreads other calls over the endpoints round-robin, skipping one that failed,
//! - retries what is safe to retry — transport failures, `NotLeader`,
//!   `DependencyTimeout`, throttling — with exponential backoff and jitter until the
//!   call's deadline. A mutation carries one request id for all its attempts, and the
//!   cluster answers a repeated id with the first result, so a retry never acts twice.
//!
//! ```no_run
//! # async fn demo() -> Result<(), keyraft_client::Error> {
//! use keyraft_client::{Client, ClientConfig};
//! let client = Client::new(ClientConfig::from_env()?)?;
//! let key = client.create_key("orders").await?;
//! let ct = client.encrypt(&key.key_id, b"hello", &Default::default()).await?;
//! let pt = client.decrypt(&ct.ciphertext_blob, &Default::default(), None).await?;
//! assert_eq!(pt.plaintext, b"hello");
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use keyraft_proto::v1::admin_service_client::AdminServiceClient;
use keyraft_proto::v1::key_service_client::KeyServiceClient;
use keyraft_proto::v1::*;
use keyraft_proto::{auth, error_from_status, leader_hint};
pub use keyraft_types::{ErrorCode, KmsError};

/// Re-exported wire types (requests and responses of the API).
pub use keyraft_proto::v1 as types;

/// An encryption context.
pub type EncryptionContext = BTreeMap<String, String>;

/// What can go wrong in a call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The service answered with an error code.
    #[error("{0}")]
    Service(KmsError),
    /// No endpoint could be reached, or the last attempt failed in transport, before the
    /// deadline. For a mutation the outcome is unknown; retry with the same request id.
    #[error("transport: {0}")]
    Transport(String),
    /// The client is misconfigured.
    #[error("configuration: {0}")]
    Config(String),
}

impl Error {
    /// The service's error code, if the service answered.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Service(e) => Some(e.code),
            _ => None,
        }
    }

    /// Whether trying again later may succeed without changing anything.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Service(e) => e.code.is_retryable(),
            Error::Transport(_) => true,
            Error::Config(_) => false,
        }
    }
}

/// How to reach and authenticate to a cluster.
#[derive(Clone)]
pub struct ClientConfig {
    /// Client API URLs of one or more nodes, e.g. `http://127.0.0.1:7101`.
    pub endpoints: Vec<String>,
    /// The region the cluster serves.
    pub region: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// How long one logical call may take, retries included.
    pub timeout: Duration,
    /// User agent sent with every request.
    pub user_agent: String,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("endpoints", &self.endpoints)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ClientConfig {
    /// Reads `KEYRAFT_ENDPOINTS` (comma-separated), `KEYRAFT_REGION`,
    /// `KEYRAFT_ACCESS_KEY_ID` and `KEYRAFT_SECRET_ACCESS_KEY`.
    pub fn from_env() -> Result<ClientConfig, Error> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Like [`ClientConfig::from_env`] with a custom lookup.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<ClientConfig, Error> {
        let need = |k: &str| {
            get(k)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| Error::Config(format!("{k} is not set")))
        };
        Ok(ClientConfig {
            endpoints: need("KEYRAFT_ENDPOINTS")?
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            region: get("KEYRAFT_REGION").unwrap_or_default(),
            access_key_id: need("KEYRAFT_ACCESS_KEY_ID")?,
            secret_access_key: need("KEYRAFT_SECRET_ACCESS_KEY")?,
            timeout: Duration::from_secs(30),
            user_agent: format!("keyraft-client/{}", env!("CARGO_PKG_VERSION")),
        })
    }
}

/// Where a call should go.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    /// The leader if known (mutations, membership).
    Leader,
    /// Any node, round-robin.
    Any,
}

/// A client of one cluster.
pub struct Client {
    config: ClientConfig,
    nodes: Mutex<Vec<(String, Channel)>>,
    leader: Mutex<Option<String>>,
    next: AtomicUsize,
}

fn channel(url: &str) -> Result<Channel, Error> {
    Ok(Endpoint::from_shared(url.to_string())
        .map_err(|e| Error::Config(format!("bad endpoint {url}: {e}")))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(3))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

macro_rules! key_method {
    ($name:literal) => {
        concat!("/keyraft.v1.KeyService/", $name)
    };
}
macro_rules! admin_method {
    ($name:literal) => {
        concat!("/keyraft.v1.AdminService/", $name)
    };
}

impl Client {
    /// A client for `config`; connections are made lazily, on first use.
    pub fn new(config: ClientConfig) -> Result<Client, Error> {
        if config.endpoints.is_empty() {
            return Err(Error::Config("at least one endpoint is needed".into()));
        }
        let nodes = config
            .endpoints
            .iter()
            .map(|e| Ok((e.clone(), channel(e)?)))
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Client {
            config,
            nodes: Mutex::new(nodes),
            leader: Mutex::new(None),
            next: AtomicUsize::new(0),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    fn pick(&self, route: Route) -> (String, Channel) {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        if route == Route::Leader {
            let leader = self
                .leader
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(l) = leader {
                if let Some(n) = nodes.iter().find(|(e, _)| *e == l) {
                    return n.clone();
                }
            }
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % nodes.len();
        nodes[i].clone()
    }

    fn learn_leader(&self, endpoint: Option<String>) {
        if let Some(ep) = &endpoint {
            let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
            if !nodes.iter().any(|(e, _)| e == ep) {
                if let Ok(c) = channel(ep) {
                    nodes.push((ep.clone(), c));
                }
            }
        }
        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = endpoint;
    }

    /// Runs one logical call with signing, routing and retries.
    async fn call<Req, Resp, F, Fut>(
        &self,
        route: Route,
        method: &'static str,
        req: Req,
        send: F,
    ) -> Result<Resp, Error>
    where
        Req: prost::Message + Clone,
        F: Fn(Channel, Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let deadline = Instant::now() + self.config.timeout;
        let digest = auth::message_digest(&req);
        let mut backoff = Duration::from_millis(25);
        let mut last_transport = String::from("no attempt made");
        loop {
            let (endpoint, channel) = self.pick(route);
            let mut request = Request::new(req.clone());
            let nonce = hex::encode(rand::thread_rng().gen::<[u8; 16]>());
            auth::attach(
                request.metadata_mut(),
                &self.config.access_key_id,
                self.config.secret_access_key.as_bytes(),
                method,
                now_ms(),
                &nonce,
                &digest,
            )
            .map_err(Error::Service)?;
            if let Ok(ua) = self.config.user_agent.parse() {
                request.metadata_mut().insert("user-agent", ua);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            request.set_timeout(left.min(Duration::from_secs(15)));
            let outcome = match tokio::time::timeout(left, send(channel, request)).await {
                Ok(r) => r,
                Err(_) => Err(Status::deadline_exceeded("client deadline")),
            };
            let status = match outcome {
                Ok(resp) => return Ok(resp.into_inner()),
                Err(status) => status,
            };
            match error_from_status(&status) {
                Some(err) if err.code == ErrorCode::NotLeader => {
                    let hint = leader_hint(&status);
                    tracing::debug!(?hint, "following NotLeader hint");
                    if hint.endpoint.is_some()
                        && hint.endpoint.as_deref() != Some(endpoint.as_str())
                    {
                        self.learn_leader(hint.endpoint);
                        continue;
                    }
                    self.learn_leader(None);
                    if Instant::now() + backoff > deadline {
                        return Err(Error::Service(err));
                    }
                }
                Some(err) if !err.code.is_retryable() => return Err(Error::Service(err)),
                Some(err) => {
                    if Instant::now() + backoff > deadline {
                        return Err(Error::Service(err));
                    }
                }
                None => {
                    // Not an answer from a Keyraft handler: the node is down or unreachable.
                    last_transport = format!("{endpoint}: {}", status.message());
                    if route == Route::Leader {
                        self.learn_leader(None);
                    }
                    if Instant::now() + backoff > deadline {
                        return Err(Error::Transport(last_transport));
                    }
                }
            }
            let jitter = rand::thread_rng().gen_range(0..=backoff.as_millis() as u64 / 2);
            tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
            let _ = &last_transport;
        }
    }

    fn key(c: Channel) -> KeyServiceClient<Channel> {
        KeyServiceClient::new(c)
    }

    fn admin(c: Channel) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(c)
    }

    fn request_id() -> String {
        uuid::Uuid::new_v4().to_string()
    }

    /// Creates a symmetric key.
    pub async fn create_key(&self, description: &str) -> Result<KeyMetadata, Error> {
        self.create_key_with(CreateKeyRequest {
            description: description.to_string(),
            request_id: Self::request_id(),
            ..Default::default()
        })
        .await
    }

    /// Creates a key from a full request. An empty `request_id` gets a fresh one, used
    /// for every retry of this call.
    pub async fn create_key_with(&self, mut req: CreateKeyRequest) -> Result<KeyMetadata, Error> {
        if req.request_id.is_empty() {
            req.request_id = Self::request_id();
        }
        let resp = self
            .call(
                Route::Leader,
                key_method!("CreateKey"),
                req,
                |c, r| async move { Self::key(c).create_key(r).await },
            )
            .await?;
        resp.key_metadata
            .ok_or_else(|| Error::Transport("response without KeyMetadata".into()))
    }

    /// Describes a key (id, ARN).
    pub async fn describe_key(&self, key_id: &str) -> Result<KeyMetadata, Error> {
        let req = DescribeKeyRequest {
            key_id: key_id.to_string(),
        };
        let resp = self
            .call(
                Route::Any,
                key_method!("DescribeKey"),
                req,
                |c, r| async move { Self::key(c).describe_key(r).await },
            )
            .await?;
        resp.key_metadata
            .ok_or_else(|| Error::Transport("response without KeyMetadata".into()))
    }

    /// One page of keys (`limit` 0 = 100).
    pub async fn list_keys(&self, limit: u32, marker: &str) -> Result<ListKeysResponse, Error> {
        let req = ListKeysRequest {
            limit,
            marker: marker.to_string(),
        };
        self.call(
            Route::Any,
            key_method!("ListKeys"),
            req,
            |c, r| async move { Self::key(c).list_keys(r).await },
        )
        .await
    }

    /// Enables a key.
    pub async fn enable_key(&self, key_id: &str) -> Result<(), Error> {
        let req = EnableKeyRequest {
            key_id: key_id.to_string(),
            request_id: Self::request_id(),
        };
        self.call(
            Route::Leader,
            key_method!("EnableKey"),
            req,
            |c, r| async move { Self::key(c).enable_key(r).await },
        )
        .await
        .map(|_| ())
    }

    /// Disables a key.
    pub async fn disable_key(&self, key_id: &str) -> Result<(), Error> {
        let req = DisableKeyRequest {
            key_id: key_id.to_string(),
            request_id: Self::request_id(),
        };
        self.call(
            Route::Leader,
            key_method!("DisableKey"),
            req,
            |c, r| async move { Self::key(c).disable_key(r).await },
        )
        .await
        .map(|_| ())
    }

    /// Encrypts up to 4096 bytes under a key.
    pub async fn encrypt(
        &self,
        key_id: &str,
        plaintext: &[u8],
        context: &EncryptionContext,
    ) -> Result<EncryptResponse, Error> {
        let req = EncryptRequest {
            key_id: key_id.to_string(),
            plaintext: plaintext.to_vec(),
            encryption_context: context.clone(),
            encryption_algorithm: String::new(),
        };
        self.call(Route::Any, key_method!("Encrypt"), req, |c, r| async move {
            Self::key(c).encrypt(r).await
        })
        .await
    }

    /// Decrypts a ciphertext blob; `key_id`, if given, must be the key it was made under.
    pub async fn decrypt(
        &self,
        blob: &[u8],
        context: &EncryptionContext,
        key_id: Option<&str>,
    ) -> Result<DecryptResponse, Error> {
        let req = DecryptRequest {
            ciphertext_blob: blob.to_vec(),
            encryption_context: context.clone(),
            key_id: key_id.unwrap_or_default().to_string(),
            encryption_algorithm: String::new(),
        };
        self.call(Route::Any, key_method!("Decrypt"), req, |c, r| async move {
            Self::key(c).decrypt(r).await
        })
        .await
    }

    /// Generates a data key: `key_spec` (`AES_128`/`AES_256`) or `number_of_bytes`.
    pub async fn generate_data_key(
        &self,
        key_id: &str,
        key_spec: &str,
        number_of_bytes: u32,
        context: &EncryptionContext,
    ) -> Result<GenerateDataKeyResponse, Error> {
        let req = GenerateDataKeyRequest {
            key_id: key_id.to_string(),
            encryption_context: context.clone(),
            key_spec: key_spec.to_string(),
            number_of_bytes,
        };
        self.call(
            Route::Any,
            key_method!("GenerateDataKey"),
            req,
            |c, r| async move { Self::key(c).generate_data_key(r).await },
        )
        .await
    }

    /// Generates a data key and returns only its ciphertext.
    pub async fn generate_data_key_without_plaintext(
        &self,
        key_id: &str,
        key_spec: &str,
        number_of_bytes: u32,
        context: &EncryptionContext,
    ) -> Result<GenerateDataKeyWithoutPlaintextResponse, Error> {
        let req = GenerateDataKeyWithoutPlaintextRequest {
            key_id: key_id.to_string(),
            encryption_context: context.clone(),
            key_spec: key_spec.to_string(),
            number_of_bytes,
        };
        self.call(
            Route::Any,
            key_method!("GenerateDataKeyWithoutPlaintext"),
            req,
            |c, r| async move { Self::key(c).generate_data_key_without_plaintext(r).await },
        )
        .await
    }

    /// Moves a ciphertext to `destination_key_id` (and/or a new context) inside the
    /// service; the plaintext never comes back. `source_key_id`, if given, must be the
    /// key the ciphertext was made under.
    pub async fn re_encrypt(
        &self,
        blob: &[u8],
        source_context: &EncryptionContext,
        source_key_id: Option<&str>,
        destination_key_id: &str,
        destination_context: &EncryptionContext,
    ) -> Result<ReEncryptResponse, Error> {
        let req = ReEncryptRequest {
            ciphertext_blob: blob.to_vec(),
            source_encryption_context: source_context.clone(),
            source_key_id: source_key_id.unwrap_or_default().to_string(),
            destination_key_id: destination_key_id.to_string(),
            destination_encryption_context: destination_context.clone(),
        };
        self.call(
            Route::Any,
            key_method!("ReEncrypt"),
            req,
            |c, r| async move { Self::key(c).re_encrypt(r).await },
        )
        .await
    }

    /// `number_of_bytes` (1–1024) random bytes from a node's HSM.
    pub async fn generate_random(&self, number_of_bytes: u32) -> Result<Vec<u8>, Error> {
        let req = GenerateRandomRequest { number_of_bytes };
        let resp = self
            .call(
                Route::Any,
                key_method!("GenerateRandom"),
                req,
                |c, r| async move { Self::key(c).generate_random(r).await },
            )
            .await?;
        Ok(resp.plaintext)
    }

    /// Replaces a key's description.
    pub async fn update_key_description(
        &self,
        key_id: &str,
        description: &str,
    ) -> Result<(), Error> {
        let req = UpdateKeyDescriptionRequest {
            key_id: key_id.to_string(),
            description: description.to_string(),
            request_id: Self::request_id(),
        };
        self.call(
            Route::Leader,
            key_method!("UpdateKeyDescription"),
            req,
            |c, r| async move { Self::key(c).update_key_description(r).await },
        )
        .await
        .map(|_| ())
    }

    /// Creates `alias/...` pointing to a key (id or key ARN).
    pub async fn create_alias(&self, alias_name: &str, target_key_id: &str) -> Result<(), Error> {
        let req = CreateAliasRequest {
            alias_name: alias_name.to_string(),
            target_key_id: target_key_id.to_string(),
            request_id: Self::request_id(),
        };
        self.call(
            Route::Leader,
            key_method!("CreateAlias"),
            req,
            |c, r| async move { Self::key(c).create_alias(r).await },
        )
        .await
        .map(|_| ())
    }

    /// Points an alias to another key.
    pub async fn update_alias(&self, alias_name: &str, target_key_id: &str) -> Result<(), Error> {
        let req = UpdateAliasRequest {
            alias_name: alias_name.to_string(),
            target_key_id: target_key_id.to_string(),
            request_id: Self::request_id(),
        };
        self.call(
            Route::Leader,
            key_method!("UpdateAlias"),
            req,
            |c, r| async move { Self::key(c).update_alias(r).await },
        )
        .await
        .map(|_| ())
    }

    /// Deletes an alias (the key stays).
    pub async fn delete_alias(&self, alias_name: &str) -> Result<(), Error> {
        let req = DeleteAliasRequest {
            alias_name: alias_name.to_string(),
            request_id: Self::request_id(),
        };
        self.call(
            Route::Leader,
            key_method!("DeleteAlias"),
            req,
            |c, r| async move { Self::key(c).delete_alias(r).await },
        )
        .await
        .map(|_| ())
    }

    /// One page of aliases, optionally only those of `key_id` (`limit` 0 = 50).
    pub async fn list_aliases(
        &self,
        key_id: Option<&str>,
        limit: u32,
        marker: &str,
    ) -> Result<ListAliasesResponse, Error> {
        let req = ListAliasesRequest {
            key_id: key_id.unwrap_or_default().to_string(),
            limit,
            marker: marker.to_string(),
        };
        self.call(
            Route::Any,
            key_method!("ListAliases"),
            req,
            |c, r| async move { Self::key(c).list_aliases(r).await },
        )
        .await
    }

    /// Adds or overwrites tags of a key.
    pub async fn tag_resource(&self, key_id: &str, tags: &[(String, String)]) -> Result<(), Error> {
        let req = TagResourceRequest {
            key_id: key_id.to_string(),
            tags: tags
                .iter()
                .map(|(k, v)| Tag {
                    tag_key: k.clone(),
                    tag_value: v.clone(),
                })
                .collect(),
            request_id: Self::request_id(),
        };
        self.call(
            Route::Leader,
            key_method!("TagResource"),
            req,
            |c, r| async move { Self::key(c).tag_resource(r).await },
        )
        .await
        .map(|_| ())
    }

    /// Removes tags of a key.
    pub async fn untag_resource(&self, key_id: &str, tag_keys: &[String]) -> Result<(), Error> {
        let req = UntagResourceRequest {
            key_id: key_id.to_string(),
            tag_keys: tag_keys.to_vec(),
            request_id: Self::request_id(),
        };
        self.call(
            Route::Leader,
            key_method!("UntagResource"),
            req,
            |c, r| async move { Self::key(c).untag_resource(r).await },
        )
        .await
        .map(|_| ())
    }

    /// One page of a key's tags (`limit` 0 = 50).
    pub async fn list_resource_tags(
        &self,
        key_id: &str,
        limit: u32,
        marker: &str,
    ) -> Result<ListResourceTagsResponse, Error> {
        let req = ListResourceTagsRequest {
            key_id: key_id.to_string(),
            limit,
            marker: marker.to_string(),
        };
        self.call(
            Route::Any,
            key_method!("ListResourceTags"),
            req,
            |c, r| async move { Self::key(c).list_resource_tags(r).await },
        )
        .await
    }

    /// Schedules a key's deletion after `pending_window_in_days` (7–30; 0 = 30).
    pub async fn schedule_key_deletion(
        &self,
        key_id: &str,
        pending_window_in_days: u32,
    ) -> Result<ScheduleKeyDeletionResponse, Error> {
        let req = ScheduleKeyDeletionRequest {
            key_id: key_id.to_string(),
            pending_window_in_days,
            request_id: Self::request_id(),
        };
        self.call(
            Route::Leader,
            key_method!("ScheduleKeyDeletion"),
            req,
            |c, r| async move { Self::key(c).schedule_key_deletion(r).await },
        )
        .await
    }

    /// Cancels a scheduled deletion; the key returns Disabled.
    pub async fn cancel_key_deletion(
        &self,
        key_id: &str,
    ) -> Result<CancelKeyDeletionResponse, Error> {
        let req = CancelKeyDeletionRequest {
            key_id: key_id.to_string(),
            request_id: Self::request_id(),
        };
        self.call(
            Route::Leader,
            key_method!("CancelKeyDeletion"),
            req,
            |c, r| async move { Self::key(c).cancel_key_deletion(r).await },
        )
        .await
    }

    /// Development mode only: moves the service clock of the node this client reaches
    /// forward by `advance_ms` (give the client one endpoint to address one node).
    pub async fn advance_clock(&self, advance_ms: u64) -> Result<u64, Error> {
        let resp = self
            .call(
                Route::Any,
                admin_method!("AdvanceClock"),
                AdvanceClockRequest { advance_ms },
                |c, r| async move { Self::admin(c).advance_clock(r).await },
            )
            .await?;
        Ok(resp.now)
    }

    /// The region administrator creates (or finds) the service-managed key of
    /// `service` for an account (`None`: the caller's); it is `alias/keyraft/<service>`.
    pub async fn create_service_key(
        &self,
        service: &str,
        account: Option<&str>,
    ) -> Result<CreateServiceKeyResponse, Error> {
        let req = CreateServiceKeyRequest {
            service: service.to_string(),
            account: account.unwrap_or_default().to_string(),
            request_id: Self::request_id(),
        };
        self.call(
            Route::Leader,
            admin_method!("CreateServiceKey"),
            req,
            |c, r| async move { Self::admin(c).create_service_key(r).await },
        )
        .await
    }

    /// An account's quotas and usage (`None`: the caller's account).
    pub async fn get_quota(&self, account: Option<&str>) -> Result<QuotaResponse, Error> {
        let req = GetQuotaRequest {
            account: account.unwrap_or_default().to_string(),
        };
        self.call(
            Route::Any,
            admin_method!("GetQuota"),
            req,
            |c, r| async move { Self::admin(c).get_quota(r).await },
        )
        .await
    }

    /// Sets an account's key and/or alias limit (0 leaves one unchanged); the region's
    /// administrator only.
    pub async fn set_quota(
        &self,
        account: Option<&str>,
        keys: u64,
        aliases: u64,
    ) -> Result<QuotaResponse, Error> {
        let req = SetQuotaRequest {
            account: account.unwrap_or_default().to_string(),
            keys,
            aliases,
            request_id: Self::request_id(),
        };
        self.call(
            Route::Leader,
            admin_method!("SetQuota"),
            req,
            |c, r| async move { Self::admin(c).set_quota(r).await },
        )
        .await
    }

    /// Turns automatic rotation on (`Some(days)`, 90–2560; 0 = 365) or off (`None`).
    pub async fn set_key_rotation(
        &self,
        key_id: &str,
        period_days: Option<u32>,
    ) -> Result<(), Error> {
        match period_days {
            Some(days) => {
                let req = EnableKeyRotationRequest {
                    key_id: key_id.to_string(),
                    rotation_period_in_days: days,
                    request_id: Self::request_id(),
                };
                self.call(
                    Route::Leader,
                    key_method!("EnableKeyRotation"),
                    req,
                    |c, r| async move { Self::key(c).enable_key_rotation(r).await },
                )
                .await
                .map(|_| ())
            }
            None => {
                let req = DisableKeyRotationRequest {
                    key_id: key_id.to_string(),
                    request_id: Self::request_id(),
                };
                self.call(
                    Route::Leader,
                    key_method!("DisableKeyRotation"),
                    req,
                    |c, r| async move { Self::key(c).disable_key_rotation(r).await },
                )
                .await
                .map(|_| ())
            }
        }
    }

    /// Whether automatic rotation is on, its period and the next rotation date.
    pub async fn get_key_rotation_status(
        &self,
        key_id: &str,
    ) -> Result<GetKeyRotationStatusResponse, Error> {
        let req = GetKeyRotationStatusRequest {
            key_id: key_id.to_string(),
        };
        self.call(
            Route::Any,
            key_method!("GetKeyRotationStatus"),
            req,
            |c, r| async move { Self::key(c).get_key_rotation_status(r).await },
        )
        .await
    }

    /// Adds a new backing version now (at most 25 times per key).
    pub async fn rotate_key_on_demand(
        &self,
        key_id: &str,
    ) -> Result<RotateKeyOnDemandResponse, Error> {
        let req = RotateKeyOnDemandRequest {
            key_id: key_id.to_string(),
            request_id: Self::request_id(),
        };
        self.call(
            Route::Leader,
            key_method!("RotateKeyOnDemand"),
            req,
            |c, r| async move { Self::key(c).rotate_key_on_demand(r).await },
        )
        .await
    }

    /// One page of a key's rotations (`limit` 0 = 100).
    pub async fn list_key_rotations(
        &self,
        key_id: &str,
        limit: u32,
        marker: &str,
    ) -> Result<ListKeyRotationsResponse, Error> {
        let req = ListKeyRotationsRequest {
            key_id: key_id.to_string(),
            limit,
            marker: marker.to_string(),
        };
        self.call(
            Route::Any,
            key_method!("ListKeyRotations"),
            req,
            |c, r| async move { Self::key(c).list_key_rotations(r).await },
        )
        .await
    }

    /// An RSA wrapping public key (DER) and an import token for importing key material
    /// into an EXTERNAL key; valid for 24 hours.
    pub async fn get_parameters_for_import(
        &self,
        key_id: &str,
        wrapping_algorithm: &str,
        wrapping_key_spec: &str,
    ) -> Result<GetParametersForImportResponse, Error> {
        let req = GetParametersForImportRequest {
            key_id: key_id.to_string(),
            wrapping_algorithm: wrapping_algorithm.to_string(),
            wrapping_key_spec: wrapping_key_spec.to_string(),
            request_id: Self::request_id(),
        };
        self.call(
            Route::Leader,
            key_method!("GetParametersForImport"),
            req,
            |c, r| async move { Self::key(c).get_parameters_for_import(r).await },
        )
        .await
    }

    /// Imports 32 bytes of key material encrypted (RSAES-OAEP-SHA-256) to the wrapping
    /// key; `valid_to` (ms since the Unix epoch) makes it expire.
    pub async fn import_key_material(
        &self,
        key_id: &str,
        import_token: &[u8],
        encrypted_key_material: &[u8],
        valid_to: Option<u64>,
    ) -> Result<(), Error> {
        let req = ImportKeyMaterialRequest {
            key_id: key_id.to_string(),
            import_token: import_token.to_vec(),
            encrypted_key_material: encrypted_key_material.to_vec(),
            expiration_model: if valid_to.is_some() {
                "KEY_MATERIAL_EXPIRES"
            } else {
                "KEY_MATERIAL_DOES_NOT_EXPIRE"
            }
            .to_string(),
            valid_to: valid_to.unwrap_or(0),
            request_id: Self::request_id(),
        };
        self.call(
            Route::Leader,
            key_method!("ImportKeyMaterial"),
            req,
            |c, r| async move { Self::key(c).import_key_material(r).await },
        )
        .await
        .map(|_| ())
    }

    /// Deletes imported key material; the key returns to PendingImport.
    pub async fn delete_imported_key_material(&self, key_id: &str) -> Result<(), Error> {
        let req = DeleteImportedKeyMaterialRequest {
            key_id: key_id.to_string(),
            request_id: Self::request_id(),
        };
        self.call(
            Route::Leader,
            key_method!("DeleteImportedKeyMaterial"),
            req,
            |c, r| async move { Self::key(c).delete_imported_key_material(r).await },
        )
        .await
        .map(|_| ())
    }

    /// The HMAC of `message` (1–4096 bytes) under an HMAC key.
    pub async fn generate_mac(
        &self,
        key_id: &str,
        message: &[u8],
        mac_algorithm: &str,
    ) -> Result<GenerateMacResponse, Error> {
        let req = GenerateMacRequest {
            key_id: key_id.to_string(),
            message: message.to_vec(),
            mac_algorithm: mac_algorithm.to_string(),
        };
        self.call(
            Route::Any,
            key_method!("GenerateMac"),
            req,
            |c, r| async move { Self::key(c).generate_mac(r).await },
        )
        .await
    }

    /// Verifies a MAC; a MAC that does not match is `KMSInvalidMacException`.
    pub async fn verify_mac(
        &self,
        key_id: &str,
        message: &[u8],
        mac_algorithm: &str,
        mac: &[u8],
    ) -> Result<VerifyMacResponse, Error> {
        let req = VerifyMacRequest {
            key_id: key_id.to_string(),
            message: message.to_vec(),
            mac_algorithm: mac_algorithm.to_string(),
            mac: mac.to_vec(),
        };
        self.call(
            Route::Any,
            key_method!("VerifyMac"),
            req,
            |c, r| async move { Self::key(c).verify_mac(r).await },
        )
        .await
    }

    /// The cluster's members, leader and per-node progress. Also refreshes this
    /// client's view: members' endpoints are added and the leader remembered.
    pub async fn cluster_status(&self) -> Result<ClusterStatusResponse, Error> {
        let status = self
            .call(
                Route::Any,
                admin_method!("ClusterStatus"),
                ClusterStatusRequest {},
                |c, r| async move { Self::admin(c).cluster_status(r).await },
            )
            .await?;
        let leader = status
            .members
            .iter()
            .find(|m| m.id == status.leader)
            .map(|m| m.endpoint.clone());
        {
            let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
            for m in &status.members {
                if !nodes.iter().any(|(e, _)| *e == m.endpoint) {
                    if let Ok(c) = channel(&m.endpoint) {
                        nodes.push((m.endpoint.clone(), c));
                    }
                }
            }
        }
        if leader.is_some() {
            self.learn_leader(leader);
        }
        Ok(status)
    }

    /// Adds a node (learner first, voter once caught up and holding the domain key).
    pub async fn add_node(
        &self,
        node_id: u64,
        endpoint: &str,
        raft_addr: &str,
    ) -> Result<ClusterStatusResponse, Error> {
        let req = AddNodeRequest {
            node_id,
            endpoint: endpoint.to_string(),
            raft_addr: raft_addr.to_string(),
            request_id: Self::request_id(),
        };
        let resp = self
            .call(
                Route::Leader,
                admin_method!("AddNode"),
                req,
                |c, r| async move { Self::admin(c).add_node(r).await },
            )
            .await?;
        resp.status
            .ok_or_else(|| Error::Transport("response without status".into()))
    }

    /// Removes a node; its id is retired for good.
    pub async fn remove_node(&self, node_id: u64) -> Result<ClusterStatusResponse, Error> {
        let req = RemoveNodeRequest {
            node_id,
            request_id: Self::request_id(),
        };
        let resp = self
            .call(
                Route::Leader,
                admin_method!("RemoveNode"),
                req,
                |c, r| async move { Self::admin(c).remove_node(r).await },
            )
            .await?;
        resp.status
            .ok_or_else(|| Error::Transport("response without status".into()))
    }

    /// Moves leadership to `node_id`.
    pub async fn transfer_leader(&self, node_id: u64) -> Result<u64, Error> {
        let resp = self
            .call(
                Route::Leader,
                admin_method!("TransferLeader"),
                TransferLeaderRequest { node_id },
                |c, r| async move { Self::admin(c).transfer_leader(r).await },
            )
            .await?;
        Ok(resp.leader)
    }

    /// The newest audit events.
    pub async fn audit_tail(&self, limit: u32) -> Result<AuditTailResponse, Error> {
        self.call(
            Route::Any,
            admin_method!("AuditTail"),
            AuditTailRequest { limit },
            |c, r| async move { Self::admin(c).audit_tail(r).await },
        )
        .await
    }
}
