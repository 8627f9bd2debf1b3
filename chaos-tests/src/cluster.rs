//! # A cluster of real nodes behind fault proxies
//!
//! [`ChaosCluster`] runs `keyraft server` processes through
//! [`keyraft_testkit::LocalCluster`] and puts every node-to-node link through the
//! proxies of [`crate::net`]:
//!
//! * node `i`'s node-to-node listener binds `127.0.0.(10+i)` on the port the testkit
//!   chose, and the node's outgoing node-to-node connections leave from that IP (a node
//!   binds its peer connections to its node-to-node listen IP);
//! * the node advertises, and the bootstrap membership holds, the address of node `i`'s
//!   proxy on `127.0.0.1`, so every peer reaches node `i` through that proxy, and the
//!   proxy tells the senders apart by their source IP;
//! * the client API listens on `127.0.0.1` as usual and is not proxied.
//!
//! The proxy ports are kept in `<dir>/chaos-network.json`, because Raft stores the
//! advertised addresses in its membership: a cluster started again on the same directory
//! must find its peers at the same addresses.
//!
//! Process faults act on the node processes: [`ChaosCluster::kill`] (`kill -9`),
//! [`ChaosCluster::stop`] (SIGTERM), [`ChaosCluster::pause`] and
//! [`ChaosCluster::resume`] (SIGSTOP, SIGCONT). Every process the cluster started is
//! killed when it is dropped (paused ones are resumed first); the proxies stop with it.
//!
//! The proxies run on the tokio runtime that called [`ChaosCluster::start`]; some methods
//! here block the calling thread briefly (waiting for a killed process), so use a
//! multi-threaded runtime.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio::time::Instant;

use keyraft_client::Client;
use keyraft_server::config::RaftConfig;
use keyraft_testkit::{free_port, LocalCluster};

use crate::net::{node_ip, Network, NodeId, Proxy};

/// The file that keeps a cluster directory's proxy ports.
pub const LAYOUT_FILE: &str = "chaos-network.json";

/// What can go wrong with a chaos cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The underlying local cluster failed (layout, processes, readiness).
    #[error(transparent)]
    Cluster(#[from] keyraft_testkit::Error),
    /// A file or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// Sending a signal to a node process failed.
    #[error("{context}: {source}")]
    Signal {
        /// What was being done.
        context: String,
        /// The error.
        source: nix::Error,
    },
    /// The cluster did not reach the expected state in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Invalid input, or a node in the wrong state for the request.
    #[error("{0}")]
    Invalid(String),
}

/// How to start a [`ChaosCluster`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// How many nodes (ids 1 to `nodes`; node 1 bootstraps).
    pub nodes: usize,
    /// The cluster directory (see [`keyraft_testkit`] for its layout).
    pub dir: PathBuf,
    /// The `keyraft` binary.
    pub binary: PathBuf,
    /// The region.
    pub region: String,
    /// Raft timing and snapshot thresholds for every node (`None`: the defaults).
    pub raft: Option<RaftConfig>,
    /// Extra environment for the node processes (e.g. `RUST_LOG`).
    pub node_env: Vec<(String, String)>,
    /// How long [`ChaosCluster::start`] waits for the cluster to be ready.
    pub ready_timeout: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 3,
            dir: PathBuf::new(),
            binary: PathBuf::new(),
            region: "chaos-1".into(),
            raft: None,
            node_env: Vec::new(),
            ready_timeout: Duration::from_secs(60),
        }
    }
}

/// The proxy port of every node, kept in [`LAYOUT_FILE`].
#[derive(Debug, Default, Serialize, Deserialize)]
struct Layout {
    proxy_ports: BTreeMap<NodeId, u16>,
}

impl Layout {
    /// Reads the directory's layout and gives every node in `ids` a port.
    fn load_or_create(dir: &Path, ids: &[NodeId]) -> Result<Layout, Error> {
        let path = dir.join(LAYOUT_FILE);
        let mut layout: Layout = match fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Layout::default(),
            Err(source) => {
                return Err(Error::Io {
                    context: format!("reading {}", path.display()),
                    source,
                })
            }
        };
        let mut changed = false;
        for id in ids {
            if !layout.proxy_ports.contains_key(id) {
                layout.proxy_ports.insert(*id, free_port()?);
                changed = true;
            }
        }
        if changed {
            let text =
                serde_json::to_string_pretty(&layout).map_err(|e| Error::Invalid(e.to_string()))?;
            fs::write(&path, text).map_err(|source| Error::Io {
                context: format!("writing {}", path.display()),
                source,
            })?;
        }
        Ok(layout)
    }
}

/// A cluster of `keyraft server` processes whose node-to-node links run through fault
/// proxies.
pub struct ChaosCluster {
    local: LocalCluster,
    network: Network,
    ids: Vec<NodeId>,
    paused: BTreeSet<NodeId>,
    /// Nodes stopped or killed on purpose (so not crashed).
    down: BTreeSet<NodeId>,
}

