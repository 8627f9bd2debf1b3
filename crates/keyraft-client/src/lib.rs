//! # The Keyraft client SDK
//!
//! What an application uses to talk to a Keyraft cluster. Give it one or more seed
//! endpoints, a region and an access key ([`ClientConfig`]: explicit, from the
//! environment, or from a named profile in `~/.keyraft/credentials`), and it
//!
//! - **discovers the cluster** from the seeds — members, their endpoints, the leader —
//!   and keeps that view fresh in a background task: on leader hints, on connection
//!   failures and every ten seconds ([`Client::view`] shows it);
//! - **routes**: mutations straight to the leader; cryptography and reads spread over
//!   the healthy nodes, least outstanding requests first ([`Balance`]); a node that
//!   fails is benched for a doubling backoff and probed before it gets calls again;
//! - keeps **one long-lived HTTP/2 channel per node** with keepalive pings, so a node
//!   that stops answering is noticed within about two seconds, even mid-call;
//! - **signs** every attempt (HMAC-SHA256 with the secret access key, a fresh timestamp
//!   and nonce);
//! - **retries what is safe** within the call's deadline: transport failures and the
//!   retryable codes, with jittered exponential backoff and a per-client retry budget
//!   ([`RetryPolicy`]). Every mutation carries one request id for all its attempts, and
//!   the cluster's state machine answers a repeated id with the first result, so a
//!   retry after a failover never acts twice;
//! - returns **typed errors** ([`Error`], [`ErrorKind`], [`ErrorCode`]) that say whether
//!   they are retryable and whether a failed mutation may still have happened.
//!
//! [`envelope`] encrypts data of any size under a Keyraft key; [`RegionalClients`]
//! holds one client per region.
//!
//! ```no_run
//! # async fn demo() -> Result<(), keyraft_client::Error> {
//! use keyraft_client::{Client, ClientConfig};
//! let client = Client::connect(ClientConfig::from_env()?)?;
//! let key = client.create_key("orders").await?;
//! let ct = client.encrypt(&key.key_id, b"hello", &Default::default()).await?;
//! let pt = client.decrypt(&ct.ciphertext_blob, &Default::default(), None).await?;
//! assert_eq!(pt.plaintext, b"hello");
//! # Ok(()) }
//! ```
//!
//! [`Client::connect`] is that client. [`Client::new`] keeps what a client given
//! endpoints always did — it talks to exactly those — for tools that address one node;
//! it has the same health tracking, keepalive and retries, but no discovery.
//!
//! A `Client` is cheap to clone (clones share connections, view and budget) and may be
//! built outside an async runtime; its background task starts with the first call and
//! stops when the last clone is dropped.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::Channel;

use keyraft_proto::v1::admin_service_client::AdminServiceClient;
use keyraft_proto::v1::key_service_client::KeyServiceClient;
use keyraft_proto::v1::*;
pub use keyraft_types::{ErrorCode, KmsError};

mod config;
mod discovery;
pub mod envelope;
mod error;
mod options;
pub mod profile;
mod regions;
mod retry;
mod routing;
mod transport;

pub use config::{ClientConfig, ConfigBuilder};
pub use error::{Error, ErrorKind};
pub use options::{Balance, ClientOptions, RetryPolicy};
pub use regions::RegionalClients;
pub use routing::{ClusterView, NodeView};

use routing::Route;
use transport::{Inner, MEMBERSHIP_ATTEMPT};

/// Re-exported wire types (requests and responses of the API).
///
/// ```
/// use keyraft_client::types::CreateKeyRequest;
/// let req = CreateKeyRequest { description: "orders".into(), ..Default::default() };
/// assert!(req.request_id.is_empty()); // create_key_with fills it in
/// ```
pub use keyraft_proto::v1 as types;

/// An encryption context: string pairs bound to a ciphertext as additional
/// authenticated data, which decryption must present again.
///
/// ```
/// let ctx: keyraft_client::EncryptionContext = [("tenant".to_string(), "acme".to_string())].into();
/// assert_eq!(ctx["tenant"], "acme");
/// ```
pub type EncryptionContext = BTreeMap<String, String>;

