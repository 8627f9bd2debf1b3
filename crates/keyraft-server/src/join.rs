//! Growing a cluster: the first start of a region (bootstrap), authorising joins, and
//! the joining side of the HSM-to-HSM domain-key transfer.
//!
//! The domain key never travels as a file. A node that lacks it keeps an ephemeral X25519
//! key pair inside its HSM and shows the public half through `JoinInfo`. A member (the
//! leader, for `AddNode`; the bootstrap node, for the initial members) fetches that public
//! key over the authenticated node transport and commits an `AuthorizeJoin` for it
//! through Raft. The joining node, once its replica shows that authorisation, asks any
//! member's `RequestDomainKey`; the member checks the replicated authorisation, and only
//! then its HSM wraps the domain key to that public key. The joiner's HSM unwraps it,
//! checks it against the fingerprint the region replicates, and seals it to its own disk.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use keyraft_proto::v1::internal::{JoinInfoRequest, RequestDomainKeyRequest};
use keyraft_raft::NodeAddr;
use keyraft_state::{AccessKeyRecord, Bootstrap, Command, NodeRecord, Op};
use keyraft_types::{
    AccountId, AuditRecord, ErrorCode, EventType, KmsError, NodeId, Region, RequestParameters,
    UserIdentity,
};

use crate::authn::secret_purpose;
use crate::config::BootstrapConfig;
use crate::core::{node_methods, NodeCore};

/// What a domain-key transfer for a join is bound to.
pub(crate) fn join_binding(region: &Region, node_id: NodeId) -> Vec<u8> {
    format!("keyraft-join:{region}:{node_id}").into_bytes()
}

/// The audit record of something the service does by itself.
pub(crate) fn service_record(
    core: &NodeCore,
    event_name: &str,
    node_id: Option<NodeId>,
) -> AuditRecord {
    AuditRecord {
        event_id: keyraft_types::new_id(),
        event_time_ms: core.clock.now_ms(),
        event_name: event_name.to_string(),
        request_id: keyraft_types::new_id(),
        event_type: EventType::AwsServiceEvent,
        read_only: false,
        user_identity: UserIdentity {
            identity_type: "Service".to_string(),
            principal_arn: format!("keyraft:node/{}", core.id),
            account_id: String::new(),
            access_key_id: String::new(),
        },
        source_ip: String::new(),
        user_agent: "keyraft".to_string(),
        node_id: core.id,
        request_parameters: RequestParameters {
            node_id,
            ..Default::default()
        },
        resources: Vec::new(),
        error: None,
        key_checks: Vec::new(),
        authz_checks: Vec::new(),
    }
}

/// A joining node's answer to `JoinInfo`.
pub(crate) struct JoinInfo {
    pub public_key: Vec<u8>,
    pub has_domain_key: bool,
}

impl NodeCore {
    /// Asks node `node_id` at `raft_addr` for its join identity.
    pub(crate) async fn join_info(
        &self,
        node_id: NodeId,
        raft_addr: &str,
    ) -> Result<JoinInfo, KmsError> {
        let mut client = self.peer(raft_addr)?;
        let mut req = self.signed(JoinInfoRequest {}, node_methods::JOIN_INFO, node_id);
        req.set_timeout(Duration::from_secs(2));
        let info = client
            .join_info(req)
            .await
            .map_err(|s| {
                KmsError::new(
                    ErrorCode::DependencyTimeout,
                    format!(
                        "node {node_id} at {raft_addr} did not answer: {}",
                        s.message()
                    ),
                )
            })?
            .into_inner();
        if info.node_id != node_id {
            return Err(KmsError::validation(format!(
                "the node at {raft_addr} is node {}, not node {node_id}",
                info.node_id
            )));
        }
        if info.region != self.region.as_str() {
            return Err(KmsError::validation(format!(
                "node {node_id} is configured for region {}, not {}",
                info.region, self.region
            )));
        }
        if info.has_domain_key {
            let ours = self
                .state
                .cluster_config()
                .map_err(crate::kms::internal)?
                .map(|c| c.domain_key_fingerprint);
            if ours.is_some_and(|f| f != info.domain_key_fingerprint) {
                return Err(KmsError::validation(format!(
                    "node {node_id} holds the domain key of another cluster; wipe its data directory before it joins"
                )));
            }
        }
        Ok(JoinInfo {
            public_key: info.public_key,
            has_domain_key: info.has_domain_key,
        })
    }