impl std::fmt::Debug for ChaosCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChaosCluster")
            .field("dir", &self.local.dir())
            .field("ids", &self.ids)
            .field("paused", &self.paused)
            .field("down", &self.down)
            .field("network", &self.network)
            .finish()
    }
}

impl ChaosCluster {
    /// Lays out (or reuses) the cluster in `options.dir`, starts the proxies and every
    /// node, and waits until the cluster is ready (a leader, every node reachable with the
    /// domain key, the region bootstrapped).
    pub async fn start(options: ClusterOptions) -> Result<ChaosCluster, Error> {
        if !options.binary.is_file() {
            return Err(Error::Invalid(format!(
                "{} is not a file (build keyraft-cli first)",
                options.binary.display()
            )));
        }
        let mut local = LocalCluster::prepare(
            &options.dir,
            &options.binary,
            options.nodes,
            0,
            &options.region,
        )?;
        local.node_env = options.node_env.clone();
        let specs = local.nodes();
        let ids: Vec<NodeId> = specs.iter().map(|s| s.id).collect();
        let layout = Layout::load_or_create(&options.dir, &ids)?;

        let mut proxies = Vec::new();
        let mut listen = BTreeMap::new();
        let mut advertised = BTreeMap::new();
        for spec in &specs {
            let ip = node_ip(spec.id).ok_or_else(|| {
                Error::Invalid(format!("node id {} is too large for a proxy", spec.id))
            })?;
            let port = layout
                .proxy_ports
                .get(&spec.id)
                .copied()
                .ok_or_else(|| Error::Invalid(format!("no proxy port for node {}", spec.id)))?;
            let proxy = Proxy {
                node: spec.id,
                listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
                upstream: SocketAddr::new(IpAddr::V4(ip), spec.raft_port),
            };
            listen.insert(spec.id, proxy.upstream.to_string());
            advertised.insert(spec.id, proxy.listen.to_string());
            proxies.push(proxy);
        }
        let network = Network::start(proxies).await.map_err(|source| Error::Io {
            context: "starting the proxies".into(),
            source,
        })?;

        let raft = options.raft.clone();
        local.configure(move |config| {
            if let Some(addr) = listen.get(&config.node_id) {
                config.raft_addr = addr.clone();
            }
            if let Some(addr) = advertised.get(&config.node_id) {
                config.advertise_raft = Some(addr.clone());
            }
            if let Some(boot) = &mut config.bootstrap {
                for member in &mut boot.members {
                    if let Some(addr) = advertised.get(&member.id) {
                        member.raft_addr = addr.clone();
                    }
                }
            }
            if let Some(raft) = &raft {
                config.raft = raft.clone();
            }
        })?;
        local.start_all()?;
        let mut cluster = ChaosCluster {
            local,
            network,
            ids,
            paused: BTreeSet::new(),
            down: BTreeSet::new(),
        };
        cluster.wait_ready(options.ready_timeout).await?;
        Ok(cluster)
    }

    /// Every node's id.
    pub fn ids(&self) -> Vec<NodeId> {
        self.ids.clone()
    }

    /// The proxies and their faults.
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// The underlying local cluster.
    pub fn local(&self) -> &LocalCluster {
        &self.local
    }

    /// The cluster directory.
    pub fn dir(&self) -> &Path {
        self.local.dir()
    }

    /// Node `id`'s log file.
    pub fn log_path(&self, id: NodeId) -> PathBuf {
        self.local.dir().join(format!("node{id}.log"))
    }

    /// The last `lines` lines of node `id`'s log.
    pub fn log_tail(&self, id: NodeId, lines: usize) -> String {
        self.local.log_tail(id, lines)
    }

    /// Node `id`'s data directory.
    pub fn data_dir(&self, id: NodeId) -> PathBuf {
        self.local.data_dir(id)
    }

    /// An SDK client over every node's client API.
    pub fn client(&self) -> Result<Client, Error> {
        Ok(self.local.client()?)
    }

    /// An SDK client pinned to node `id`.
    pub fn client_of(&self, id: NodeId) -> Result<Client, Error> {
        Ok(self.local.client_of(id)?)
    }

    fn check_id(&self, id: NodeId) -> Result<(), Error> {
        if self.ids.contains(&id) {
            Ok(())
        } else {
            Err(Error::Invalid(format!("no node {id}")))
        }
    }

    /// Whether node `id`'s process is running (paused counts as running).
    pub fn is_running(&mut self, id: NodeId) -> bool {
        self.local.is_running(id)
    }

    /// Whether node `id` is paused.
    pub fn is_paused(&self, id: NodeId) -> bool {
        self.paused.contains(&id)
    }