/// A client of one cluster (one region). Cheap to clone; clones share everything.
///
/// ```no_run
/// # async fn demo() -> Result<(), keyraft_client::Error> {
/// let client = keyraft_client::Client::connect(keyraft_client::ClientConfig::from_env()?)?;
/// let worker = client.clone();
/// tokio::spawn(async move { worker.generate_random(32).await });
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    timeout: Duration,
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
    /// The SDK's client for `config`, with [`ClientOptions::default`]: it discovers the
    /// cluster from the configured (seed) endpoints — one is enough — sends mutations
    /// straight to the leader and spreads everything else over the healthy members,
    /// least outstanding requests first. Nothing is connected yet; that happens on the
    /// first call, so this works outside an async runtime too.
    ///
    /// ```
    /// use keyraft_client::{Client, ClientConfig};
    /// let config = ClientConfig::builder()
    ///     .endpoints(["http://127.0.0.1:7101"])
    ///     .credentials("AK", "secret")
    ///     .build_with(|_| None)?;
    /// let client = Client::connect(config)?; // no runtime needed
    /// assert!(client.options().discovery);
    /// # Ok::<(), keyraft_client::Error>(())
    /// ```
    pub fn connect(config: ClientConfig) -> Result<Client, Error> {
        Self::with_options(config, ClientOptions::default())
    }

    /// A client that talks to exactly the configured endpoints
    /// ([`ClientOptions::pinned`]): no discovery and no background task, but the same
    /// signing, health tracking, keepalive, leader-hint following and retries as
    /// [`Client::connect`]. Give it one endpoint to address one node (as `keyraft
    /// cluster advance-clock`, per-node audit checks and benchmarks of one node do);
    /// give it every node and it spreads over them. Applications that want the cluster
    /// found for them use [`Client::connect`].
    ///
    /// ```
    /// use keyraft_client::{Client, ClientConfig};
    /// let config = ClientConfig::builder()
    ///     .endpoints(["http://127.0.0.1:7101"])
    ///     .credentials("AK", "secret")
    ///     .build_with(|_| None)?;
    /// let node = Client::new(config)?;
    /// assert!(!node.options().discovery);
    /// # Ok::<(), keyraft_client::Error>(())
    /// ```
    pub fn new(config: ClientConfig) -> Result<Client, Error> {
        Self::with_options(config, ClientOptions::pinned())
    }

    /// A client with explicit [`ClientOptions`].
    ///
    /// ```
    /// use keyraft_client::{Client, ClientConfig, ClientOptions};
    /// let config = ClientConfig::builder()
    ///     .endpoints(["http://127.0.0.1:7101"])
    ///     .credentials("AK", "secret")
    ///     .build_with(|_| None)?;
    /// let mut options = ClientOptions::default();
    /// options.refresh_interval = std::time::Duration::from_secs(2);
    /// let client = Client::with_options(config, options)?;
    /// assert!(client.options().discovery);
    /// # Ok::<(), keyraft_client::Error>(())
    /// ```
    pub fn with_options(config: ClientConfig, options: ClientOptions) -> Result<Client, Error> {
        let timeout = config.timeout;
        Ok(Client {
            inner: Arc::new(Inner::new(config, options)?),
            timeout,
        })
    }

    /// The configuration.
    ///
    /// ```no_run
    /// # fn demo(client: &keyraft_client::Client) {
    /// println!("seeds: {:?}", client.config().endpoints);
    /// # }
    /// ```
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The options.
    ///
    /// ```no_run
    /// # fn demo(client: &keyraft_client::Client) {
    /// println!("balancing by {:?}", client.options().balance);
    /// # }
    /// ```
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// A handle on the same client (connections, view, budget) whose calls have another
    /// deadline, retries included.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// use std::time::Duration;
    /// let quick = client.with_timeout(Duration::from_millis(300));
    /// let bytes = quick.generate_random(16).await?;
    /// # let _ = bytes;
    /// # Ok(()) }
    /// ```
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        Client {
            inner: self.inner.clone(),
            timeout,
        }
    }

    /// What the client knows about the cluster right now: members, leader, which nodes
    /// are healthy, calls in flight.
    ///
    /// ```no_run
    /// # fn demo(client: &keyraft_client::Client) {
    /// let view = client.view();
    /// for node in &view.nodes {
    ///     println!("{} leader={} healthy={}", node.endpoint, node.leader, node.healthy);
    /// }
    /// # }
    /// ```
    pub fn view(&self) -> ClusterView {
        let now = Instant::now();
        let view = self.inner.view();
        ClusterView {
            leader: view.leader.clone(),
            leader_id: view.leader_id,
            term: view.term,
            region: view.region.clone(),
            refreshed: view.refreshed_at.map(|t| now.saturating_duration_since(t)),
            retry_tokens: self.inner.budget.balance(),
            nodes: view.snapshot(now),
        }
    }

    /// Refreshes the view from the cluster now (one `ClusterStatus`, to the leader
    /// first), and returns it. The background task does this on its own; this is for
    /// programs that want a fresh view at a given moment.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let view = client.refresh().await?;
    /// println!("{} members, leader {:?}", view.nodes.len(), view.leader);
    /// # Ok(()) }
    /// ```
    pub async fn refresh(&self) -> Result<ClusterView, Error> {
        self.inner.ensure_refresher();
        self.inner.refresh_once().await?;
        Ok(self.view())
    }

    fn key(c: Channel) -> KeyServiceClient<Channel> {
        KeyServiceClient::new(c)
    }

    fn admin(c: Channel) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(c)
    }

    /// A fresh request id: one per logical call, reused by all its attempts.
    fn request_id() -> String {
        keyraft_types::new_id()
    }

    /// Creates a symmetric key.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let key = client.create_key("orders").await?;
    /// println!("{} ({})", key.key_id, key.arn);
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// use keyraft_client::types::CreateKeyRequest;
    /// // An id of your own makes retrying after an unknown outcome safe across calls too.
    /// let req = CreateKeyRequest {
    ///     description: "release signing".into(),
    ///     key_spec: "ECC_NIST_P256".into(),
    ///     key_usage: "SIGN_VERIFY".into(),
    ///     request_id: "release-signing-key-v1".into(),
    ///     ..Default::default()
    /// };
    /// let key = match client.create_key_with(req.clone()).await {
    ///     Err(e) if e.is_outcome_unknown() => client.create_key_with(req).await?,
    ///     other => other?,
    /// };
    /// # let _ = key;
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let m = client.describe_key("alias/orders").await?;
    /// println!("{} is {}", m.arn, m.key_state);
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let mut marker = String::new();
    /// loop {
    ///     let page = client.list_keys(100, &marker).await?;
    ///     for k in &page.keys {
    ///         println!("{}", k.key_arn);
    ///     }
    ///     if !page.truncated {
    ///         break;
    ///     }
    ///     marker = page.next_marker;
    /// }
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// client.enable_key("alias/orders").await?;
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// client.disable_key("alias/orders").await?;
    /// # Ok(()) }
    /// ```
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

    /// Encrypts up to 4096 bytes under a symmetric key.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let ctx = keyraft_client::EncryptionContext::from([("tenant".into(), "acme".into())]);
    /// let ct = client.encrypt("alias/orders", b"card 4111", &ctx).await?;
    /// println!("{} bytes under {}", ct.ciphertext_blob.len(), ct.key_id);
    /// # Ok(()) }
    /// ```
    pub async fn encrypt(
        &self,
        key_id: &str,
        plaintext: &[u8],
        context: &EncryptionContext,
    ) -> Result<EncryptResponse, Error> {
        self.encrypt_with_algorithm(key_id, plaintext, context, "")
            .await
    }

    /// Encrypts with a named algorithm: `SYMMETRIC_DEFAULT` (or empty) for symmetric
    /// keys, `RSAES_OAEP_SHA_1` / `RSAES_OAEP_SHA_256` for RSA ENCRYPT_DECRYPT keys (no
    /// context; at most 190 bytes with RSA_2048 and SHA-256).
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let ct = client
    ///     .encrypt_with_algorithm("alias/rsa", b"short secret", &Default::default(), "RSAES_OAEP_SHA_256")
    ///     .await?;
    /// # let _ = ct;
    /// # Ok(()) }
    /// ```
    pub async fn encrypt_with_algorithm(
        &self,
        key_id: &str,
        plaintext: &[u8],
        context: &EncryptionContext,
        algorithm: &str,
    ) -> Result<EncryptResponse, Error> {
        let req = EncryptRequest {
            key_id: key_id.to_string(),
            plaintext: plaintext.to_vec(),
            encryption_context: context.clone(),
            encryption_algorithm: algorithm.to_string(),
        };
        self.call(Route::Any, key_method!("Encrypt"), req, |c, r| async move {
            Self::key(c).encrypt(r).await
        })
        .await
    }

    /// Decrypts a ciphertext blob; `key_id`, if given, must be the key it was made under.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// # let blob: Vec<u8> = Vec::new();
    /// let ctx = keyraft_client::EncryptionContext::from([("tenant".into(), "acme".into())]);
    /// let pt = client.decrypt(&blob, &ctx, None).await?;
    /// println!("{} bytes from {}", pt.plaintext.len(), pt.key_id);
    /// # Ok(()) }
    /// ```
    pub async fn decrypt(
        &self,
        blob: &[u8],
        context: &EncryptionContext,
        key_id: Option<&str>,
    ) -> Result<DecryptResponse, Error> {
        self.decrypt_with_algorithm(blob, context, key_id, "").await
    }

    /// Decrypts with a named algorithm; an RSAES-OAEP ciphertext names no key, so
    /// `key_id` is required for it.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// # let blob: Vec<u8> = Vec::new();
    /// let pt = client
    ///     .decrypt_with_algorithm(&blob, &Default::default(), Some("alias/rsa"), "RSAES_OAEP_SHA_256")
    ///     .await?;
    /// # let _ = pt;
    /// # Ok(()) }
    /// ```
    pub async fn decrypt_with_algorithm(
        &self,
        blob: &[u8],
        context: &EncryptionContext,
        key_id: Option<&str>,
        algorithm: &str,
    ) -> Result<DecryptResponse, Error> {
        let req = DecryptRequest {
            ciphertext_blob: blob.to_vec(),
            encryption_context: context.clone(),
            key_id: key_id.unwrap_or_default().to_string(),
            encryption_algorithm: algorithm.to_string(),
        };
        self.call(Route::Any, key_method!("Decrypt"), req, |c, r| async move {
            Self::key(c).decrypt(r).await
        })
        .await
    }

    /// Generates a data key: `key_spec` (`AES_128`/`AES_256`) or `number_of_bytes`.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let dk = client.generate_data_key("alias/orders", "AES_256", 0, &Default::default()).await?;
    /// // Encrypt locally with dk.plaintext, store dk.ciphertext_blob, forget the plaintext
    /// // (or let keyraft_client::envelope do all of that).
    /// assert_eq!(dk.plaintext.len(), 32);
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let dk = client
    ///     .generate_data_key_without_plaintext("alias/orders", "AES_256", 0, &Default::default())
    ///     .await?;
    /// println!("{} bytes to store for later", dk.ciphertext_blob.len());
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// # let blob: Vec<u8> = Vec::new();
    /// let none = Default::default();
    /// let moved = client.re_encrypt(&blob, &none, None, "alias/orders-2025", &none).await?;
    /// println!("now under {}", moved.key_id);
    /// # Ok(()) }
    /// ```
    pub async fn re_encrypt(
        &self,
        blob: &[u8],
        source_context: &EncryptionContext,
        source_key_id: Option<&str>,
        destination_key_id: &str,
        destination_context: &EncryptionContext,
    ) -> Result<ReEncryptResponse, Error> {
        self.re_encrypt_request(ReEncryptRequest {
            ciphertext_blob: blob.to_vec(),
            source_encryption_context: source_context.clone(),
            source_key_id: source_key_id.unwrap_or_default().to_string(),
            destination_key_id: destination_key_id.to_string(),
            destination_encryption_context: destination_context.clone(),
            ..Default::default()
        })
        .await
    }

    /// ReEncrypt with every field of the request, including the source and destination
    /// encryption algorithms for RSA keys.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// use keyraft_client::types::ReEncryptRequest;
    /// # let blob: Vec<u8> = Vec::new();
    /// let moved = client
    ///     .re_encrypt_request(ReEncryptRequest {
    ///         ciphertext_blob: blob,
    ///         destination_key_id: "alias/rsa".into(),
    ///         destination_encryption_algorithm: "RSAES_OAEP_SHA_256".into(),
    ///         ..Default::default()
    ///     })
    ///     .await?;
    /// # let _ = moved;
    /// # Ok(()) }
    /// ```
    pub async fn re_encrypt_request(
        &self,
        req: ReEncryptRequest,
    ) -> Result<ReEncryptResponse, Error> {
        self.call(
            Route::Any,
            key_method!("ReEncrypt"),
            req,
            |c, r| async move { Self::key(c).re_encrypt(r).await },
        )
        .await
    }

    /// `number_of_bytes` (1–1024) random bytes from a node's HSM.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let nonce = client.generate_random(32).await?;
    /// assert_eq!(nonce.len(), 32);
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// client.update_key_description("alias/orders", "orders, 2025 onwards").await?;
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let key = client.create_key("orders").await?;
    /// client.create_alias("alias/orders", &key.key_id).await?;
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let next = client.create_key("orders 2025").await?;
    /// client.update_alias("alias/orders", &next.key_id).await?;
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// client.delete_alias("alias/orders").await?;
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let page = client.list_aliases(None, 0, "").await?;
    /// for a in &page.aliases {
    ///     println!("{} -> {}", a.alias_name, a.target_key_id);
    /// }
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// client.tag_resource("alias/orders", &[("team".into(), "payments".into())]).await?;
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// client.untag_resource("alias/orders", &["team".to_string()]).await?;
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let page = client.list_resource_tags("alias/orders", 0, "").await?;
    /// for t in &page.tags {
    ///     println!("{}={}", t.tag_key, t.tag_value);
    /// }
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// # let key_id = "1234abcd-12ab-34cd-56ef-1234567890ab";
    /// let r = client.schedule_key_deletion(key_id, 7).await?;
    /// println!("{} is {} until {}", r.key_id, r.key_state, r.deletion_date);
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// # let key_id = "1234abcd-12ab-34cd-56ef-1234567890ab";
    /// client.cancel_key_deletion(key_id).await?;
    /// client.enable_key(key_id).await?;
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let now_ms = client.advance_clock(24 * 60 * 60 * 1000).await?; // one day
    /// # let _ = now_ms;
    /// # Ok(()) }
    /// ```
    pub async fn advance_clock(&self, advance_ms: u64) -> Result<u64, Error> {
        let resp = self
            .call(
                Route::Seeds,
                admin_method!("AdvanceClock"),
                AdvanceClockRequest { advance_ms },
                |c, r| async move { Self::admin(c).advance_clock(r).await },
            )
            .await?;
        Ok(resp.now)
    }

    /// Chaos testing, the region's administrator only: arms one fail point of the node
    /// this client reaches (give the client one endpoint to address one node) with
    /// `actions` in the `fail` crate's syntax — `1*return`, `50%return`, `panic`, or
    /// `off` to clear it — and returns that node's configured points afterwards as
    /// `(name, actions)`. An unknown name is a `ValidationException` listing the known
    /// ones; a node built without the `failpoints` feature answers
    /// `UnsupportedOperationException`. Like `advance_clock`, it is not retried once it
    /// may have reached the node.
    ///
    /// ```no_run
    /// # async fn demo(node: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// // The next answer after a commit is lost: the write happens, the caller sees an error.
    /// node.set_failpoint("server::after_commit_before_response", "1*return").await?;
    /// // ...
    /// node.set_failpoint("server::after_commit_before_response", "off").await?;
    /// # Ok(()) }
    /// ```
    pub async fn set_failpoint(
        &self,
        name: &str,
        actions: &str,
    ) -> Result<Vec<(String, String)>, Error> {
        let resp = self
            .call(
                Route::Seeds,
                admin_method!("SetFailpoint"),
                SetFailpointRequest {
                    name: name.to_string(),
                    actions: actions.to_string(),
                },
                |c, r| async move { Self::admin(c).set_failpoint(r).await },
            )
            .await?;
        Ok(resp
            .configured
            .into_iter()
            .map(|p| (p.name, p.actions))
            .collect())
    }

    /// Chaos testing, the region's administrator only: the fail points configured on
    /// the node this client reaches, and every name it knows (see
    /// [`Client::set_failpoint`]).
    ///
    /// ```no_run
    /// # async fn demo(node: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let points = node.list_failpoints().await?;
    /// for p in &points.configured {
    ///     println!("node {}: {} = {}", points.node_id, p.name, p.actions);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn list_failpoints(&self) -> Result<ListFailpointsResponse, Error> {
        self.call(
            Route::Seeds,
            admin_method!("ListFailpoints"),
            ListFailpointsRequest {},
            |c, r| async move { Self::admin(c).list_failpoints(r).await },
        )
        .await
    }

    /// The region administrator creates (or finds) the service-managed key of
    /// `service` for an account (`None`: the caller's); it is `alias/keyraft/<service>`.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let r = client.create_service_key("s3", Some("111122223333")).await?;
    /// assert_eq!(r.alias_name, "alias/keyraft/s3");
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let q = client.get_quota(None).await?;
    /// println!("{} of {} keys", q.keys_used, q.keys_limit);
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let q = client.set_quota(Some("111122223333"), 5000, 0).await?;
    /// assert_eq!(q.keys_limit, 5000);
    /// # Ok(()) }
    /// ```
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
            ..Default::default()
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
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// client.set_key_rotation("alias/orders", Some(180)).await?; // every 180 days
    /// client.set_key_rotation("alias/orders", None).await?; // off
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let s = client.get_key_rotation_status("alias/orders").await?;
    /// println!("on: {}, every {} days", s.key_rotation_enabled, s.rotation_period_in_days);
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// client.rotate_key_on_demand("alias/orders").await?;
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let page = client.list_key_rotations("alias/orders", 0, "").await?;
    /// println!("{} rotations", page.rotations.len());
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// use keyraft_client::types::CreateKeyRequest;
    /// let key = client
    ///     .create_key_with(CreateKeyRequest { origin: "EXTERNAL".into(), ..Default::default() })
    ///     .await?;
    /// let p = client
    ///     .get_parameters_for_import(&key.key_id, "RSAES_OAEP_SHA_256", "RSA_2048")
    ///     .await?;
    /// // Wrap 32 bytes of key material to p.public_key (DER), then import_key_material.
    /// # let _ = p;
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// # let (key_id, token, wrapped) = ("k", Vec::new(), Vec::new());
    /// client.import_key_material(key_id, &token, &wrapped, None).await?;
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// # let key_id = "1234abcd-12ab-34cd-56ef-1234567890ab";
    /// client.delete_imported_key_material(key_id).await?;
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let mac = client.generate_mac("alias/hmac", b"message", "HMAC_SHA_256").await?;
    /// client.verify_mac("alias/hmac", b"message", "HMAC_SHA_256", &mac.mac).await?;
    /// # Ok(()) }
    /// ```
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

    /// Signs a message (`message_type` `RAW`, the default when empty) or a digest
    /// (`DIGEST`) with a SIGN_VERIFY key pair, e.g. with `ECDSA_SHA_256` or
    /// `RSASSA_PSS_SHA_256`.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let s = client.sign("alias/signer", b"release 1.2", "RAW", "ECDSA_SHA_256").await?;
    /// let v = client
    ///     .verify("alias/signer", b"release 1.2", "RAW", &s.signature, "ECDSA_SHA_256")
    ///     .await?;
    /// assert!(v.signature_valid);
    /// # Ok(()) }
    /// ```
    pub async fn sign(
        &self,
        key_id: &str,
        message: &[u8],
        message_type: &str,
        signing_algorithm: &str,
    ) -> Result<SignResponse, Error> {
        let req = SignRequest {
            key_id: key_id.to_string(),
            message: message.to_vec(),
            message_type: message_type.to_string(),
            signing_algorithm: signing_algorithm.to_string(),
        };
        self.call(Route::Any, key_method!("Sign"), req, |c, r| async move {
            Self::key(c).sign(r).await
        })
        .await
    }

    /// Verifies a signature; one that does not match is `KMSInvalidSignatureException`.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// use keyraft_client::ErrorCode;
    /// # let signature: Vec<u8> = Vec::new();
    /// match client.verify("alias/signer", b"release 1.2", "RAW", &signature, "ECDSA_SHA_256").await {
    ///     Ok(_) => println!("genuine"),
    ///     Err(e) if e.code() == Some(ErrorCode::KmsInvalidSignature) => println!("forged"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn verify(
        &self,
        key_id: &str,
        message: &[u8],
        message_type: &str,
        signature: &[u8],
        signing_algorithm: &str,
    ) -> Result<VerifyResponse, Error> {
        let req = VerifyRequest {
            key_id: key_id.to_string(),
            message: message.to_vec(),
            message_type: message_type.to_string(),
            signature: signature.to_vec(),
            signing_algorithm: signing_algorithm.to_string(),
        };
        self.call(Route::Any, key_method!("Verify"), req, |c, r| async move {
            Self::key(c).verify(r).await
        })
        .await
    }

    /// The public half of a key pair (DER SubjectPublicKeyInfo) with its spec, usage and
    /// algorithms.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let pk = client.get_public_key("alias/signer").await?;
    /// println!("{} bytes of DER, {}", pk.public_key.len(), pk.key_spec);
    /// # Ok(()) }
    /// ```
    pub async fn get_public_key(&self, key_id: &str) -> Result<GetPublicKeyResponse, Error> {
        let req = GetPublicKeyRequest {
            key_id: key_id.to_string(),
        };
        self.call(
            Route::Any,
            key_method!("GetPublicKey"),
            req,
            |c, r| async move { Self::key(c).get_public_key(r).await },
        )
        .await
    }

    /// Verifies a MAC; a MAC that does not match is `KMSInvalidMacException`.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// use keyraft_client::ErrorCode;
    /// # let mac: Vec<u8> = Vec::new();
    /// match client.verify_mac("alias/hmac", b"message", "HMAC_SHA_256", &mac).await {
    ///     Ok(_) => println!("authentic"),
    ///     Err(e) if e.code() == Some(ErrorCode::InvalidMac) => println!("altered"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
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

    /// The cluster's members, leader and per-node progress, as the first configured
    /// endpoint that answers sees them (any other node if none does). Also refreshes
    /// this client's view.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let status = client.cluster_status().await?;
    /// for m in &status.members {
    ///     println!("node {} at {}: {}", m.id, m.endpoint, m.role);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn cluster_status(&self) -> Result<ClusterStatusResponse, Error> {
        let status = self
            .call(
                Route::PreferSeeds,
                admin_method!("ClusterStatus"),
                ClusterStatusRequest {},
                |c, r| async move { Self::admin(c).cluster_status(r).await },
            )
            .await?;
        self.inner.view().merge(
            &status,
            &self.inner.config.region,
            Instant::now(),
            &self.inner.options,
        );
        Ok(status)
    }

    /// Adds a node (learner first, voter once caught up and holding the domain key).
    ///
    /// The server may take over a minute to answer (the new node catches up first), so
    /// each attempt waits at least 90 s, whatever the options' `attempt_timeout`; the
    /// call's own deadline still bounds the whole.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let status = client.add_node(4, "http://10.0.0.4:7101", "10.0.0.4:7201").await?;
    /// println!("{} members", status.members.len());
    /// # Ok(()) }
    /// ```
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
        let attempt = self.inner.options.attempt_timeout.max(MEMBERSHIP_ATTEMPT);
        let resp = self
            .call_with_attempts_of(
                attempt,
                Route::Leader,
                admin_method!("AddNode"),
                req,
                |c, r| async move { Self::admin(c).add_node(r).await },
            )
            .await?;
        resp.status
            .ok_or_else(|| Error::Transport("response without status".into()))
    }

    /// Removes a node; its id is retired for good. Each attempt waits at least 90 s, as
    /// for [`Client::add_node`].
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let status = client.remove_node(4).await?;
    /// assert!(status.members.iter().all(|m| m.id != 4));
    /// # Ok(()) }
    /// ```
    pub async fn remove_node(&self, node_id: u64) -> Result<ClusterStatusResponse, Error> {
        let req = RemoveNodeRequest {
            node_id,
            request_id: Self::request_id(),
        };
        let attempt = self.inner.options.attempt_timeout.max(MEMBERSHIP_ATTEMPT);
        let resp = self
            .call_with_attempts_of(
                attempt,
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
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let leader = client.transfer_leader(2).await?;
    /// assert_eq!(leader, 2);
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let tail = client.audit_tail(5).await?;
    /// assert!(tail.chain_ok);
    /// for event in &tail.events_json {
    ///     println!("{event}");
    /// }
    /// # Ok(()) }
    /// ```
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
mod audit;
mod iam;