    /// Commits an authorisation for node `node` to receive the domain key, unless it has
    /// the key already. Returns whether the node already holds the key.
    pub(crate) async fn authorize_join(
        &self,
        node: &NodeRecord,
        audit: AuditRecord,
    ) -> Result<bool, KmsError> {
        let info = self.join_info(node.node_id, &node.raft_addr).await?;
        if info.has_domain_key {
            return Ok(true);
        }
        let current = self
            .state
            .join_authorization(node.node_id)
            .map_err(crate::kms::internal)?;
        if current.is_some_and(|a| a.public_key == info.public_key) {
            return Ok(false);
        }
        let cmd = Command {
            request_id: keyraft_types::new_id(),
            time_ms: self.clock.now_ms(),
            op: Op::AuthorizeJoin {
                node: node.clone(),
                public_key: info.public_key,
                audit: Box::new(audit),
            },
        };
        self.propose(cmd).await??;
        Ok(false)
    }
}

/// Joining side: until this node's HSM holds the domain key, wait for an authorisation
/// of this node's public key to appear in the replica, then ask members for the key.
pub(crate) async fn fetch_domain_key(core: Arc<NodeCore>) {
    let mut warned = false;
    while !core.hsm.has_domain_key() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (Ok(Some(auth)), Ok(Some(config))) = (
            core.state.join_authorization(core.id),
            core.state.cluster_config(),
        ) else {
            continue;
        };
        let Ok(mine) = core.hsm.join_public_key() else {
            continue;
        };
        if auth.public_key != mine.0 {
            if !warned {
                tracing::warn!("the cluster authorised another public key for this node (restarted while joining?); waiting for a new authorisation");
                warned = true;
            }
            continue;
        }
        let peers: Vec<(NodeId, NodeAddr)> = {
            let m = core.metrics();
            m.membership_config
                .nodes()
                .filter(|(id, _)| **id != core.id)
                .map(|(id, n)| (*id, n.clone()))
                .collect()
        };
        for (peer_id, addr) in peers {
            let Ok(mut client) = core.peer(&addr.raft_addr) else {
                continue;
            };
            let req = core.signed(
                RequestDomainKeyRequest {
                    node_id: core.id,
                    public_key: mine.0.to_vec(),
                },
                node_methods::REQUEST_DOMAIN_KEY,
                peer_id,
            );
            let Ok(resp) = client.request_domain_key(req).await else {
                continue;
            };
            let Ok(transfer) = bincode::deserialize(&resp.into_inner().transfer) else {
                continue;
            };
            match core.hsm.import_domain_key(
                &transfer,
                &join_binding(&config.region, core.id),
                &config.domain_key_fingerprint,
            ) {
                Ok(()) => {
                    tracing::info!(from = peer_id, "received the domain key");
                    break;
                }
                Err(e) => {
                    tracing::warn!(from = peer_id, error = %e, "domain key transfer rejected")
                }
            }
        }
    }
}

/// First start of a region on the bootstrap node: initialise Raft with the initial
/// members, commit the region's configuration and first credential, and authorise the
/// other initial members to receive the domain key. Safe to rerun after a crash at any
/// step: each step checks what the replica already holds.
pub(crate) async fn bootstrap(core: Arc<NodeCore>, boot: BootstrapConfig) {
    if let Err(e) = bootstrap_steps(&core, &boot).await {
        tracing::error!(error = %e, "bootstrap failed");
    }
}

