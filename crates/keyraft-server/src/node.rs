//! Starting and stopping a node: storage, HSM, Raft, the two gRPC servers and the
//! background tasks (group commit, bootstrap, domain-key fetch).
//!
//! A node takes already bound listeners, so tests can bind port 0 and learn the
//! addresses before any node starts (the mini-redis pattern).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

use keyraft_hsm::{Hsm, SoftHsm};
use keyraft_proto::v1::admin_service_server::AdminServiceServer;
use keyraft_proto::v1::iam_service_server::IamServiceServer;
use keyraft_proto::v1::internal::node_service_server::NodeServiceServer;
use keyraft_proto::v1::key_service_server::KeyServiceServer;
use keyraft_raft::compaction::{self, CompactionPolicy};
use keyraft_raft::leader_watch::{self, LeaderContact};
use keyraft_raft::log_store::LogStore;
use keyraft_raft::network::{
    source_ip, ClusterAuth, Network, RaftServer, MAX_MESSAGE, PEER_RESET_STREAMS,
};
use keyraft_raft::state_machine::StateMachineStore;
use keyraft_raft::Raft;
use keyraft_state::{Durable, StateMachine};
use keyraft_types::{KmsError, Region};

use crate::admin::AdminApi;
use crate::config::Config;
use crate::core::NodeCore;
use crate::internal::NodeApi;
use crate::kms::KeyApi;

/// A running node.
pub struct Node;