    /// The paused nodes.
    pub fn paused(&self) -> Vec<NodeId> {
        self.paused.iter().copied().collect()
    }

    /// Nodes whose process is not running, for whatever reason.
    pub fn not_running(&mut self) -> Vec<NodeId> {
        let ids = self.ids.clone();
        ids.into_iter().filter(|id| !self.is_running(*id)).collect()
    }

    /// Nodes whose process exited on its own (not through [`ChaosCluster::kill`] or
    /// [`ChaosCluster::stop`]): a panic, a fatal storage error, a fail point.
    pub fn crashed(&mut self) -> Vec<NodeId> {
        let down = self.down.clone();
        self.not_running()
            .into_iter()
            .filter(|id| !down.contains(id))
            .collect()
    }

    fn signal(&self, id: NodeId, signal: Signal) -> Result<(), Error> {
        let pid = self
            .local
            .pid(id)
            .ok_or_else(|| Error::Invalid(format!("node {id} is not running")))?;
        let pid = i32::try_from(pid)
            .map_err(|_| Error::Invalid(format!("node {id} has process id {pid}")))?;
        kill(Pid::from_raw(pid), signal).map_err(|source| Error::Signal {
            context: format!("sending {signal} to node {id}"),
            source,
        })
    }

    /// `kill -9` node `id` and waits until it is gone.
    pub fn kill(&mut self, id: NodeId) -> Result<(), Error> {
        self.check_id(id)?;
        self.local.kill(id)?;
        self.paused.remove(&id);
        self.down.insert(id);
        Ok(())
    }

    /// Stops node `id` with SIGTERM, or `kill -9` after `grace`.
    pub fn stop(&mut self, id: NodeId, grace: Duration) -> Result<(), Error> {
        self.check_id(id)?;
        if self.paused.contains(&id) {
            self.resume(id)?;
        }
        self.local.stop(id, grace)?;
        self.down.insert(id);
        Ok(())
    }

    /// Starts node `id`, which must not be running, on its existing data.
    pub fn start_node(&mut self, id: NodeId) -> Result<(), Error> {
        self.check_id(id)?;
        self.local.start(id)?;
        self.down.remove(&id);
        Ok(())
    }

    /// Starts node `id` again: `kill -9` first if it is running.
    pub fn restart(&mut self, id: NodeId) -> Result<(), Error> {
        self.check_id(id)?;
        if self.is_running(id) {
            self.kill(id)?;
        }
        self.start_node(id)
    }

    /// Freezes node `id` (SIGSTOP): it neither answers nor notices time passing.
    pub fn pause(&mut self, id: NodeId) -> Result<(), Error> {
        self.check_id(id)?;
        self.signal(id, Signal::SIGSTOP)?;
        self.paused.insert(id);
        Ok(())
    }

    /// Lets a paused node `id` run again (SIGCONT).
    pub fn resume(&mut self, id: NodeId) -> Result<(), Error> {
        self.check_id(id)?;
        self.signal(id, Signal::SIGCONT)?;
        self.paused.remove(&id);
        Ok(())
    }