async fn bootstrap_steps(core: &Arc<NodeCore>, boot: &BootstrapConfig) -> Result<(), KmsError> {
    let initialized = core
        .raft
        .is_initialized()
        .await
        .map_err(|_| KmsError::internal())?;
    if !initialized {
        if !core.hsm.has_domain_key() {
            core.hsm.generate_domain_key()?;
            tracing::info!("generated the region's domain key");
        }
        let members: BTreeMap<NodeId, NodeAddr> = boot
            .members
            .iter()
            .map(|m| {
                (
                    m.id,
                    NodeAddr {
                        api_endpoint: m.api_endpoint.clone(),
                        raft_addr: m.raft_addr.clone(),
                    },
                )
            })
            .collect();
        if let Err(e) = core.raft.initialize(members).await {
            tracing::warn!(error = %e, "raft initialize");
        }
    }
    let records: Vec<NodeRecord> = boot
        .members
        .iter()
        .map(|m| NodeRecord {
            node_id: m.id,
            api_endpoint: m.api_endpoint.clone(),
            raft_addr: m.raft_addr.clone(),
            retired: false,
        })
        .collect();
    // Commit the region's configuration once.
    loop {
        if core
            .state
            .cluster_config()
            .map_err(crate::kms::internal)?
            .is_some()
        {
            break;
        }
        if !core.hsm.has_domain_key() {
            return Err(KmsError::new(
                ErrorCode::KeyUnavailable,
                "this bootstrap node has no domain key but the region is not bootstrapped",
            ));
        }
        let (access_key_id, secret) = admin_credentials(core, boot)?;
        let wrapped_secret = core
            .hsm
            .wrap_secret(secret.as_bytes(), &secret_purpose(&access_key_id))?;
        let account = AccountId::parse(&boot.account)?;
        let now = core.clock.now_ms();
        let cmd = Command {
            request_id: "bootstrap".to_string(),
            time_ms: now,
            op: Op::Bootstrap(Box::new(Bootstrap {
                region: core.region.clone(),
                account: account.clone(),
                domain_key_fingerprint: core.hsm.domain_key_fingerprint()?,
                admin: AccessKeyRecord {
                    access_key_id,
                    principal_arn: format!("arn:keyraft:iam::{account}:user/admin"),
                    account,
                    wrapped_secret,
                    enabled: true,
                    created_ms: now,
                    expires_ms: None,
                    role_arn: None,
                },
                members: records.clone(),
                key_quota: boot.key_quota,
            })),
        };
        match core.propose(cmd).await {
            Ok(Ok(_)) => {
                tracing::info!(region = %core.region, "bootstrapped the region");
                break;
            }
            Ok(Err(e)) if e.code == ErrorCode::AlreadyExists => break,
            Ok(Err(e)) => return Err(e),
            Err(e) => tracing::warn!(error = %e, "bootstrap proposal; retrying"),
        }
    }
    // Hand the domain key to the other initial members.
    let mut pending: Vec<NodeRecord> = records
        .into_iter()
        .filter(|r| r.node_id != core.id)
        .collect();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for node in pending {
            let audit = service_record(core, "AuthorizeJoin", Some(node.node_id));
            match core.authorize_join(&node, audit).await {
                Ok(true) => {
                    tracing::info!(node = node.node_id, "initial member holds the domain key")
                }
                Ok(false) | Err(_) => still.push(node),
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    Ok(())
}

/// The first administrator's credentials: from the configuration, or generated once and
/// kept in `<data_dir>/admin-credentials.json` (mode 0600) so that a restart before the
/// bootstrap committed proposes the same ones.
fn admin_credentials(
    core: &NodeCore,
    boot: &BootstrapConfig,
) -> Result<(String, String), KmsError> {
    if !boot.admin_access_key_id.is_empty() && !boot.admin_secret_access_key.is_empty() {
        return Ok((
            boot.admin_access_key_id.clone(),
            boot.admin_secret_access_key.clone(),
        ));
    }
    let path = core.config.data_dir.join("admin-credentials.json");
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Creds {
        #[serde(rename = "AccessKeyId")]
        access_key_id: String,
        #[serde(rename = "SecretAccessKey")]
        secret_access_key: String,
    }
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(c) = serde_json::from_str::<Creds>(&text) {
            return Ok((c.access_key_id, c.secret_access_key));
        }
    }
    let (id, secret) = generate_access_key();
    let text = serde_json::to_string_pretty(&Creds {
        access_key_id: id.clone(),
        secret_access_key: secret.clone(),
    })
    .map_err(|_| KmsError::internal())?;
    write_private(&path, text.as_bytes()).map_err(|e| {
        tracing::error!(error = %e, "writing admin credentials");
        KmsError::internal()
    })?;
    tracing::warn!(path = %path.display(), "generated the first administrator's credentials");
    Ok((id, secret))
}

/// A new access key id (`KR` + 18 uppercase alphanumerics) and a 40-character secret.
pub fn generate_access_key() -> (String, String) {
    const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    const SECRET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut rng = rand::rngs::OsRng;
    let id: String = std::iter::once("KR".to_string())
        .chain((0..18).map(|_| (UPPER[rng.gen_range(0..UPPER.len())] as char).to_string()))
        .collect();
    let secret: String = (0..40)
        .map(|_| SECRET[rng.gen_range(0..SECRET.len())] as char)
        .collect();
    (id, secret)
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