/// Controls a running node.
pub struct NodeHandle {
    core: Arc<NodeCore>,
    shutdown: watch::Sender<bool>,
    fatal: watch::Receiver<Option<String>>,
    servers: Vec<JoinHandle<Result<(), tonic::transport::Error>>>,
    tasks: Vec<JoinHandle<()>>,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(#[from] KmsError),
    /// Storage could not be opened.
    #[error("storage: {0}")]
    Storage(#[from] keyraft_state::StateError),
    /// The HSM could not be opened (wrong sealing secret?).
    #[error("hsm: {0}")]
    Hsm(#[from] keyraft_hsm::HsmError),
    /// A file or socket operation failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// openraft refused to start.
    #[error("raft: {0}")]
    Raft(String),
}

impl Node {
    /// Starts a node on the given listeners (client API and node-to-node).
    pub async fn start(
        config: Config,
        api_listener: TcpListener,
        raft_listener: TcpListener,
    ) -> Result<NodeHandle, StartError> {
        config.validate()?;
        let region = Region::parse(&config.region)?;
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(&data_dir)?;

        let hsm: Arc<dyn Hsm> = Arc::new(SoftHsm::open(
            &data_dir.join("hsm"),
            config.sealing_secret.as_bytes(),
        )?);
        let durable = Durable::open(&data_dir.join("store"))?;
        let state = Arc::new(StateMachine::open(&durable)?);
        let log_store = LogStore::open(&durable)?;
        let sm_store =
            StateMachineStore::new(state.clone(), &data_dir)?.after_log(log_store.flushed());
        let compaction = CompactionPolicy {
            every_logs: config.raft.snapshot_every_logs,
            log_percent: config.raft.snapshot_log_percent,
            keep_logs: config.raft.keep_logs_after_snapshot,
        };
        let (log_bytes, snapshot_bytes) = (log_store.appended_bytes(), sm_store.snapshot_bytes());

        let raft_config = openraft::Config {
            cluster_name: format!("keyraft-{region}"),
            heartbeat_interval: config.raft.heartbeat_ms,
            election_timeout_min: config.raft.election_timeout_min_ms,
            election_timeout_max: config.raft.election_timeout_max_ms,
            enable_pre_vote: Some(true),
            max_payload_entries: 300,
            // `keyraft_raft::compaction` decides when to snapshot (see below).
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: config.raft.keep_logs_after_snapshot,
            replication_lag_threshold: config.raft.snapshot_every_logs * 2,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Raft(e.to_string()))?;

        // Node-to-node connections leave from the node-to-node listener's IP when it is
        // bound to a specific address (see `Config::raft_addr`).
        let network = Network::new(ClusterAuth::new(
            config.node_id,
            config.cluster_secret.as_bytes(),
        ))
        .with_source_ip(raft_listener.local_addr().ok().and_then(source_ip))
        .with_stream_patience(Duration::from_millis(config.raft.election_timeout_min_ms));
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            network.clone(),
            log_store,
            sm_store,
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;

        let bootstrap = config.bootstrap.clone();
        let (core, commit_rx) = NodeCore::new(config, region, raft.clone(), state, hsm, network);

        if let Some(cfg) = core.state.cluster_config()? {
            if cfg.region != core.region {
                return Err(StartError::Config(KmsError::validation(format!(
                    "this data directory belongs to region {}, not {}",
                    cfg.region, core.region
                ))));
            }
            if core.hsm.has_domain_key()
                && core.hsm.domain_key_fingerprint()? != cfg.domain_key_fingerprint
            {
                return Err(StartError::Config(KmsError::validation(
                    "this node's domain key is not the region's (fingerprint mismatch)",
                )));
            }
        }

        let (shutdown, shutdown_rx) = watch::channel(false);
        let (fatal_tx, fatal) = watch::channel(None);
        let mut tasks = vec![
            tokio::spawn(watch_fatal(raft.clone(), fatal_tx)),
            tokio::spawn(core.clone().run_group_commit(commit_rx)),
            tokio::spawn(crate::join::fetch_domain_key(core.clone())),
        ];
        tasks.push(tokio::spawn(run_ticker(core.clone())));
        tasks.push(tokio::spawn(compaction::run(
            raft.clone(),
            compaction,
            log_bytes,
            snapshot_bytes,
            core.network.snapshot_transfers(),
        )));
        let contact = LeaderContact::default();
        tasks.push(tokio::spawn(leader_watch::run(
            raft.clone(),
            contact.clone(),
            core.network.source(),
            Duration::from_millis(core.config.raft.heartbeat_ms),
        )));
        if let Some(boot) = bootstrap {
            tasks.push(tokio::spawn(crate::join::bootstrap(core.clone(), boot)));
        }

        let stop = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let raft_server = tonic::transport::Server::builder()
            // h2 closes a connection on which more than 20 streams were reset by the
            // peer before they were accepted (a defence against "rapid reset" floods).
            // A node busy for seconds (installing a snapshot, a slow sync) sees exactly
            // that from its leader, and the replication stream went with the connection.
            .http2_max_pending_accept_reset_streams(Some(PEER_RESET_STREAMS))
            .add_service(
                RaftServer::new(
                    raft.clone(),
                    core.cluster_auth().clone(),
                    contact.clone(),
                    shutdown_rx.clone(),
                    core.state.clone(),
                    core.config.data_dir.clone(),
                )
                .into_service(),
            )
            .add_service(
                NodeServiceServer::new(NodeApi::new(core.clone()))
                    .max_decoding_message_size(MAX_MESSAGE),
            )
            .serve_with_incoming_shutdown(no_delay(raft_listener), stop(shutdown_rx.clone()));
        let api_server = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .add_service(KeyServiceServer::new(KeyApi::new(core.clone())))
            .add_service(AdminServiceServer::new(AdminApi::new(core.clone())))
            .add_service(IamServiceServer::new(crate::iam::IamApi::new(core.clone())))
            .serve_with_incoming_shutdown(no_delay(api_listener), stop(shutdown_rx));
        let servers = vec![tokio::spawn(raft_server), tokio::spawn(api_server)];
        tracing::info!(node = core.id, api = %core.config.api_endpoint(), raft = %core.config.raft_endpoint(), "node started");
        Ok(NodeHandle {
            core,
            shutdown,
            fatal,
            servers,
            tasks,
        })
    }
}

/// The connections `listener` accepts, with `TCP_NODELAY` set on each.
///
/// tonic applies its own `tcp_nodelay` setting only to listeners it binds itself, not to
/// an incoming stream it is given. Without it, Nagle's algorithm holds a small response
/// written in two pieces (HTTP/2 headers, then data and trailers) until the peer's
/// delayed ACK, about 40 ms on Linux: a follower's AppendEntries answer, and so the
/// leader's commit, waited that long now and then.
pub fn no_delay(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// How long a stopping node lets calls in progress finish before it drops them.
const DRAIN: Duration = Duration::from_secs(10);

/// Waits for the servers to stop. Once the node is told to stop (`stop` turns true),
/// they finish the calls they are serving for [`DRAIN`] at most: a client that holds a
/// call open (a stuck stream, a peer that stopped reading) must not keep the node from
/// stopping. The servers left after that are aborted, which closes their connections.
async fn drain(
    mut stop: watch::Receiver<bool>,
    servers: Vec<JoinHandle<Result<(), tonic::transport::Error>>>,
) {
    let grace = async move {
        let _ = stop.wait_for(|stop| *stop).await;
        tokio::time::sleep(DRAIN).await;
    };
    tokio::pin!(grace);
    let mut expired = false;
    for mut s in servers {
        let ended = if expired {
            None
        } else {
            tokio::select! {
                ended = &mut s => Some(ended),
                () = &mut grace => {
                    tracing::warn!("calls still open after {DRAIN:?}; closing their connections");
                    expired = true;
                    None
                }
            }
        };
        match ended {
            Some(Ok(Err(e))) => tracing::error!(error = %e, "server stopped"),
            Some(Err(e)) => tracing::error!(error = %e, "server task failed"),
            Some(Ok(Ok(()))) => {}
            None => s.abort(),
        }
    }
}

/// Writes the state applied in memory to sled once Raft has stopped, so that the next
/// start need not apply those entries again. A failure only costs that replay.
fn flush_state(core: &NodeCore) {
    if let Err(e) = core.state.flush() {
        tracing::warn!(error = %e, "writing the applied state at shutdown failed");
    }
}

/// The leader's time-driven work: when a scheduled deletion, an expiry of imported key
/// material, the end of a request id's TTL or an automatic rotation is due, propose a
/// tick carrying the time and the new key versions this node's HSM prepared. Apply
/// decides with that command alone, so every replica destroys, forgets and rotates the
/// same things.
///
/// The time is not the leader's clock alone but one a majority of the voters' clocks
/// has reached ([`NodeCore::quorum_time_ms`]): a leader whose clock jumped ten days
/// ahead would otherwise destroy every key pending deletion at once (the chaos suite's
/// `clock-skew` experiment found this). The leader's own clock only decides whether to
/// ask.
async fn run_ticker(core: Arc<NodeCore>) {
    use keyraft_state::{Command, Op, Reply};
    let mut interval = tokio::time::interval(Duration::from_millis(core.config.tick_interval_ms));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if !core.raft.is_leader() {
            continue;
        }
        if !tick_due(&core, core.clock.now_ms()) {
            continue;
        }
        let Some(now) = core.quorum_time_ms().await else {
            tracing::warn!("work is due, but too few voters reported their clocks");
            continue;
        };
        let removal_due = tick_due_removal(&core, now);
        let rotations = prepare_rotations(&core, rotation_candidates(&core, now));
        if !removal_due && rotations.is_empty() {
            continue;
        }
        let cmd = Command {
            request_id: keyraft_types::new_id(),
            time_ms: now,
            op: Op::Tick {
                node_id: core.id,
                rotations,
            },
        };
        match core.propose_local(cmd).await {
            Ok(Ok(Reply::Deleted(keys))) => {
                for k in keys {
                    tracing::info!(key = %k, "key deleted after its waiting period");
                }
            }
            Ok(other) => tracing::warn!(?other, "unexpected tick reply"),
            Err(e) => tracing::warn!(error = %e, "tick did not commit"),
        }
    }
}

/// Whether a deletion, an expiry or a rotation of an enabled key is due at `now` (a
/// disabled key's overdue rotation is no work, so it must not make the leader poll the
/// voters' clocks every tick).
fn tick_due(core: &NodeCore, now: u64) -> bool {
    tick_due_removal(core, now) || !rotation_candidates(core, now).is_empty()
}

/// Whether a scheduled deletion, an expiry of imported material or the end of a
/// remembered request id's TTL is due at `now`.
fn tick_due_removal(core: &NodeCore, now: u64) -> bool {
    let state = &core.state;
    let due = [
        state.next_deletion_due(),
        state.next_expiry_due(),
        state.next_request_id_expiry(),
    ];
    due.into_iter().any(|next| match next {
        Ok(next) => next.is_some_and(|t| t <= now),
        Err(e) => {
            tracing::error!(error = %e, "reading the due-time indexes");
            false
        }
    })
}

/// The enabled keys whose automatic rotation is due at `now`, up to 50 (a disabled
/// key's rotation waits until it is enabled again).
fn rotation_candidates(core: &NodeCore, now: u64) -> Vec<keyraft_state::KeyRecord> {
    let due = match core.state.due_rotations(now, 50) {
        Ok(due) => due,
        Err(e) => {
            tracing::error!(error = %e, "reading due rotations");
            return Vec::new();
        }
    };
    due.into_iter()
        .filter_map(|id| core.state.key(&id).ok().flatten())
        .filter(|k| k.metadata.key_state == keyraft_types::KeyState::Enabled)
        .collect()
}

/// New backing versions, made by this node's HSM, for `keys`.
fn prepare_rotations(
    core: &NodeCore,
    keys: Vec<keyraft_state::KeyRecord>,
) -> Vec<keyraft_state::PreparedRotation> {
    keys.into_iter()
        .filter_map(|k| {
            let version = k.metadata.current_version + 1;
            match core.hsm.generate_key_material(&k.metadata.key_id, version) {
                Ok(material) => Some(keyraft_state::PreparedRotation {
                    key_id: k.metadata.key_id,
                    version,
                    material: material.0,
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot prepare a rotation");
                    None
                }
            }
        })
        .collect()
}

/// Reports the first fatal error of the Raft core.
async fn watch_fatal(raft: Raft, tx: watch::Sender<Option<String>>) {
    use openraft::async_runtime::WatchReceiver;
    let mut metrics = raft.metrics();
    loop {
        let state = metrics.borrow_watched().running_state.clone();
        if let Err(fatal) = state {
            tracing::error!(error = %fatal, "raft stopped");
            let _ = tx.send(Some(fatal.to_string()));
            return;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

impl NodeHandle {
    /// The node's shared core (Raft handle, state replica, HSM).
    pub fn core(&self) -> &Arc<NodeCore> {
        &self.core
    }

    /// The Raft handle.
    pub fn raft(&self) -> &Raft {
        &self.core.raft
    }

    /// Stops the servers and Raft.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in &self.tasks {
            t.abort();
        }
        drain(self.shutdown.subscribe(), self.servers).await;
        let _ = self.core.raft.shutdown().await;
        flush_state(&self.core);
    }

    /// Runs until the servers stop (e.g. after a shutdown signal).
    pub async fn wait(self) {
        drain(self.shutdown.subscribe(), self.servers).await;
        let _ = self.core.raft.shutdown().await;
        flush_state(&self.core);
    }

    /// Resolves when Raft stopped on a fatal error (a storage fault, say). Such a node
    /// must not go on answering: the caller should stop it and exit non-zero, so that a
    /// supervisor restarts it and an operator is alerted.
    pub async fn fatal(&self) -> String {
        let mut rx = self.fatal.clone();
        let fatal = match rx.wait_for(|f| f.is_some()).await {
            Ok(f) => f.clone(),
            Err(_) => None,
        };
        match fatal {
            Some(f) => f,
            None => std::future::pending().await,
        }
    }

    /// Signals the node to stop; `wait` then returns.
    pub fn stop(&self) {
        let _ = self.shutdown.send(true);
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn accepted_connections_have_nagle_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = no_delay(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(
            accepted.nodelay().unwrap(),
            "an accepted connection must have TCP_NODELAY, or small responses wait ~40 ms"
        );
    }
}