    /// Heals everything: every link passes, paused nodes resume, and nodes that are not
    /// running (killed, stopped or crashed) start again. Returns the first error after
    /// trying everything.
    pub fn heal_all(&mut self) -> Result<(), Error> {
        self.network.heal();
        let mut first = None;
        for id in self.paused() {
            if let Err(e) = self.resume(id) {
                first.get_or_insert(e);
            }
        }
        for id in self.not_running() {
            if let Err(e) = self.start_node(id) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Waits until the cluster has a leader, every node answers and holds the domain key,
    /// and the region is bootstrapped.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), Error> {
        let ids = self.ids.clone();
        match self.local.wait_ready(&ids, timeout).await {
            Ok(()) => Ok(()),
            Err(keyraft_testkit::Error::Timeout(what)) => {
                let logs: Vec<String> = ids
                    .iter()
                    .map(|id| format!("--- node {id}:\n{}", self.log_tail(*id, 8)))
                    .collect();
                Err(Error::Timeout(format!("{what}\n{}", logs.join("\n"))))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Which leader each node names (0: none), asking every running, unpaused node at
    /// once through its client API; nodes that do not answer within `deadline` are left
    /// out. With `stop_at` set, returns as soon as that many nodes name the same leader.
    async fn ask_leaders(
        &self,
        deadline: Duration,
        stop_at: Option<usize>,
    ) -> BTreeMap<NodeId, NodeId> {
        let until = Instant::now() + deadline;
        let mut asks = JoinSet::new();
        for id in &self.ids {
            if self.local.pid(*id).is_none() || self.paused.contains(id) {
                continue;
            }
            let Ok(client) = self.client_of(*id) else {
                continue;
            };
            let id = *id;
            asks.spawn(async move {
                let status = tokio::time::timeout_at(until, client.cluster_status()).await;
                (id, status.ok().and_then(Result::ok).map(|s| s.leader))
            });
        }
        let mut answers = BTreeMap::new();
        while let Some(done) = asks.join_next().await {
            if let Ok((id, Some(leader))) = done {
                answers.insert(id, leader);
                if let Some(n) = stop_at {
                    if leader != 0 && answers.values().filter(|l| **l == leader).count() >= n {
                        break;
                    }
                }
            }
        }
        answers
    }

    /// Which leader each node names (0: none), for the nodes that answer within
    /// `deadline` (paused and stopped nodes are not asked). A node answers only once it
    /// can commit through a leader (the service audits every call), so a node cut off
    /// from the majority does not answer.
    pub async fn leaders(&self, deadline: Duration) -> BTreeMap<NodeId, NodeId> {
        self.ask_leaders(deadline, None).await
    }

    /// The leader a majority of the cluster's nodes names, asking every reachable node
    /// with `deadline` for all answers.
    pub async fn leader(&self, deadline: Duration) -> Result<NodeId, Error> {
        let majority = self.ids.len() / 2 + 1;
        let answers = self.ask_leaders(deadline, Some(majority)).await;
        let mut votes: BTreeMap<NodeId, usize> = BTreeMap::new();
        for leader in answers.values().filter(|l| **l != 0) {
            *votes.entry(*leader).or_default() += 1;
        }
        votes
            .into_iter()
            .find(|(_, n)| *n >= majority)
            .map(|(leader, _)| leader)
            .ok_or_else(|| {
                Error::Timeout(format!(
                    "no leader named by {majority} of {} nodes within {deadline:?} (answers: {answers:?})",
                    self.ids.len()
                ))
            })
    }

    /// Waits until every node runs and answers, all name the same leader, and the leader
    /// sees every member reachable with the same applied index (quiet clusters only: a
    /// cluster under load may never show one index everywhere).
    pub async fn wait_converged(&mut self, timeout: Duration) -> Result<(), Error> {
        let until = Instant::now() + timeout;
        loop {
            let why = match self.converged(until).await {
                Ok(()) => return Ok(()),
                Err(why) => why,
            };
            if Instant::now() >= until {
                return Err(Error::Timeout(format!("not converged: {why}")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// One convergence check; `Err` says what is not converged yet.
    async fn converged(&mut self, until: Instant) -> Result<(), String> {
        let down = self.not_running();
        if !down.is_empty() {
            return Err(format!("nodes {down:?} are not running"));
        }
        if !self.paused.is_empty() {
            return Err(format!("nodes {:?} are paused", self.paused));
        }
        // One node at a time: every call commits an audit record, which moves the
        // applied indexes the leader's answer compares.
        let mut statuses = BTreeMap::new();
        for id in &self.ids {
            let client = self.client_of(*id).map_err(|e| e.to_string())?;
            let status = tokio::time::timeout_at(until, client.cluster_status())
                .await
                .map_err(|_| format!("node {id} did not answer in time"))?
                .map_err(|e| format!("node {id}: {e}"))?;
            statuses.insert(*id, status);
        }
        let leaders: BTreeSet<NodeId> = statuses.values().map(|s| s.leader).collect();
        let leader = match leaders.iter().collect::<Vec<_>>().as_slice() {
            [l] if **l != 0 => **l,
            _ => {
                let named: BTreeMap<NodeId, NodeId> =
                    statuses.iter().map(|(id, s)| (*id, s.leader)).collect();
                return Err(format!("nodes name different leaders: {named:?}"));
            }
        };
        let client = self.client_of(leader).map_err(|e| e.to_string())?;
        let status = tokio::time::timeout_at(until, client.cluster_status())
            .await
            .map_err(|_| format!("the leader {leader} did not answer in time"))?
            .map_err(|e| format!("the leader {leader}: {e}"))?;
        let unreachable: Vec<NodeId> = status
            .members
            .iter()
            .filter(|m| !m.reachable)
            .map(|m| m.id)
            .collect();
        if !unreachable.is_empty() {
            return Err(format!("the leader cannot reach {unreachable:?}"));
        }
        let applied: BTreeMap<NodeId, u64> = status
            .members
            .iter()
            .map(|m| (m.id, m.last_applied))
            .collect();
        if applied.values().collect::<BTreeSet<_>>().len() > 1 {
            return Err(format!("applied indexes differ: {applied:?}"));
        }
        Ok(())
    }
}

impl Drop for ChaosCluster {
    fn drop(&mut self) {
        // A stopped process is resumed before the local cluster kills it.
        for id in self.paused() {
            let _ = self.signal(id, Signal::SIGCONT);
        }
        self.paused.clear();
    }
}
