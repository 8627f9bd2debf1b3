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
//! A node can be replaced as an operator replaces a failed machine
//! ([`ChaosCluster::replace`]): removed from the membership, killed, its data wiped, and
//! a new node with a fresh id (a removed id never comes back) started behind a proxy of
//! its own and added.
//!
//! Process faults act on the node processes: [`ChaosCluster::kill`] (`kill -9`),
//! [`ChaosCluster::stop`] (SIGTERM), [`ChaosCluster::pause`] and
//! [`ChaosCluster::resume`] (SIGSTOP, SIGCONT). Every process the cluster started is
//! killed when it is dropped (paused ones are resumed first); the proxies stop with it.
//!
//! The proxies run on the tokio runtime that called [`ChaosCluster::start`]. Methods that
//! wait for a process or run an attached cluster's commands do so in
//! `block_in_place`, so use a multi-threaded runtime.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio::time::Instant;

use keyraft_client::{Client, ClientConfig, ErrorCode};
use keyraft_server::config::RaftConfig;
use keyraft_testkit::{free_port, LocalCluster, NodeSpec};

use crate::attach::AttachSpec;
use crate::disk::LimitedFs;
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
    /// Give every node's data directory a filesystem of this many bytes (see
    /// [`crate::disk`]), so that [`ChaosCluster::fill_disk`] can fill it.
    pub data_fs_bytes: Option<u64>,
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
            data_fs_bytes: None,
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

/// Where the nodes come from.
enum Nodes {
    /// Processes this harness started, behind its proxies.
    Local {
        cluster: LocalCluster,
        network: Network,
    },
    /// A cluster that runs elsewhere, acted on through the attach file's commands.
    Attached { spec: AttachSpec, dir: PathBuf },
}

/// A cluster of `keyraft server` processes whose node-to-node links run through fault
/// proxies, or an attached cluster (see [`crate::attach`]).
pub struct ChaosCluster {
    nodes: Nodes,
    ids: Vec<NodeId>,
    paused: BTreeSet<NodeId>,
    /// Nodes stopped or killed on purpose (so not crashed).
    down: BTreeSet<NodeId>,
    /// The address each node advertises to its peers (its proxy), read by the
    /// configuration of nodes added later.
    advertised: Arc<Mutex<BTreeMap<NodeId, String>>>,
    /// Size-limited data filesystems, by node (declared last: dropped, so unmounted,
    /// after the node processes are gone).
    disks: BTreeMap<NodeId, LimitedFs>,
}

impl std::fmt::Debug for ChaosCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChaosCluster")
            .field("dir", &self.dir())
            .field("attached", &self.local().is_none())
            .field("ids", &self.ids)
            .field("paused", &self.paused)
            .field("down", &self.down)
            .field("network", &self.network().ok())
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
        let mut advertised = BTreeMap::new();
        for spec in &specs {
            let port = layout
                .proxy_ports
                .get(&spec.id)
                .copied()
                .ok_or_else(|| Error::Invalid(format!("no proxy port for node {}", spec.id)))?;
            let proxy = proxy_for(spec, port)?;
            advertised.insert(spec.id, proxy.listen.to_string());
            proxies.push(proxy);
        }
        let network = Network::start(proxies).await.map_err(|source| Error::Io {
            context: "starting the proxies".into(),
            source,
        })?;

        let advertised = Arc::new(Mutex::new(advertised));
        let raft = options.raft.clone();
        let known = advertised.clone();
        local.configure(move |config| {
            let advertised = known.lock().unwrap_or_else(|p| p.into_inner());
            // Listen on the node's own loopback address, on the port the testkit chose.
            if let (Some(ip), Ok(addr)) = (
                node_ip(config.node_id),
                config.raft_addr.parse::<SocketAddr>(),
            ) {
                config.raft_addr = SocketAddr::new(IpAddr::V4(ip), addr.port()).to_string();
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
        let mut disks = BTreeMap::new();
        if let Some(bytes) = options.data_fs_bytes {
            for id in &ids {
                let image = options.dir.join(format!("node{id}.img"));
                let fs = LimitedFs::mount(&local.data_dir(*id), &image, bytes)
                    .map_err(Error::Invalid)?;
                disks.insert(*id, fs);
            }
        }
        local.start_all()?;
        let mut cluster = ChaosCluster {
            nodes: Nodes::Local {
                cluster: local,
                network,
            },
            ids,
            paused: BTreeSet::new(),
            down: BTreeSet::new(),
            advertised,
            disks,
        };
        cluster.wait_ready(options.ready_timeout).await?;
        Ok(cluster)
    }

    /// Attaches to a running cluster (see [`crate::attach`]); `dir` is the run's cluster
    /// directory (nothing of the nodes is written there). Waits until the cluster is
    /// ready as [`ChaosCluster::start`] does; starts, stops and changes nothing.
    pub async fn attach(
        spec: AttachSpec,
        dir: &Path,
        ready_timeout: Duration,
    ) -> Result<ChaosCluster, Error> {
        fs::create_dir_all(dir).map_err(|source| Error::Io {
            context: format!("creating {}", dir.display()),
            source,
        })?;
        let mut cluster = ChaosCluster {
            ids: spec.ids(),
            nodes: Nodes::Attached {
                spec,
                dir: dir.to_path_buf(),
            },
            paused: BTreeSet::new(),
            down: BTreeSet::new(),
            advertised: Arc::default(),
            disks: BTreeMap::new(),
        };
        cluster.wait_ready(ready_timeout).await?;
        Ok(cluster)
    }

    /// Every node's id.
    pub fn ids(&self) -> Vec<NodeId> {
        self.ids.clone()
    }

    /// The proxies and their faults; an attached cluster has none (network faults
    /// cannot be injected into it).
    pub fn network(&self) -> Result<&Network, Error> {
        match &self.nodes {
            Nodes::Local { network, .. } => Ok(network),
            Nodes::Attached { .. } => Err(Error::Invalid(
                "network faults need the proxies of a cluster this harness started; an \
                 attached cluster's links are out of its reach"
                    .into(),
            )),
        }
    }

    /// The underlying local cluster (`None` when attached).
    pub fn local(&self) -> Option<&LocalCluster> {
        match &self.nodes {
            Nodes::Local { cluster, .. } => Some(cluster),
            Nodes::Attached { .. } => None,
        }
    }

    /// The local cluster, or an error saying `what` needs one.
    fn local_mut(&mut self, what: &str) -> Result<&mut LocalCluster, Error> {
        match &mut self.nodes {
            Nodes::Local { cluster, .. } => Ok(cluster),
            Nodes::Attached { .. } => Err(Error::Invalid(format!(
                "{what} needs nodes this harness started; an attached cluster cannot"
            ))),
        }
    }

    /// The cluster directory.
    pub fn dir(&self) -> &Path {
        match &self.nodes {
            Nodes::Local { cluster, .. } => cluster.dir(),
            Nodes::Attached { dir, .. } => dir,
        }
    }

    /// The last `lines` lines of node `id`'s log.
    pub fn log_tail(&self, id: NodeId, lines: usize) -> String {
        match &self.nodes {
            Nodes::Local { cluster, .. } => cluster.log_tail(id, lines),
            Nodes::Attached { .. } => "(an attached node's log is kept by its operator)".into(),
        }
    }

    /// Node `id`'s data directory (of a local cluster).
    pub fn data_dir(&self, id: NodeId) -> PathBuf {
        match &self.nodes {
            Nodes::Local { cluster, .. } => cluster.data_dir(id),
            Nodes::Attached { dir, .. } => dir.join(format!("node{id}")),
        }
    }

    /// The client settings for the current members (nodes removed by
    /// [`ChaosCluster::replace`] left out, nodes added by it included).
    pub fn client_config(&self) -> Result<ClientConfig, Error> {
        self.client_config_of(&self.ids)
    }

    /// The client settings for the nodes `ids`.
    fn client_config_of(&self, ids: &[NodeId]) -> Result<ClientConfig, Error> {
        match &self.nodes {
            Nodes::Local { cluster, .. } => {
                let mut config = cluster.client_config();
                config.endpoints = cluster
                    .nodes()
                    .iter()
                    .filter(|n| ids.contains(&n.id))
                    .map(|n| n.endpoint())
                    .collect();
                Ok(config)
            }
            Nodes::Attached { spec, .. } => spec.client_config(ids).map_err(Error::Invalid),
        }
    }

    /// An SDK client over every current member's client API.
    pub fn client(&self) -> Result<Client, Error> {
        Client::new(self.client_config()?).map_err(|e| Error::Invalid(e.to_string()))
    }

    /// An SDK client pinned to node `id`.
    pub fn client_of(&self, id: NodeId) -> Result<Client, Error> {
        match &self.nodes {
            Nodes::Local { cluster, .. } => Ok(cluster.client_of(id)?),
            Nodes::Attached { spec, .. } => {
                let config = spec.client_config(&[id]).map_err(Error::Invalid)?;
                if config.endpoints.is_empty() {
                    return Err(Error::Invalid(format!("no node {id}")));
                }
                Client::new(config).map_err(|e| Error::Invalid(e.to_string()))
            }
        }
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
        match &mut self.nodes {
            Nodes::Local { cluster, .. } => cluster.is_running(id),
            Nodes::Attached { spec, .. } => blocking(|| spec.is_running(id)),
        }
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

    /// Sends `signal` to a local node's process, or runs the attach file's command for
    /// it (SIGSTOP: `pause`, SIGCONT: `resume`).
    fn signal(&self, id: NodeId, signal: Signal) -> Result<(), Error> {
        let local = match &self.nodes {
            Nodes::Local { cluster, .. } => cluster,
            Nodes::Attached { spec, .. } => {
                let action = match signal {
                    Signal::SIGSTOP => "pause",
                    Signal::SIGCONT => "resume",
                    other => return Err(Error::Invalid(format!("no command sends {other}"))),
                };
                return blocking(|| spec.act(action, id)).map_err(Error::Invalid);
            }
        };
        let pid = local
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
        match &mut self.nodes {
            Nodes::Local { cluster, .. } => cluster.kill(id)?,
            Nodes::Attached { spec, .. } => blocking(|| {
                spec.act("kill", id).map_err(Error::Invalid)?;
                wait_stopped(spec, id)
            })?,
        }
        self.paused.remove(&id);
        self.down.insert(id);
        Ok(())
    }

    /// Stops node `id` with SIGTERM, or `kill -9` after `grace`. Returns whether the node
    /// stopped by itself (an attached node's own `stop` command decides how it stops).
    pub fn stop(&mut self, id: NodeId, grace: Duration) -> Result<bool, Error> {
        self.check_id(id)?;
        if self.paused.contains(&id) {
            self.resume(id)?;
        }
        let by_itself = match &mut self.nodes {
            Nodes::Local { cluster, .. } => blocking(|| cluster.stop(id, grace))?.is_some(),
            Nodes::Attached { spec, .. } => blocking(|| {
                spec.act("stop", id).map_err(Error::Invalid)?;
                wait_stopped(spec, id)
            })
            .map(|()| true)?,
        };
        self.down.insert(id);
        Ok(by_itself)
    }

    /// Starts node `id`, which must not be running, on its existing data.
    pub fn start_node(&mut self, id: NodeId) -> Result<(), Error> {
        self.check_id(id)?;
        match &mut self.nodes {
            Nodes::Local { cluster, .. } => cluster.start(id)?,
            Nodes::Attached { spec, .. } => blocking(|| {
                spec.act("start", id).map_err(Error::Invalid)?;
                wait_started(spec, id)
            })?,
        }
        self.down.remove(&id);
        Ok(())
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

    /// Replaces node `old` the way an operator replaces a failed machine: the node is
    /// removed from the membership (leadership moved away first if it leads), killed and
    /// its data directory wiped; a new node with a fresh id and an empty data directory,
    /// behind a proxy of its own, is started and added, and is ready once it holds the
    /// domain key and answers. Returns the new node's id. On an error the cluster may be
    /// left one node short.
    pub async fn replace(&mut self, old: NodeId, timeout: Duration) -> Result<NodeId, Error> {
        self.check_id(old)?;
        self.local_mut("replacing a node")?;
        let until = Instant::now() + timeout;
        let others: Vec<NodeId> = self.ids.iter().copied().filter(|id| *id != old).collect();
        let Some(&heir) = others.first() else {
            return Err(Error::Invalid("the last node cannot be replaced".into()));
        };
        let client = Client::new(self.client_config_of(&others)?)
            .map_err(|e| Error::Invalid(e.to_string()))?;

        if self.leader(Duration::from_secs(10)).await.ok() == Some(old) {
            retry_until(until, "moving leadership away", || {
                client.transfer_leader(heir)
            })
            .await?;
        }
        // A removal that went through without its answer reaching us shows in the
        // membership (and a retry of it is NotFound).
        retry_until(until, &format!("removing node {old}"), || async {
            let call = tokio::time::timeout(Duration::from_secs(30), client.remove_node(old));
            match call.await {
                Ok(Err(e)) if e.code() == Some(ErrorCode::NotFound) => Ok(()),
                Ok(other) => other.map(|_| ()),
                Err(_) => match client.cluster_status().await {
                    Ok(s) if s.members.iter().all(|m| m.id != old) => Ok(()),
                    _ => Err(keyraft_client::Error::Transport(
                        "no answer in 30 s".to_string(),
                    )),
                },
            }
        })
        .await?;
        if self.is_running(old) {
            self.kill(old)?;
        }
        self.ids.retain(|id| *id != old);
        self.paused.remove(&old);
        self.down.remove(&old);
        // The successor gets a data filesystem of the same size.
        let data_fs_bytes = self.disks.remove(&old).map(|fs| fs.bytes());
        let data = self.data_dir(old);
        match fs::remove_dir_all(&data) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::Io {
                    context: format!("wiping {}", data.display()),
                    source: e,
                })
            }
            _ => {}
        }

        let new = self
            .local_mut("replacing a node")?
            .nodes()
            .iter()
            .map(|n| n.id)
            .max()
            .unwrap_or(0)
            + 1;
        let dir = self.dir().to_path_buf();
        let layout = Layout::load_or_create(&dir, &[new])?;
        let port = layout
            .proxy_ports
            .get(&new)
            .copied()
            .ok_or_else(|| Error::Invalid(format!("no proxy port for node {new}")))?;
        let listen = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        self.advertised
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(new, listen.to_string());
        let spec = self.local_mut("replacing a node")?.add_node_spec(new)?;
        let proxy = self
            .network()?
            .add_proxy(proxy_for(&spec, port)?)
            .await
            .map_err(|source| Error::Io {
                context: format!("starting node {new}'s proxy"),
                source,
            })?;
        if let Some(bytes) = data_fs_bytes {
            let image = dir.join(format!("node{new}.img"));
            let fs =
                LimitedFs::mount(&self.data_dir(new), &image, bytes).map_err(Error::Invalid)?;
            self.disks.insert(new, fs);
        }
        self.local_mut("replacing a node")?.start(new)?;
        let advertised = proxy.listen.to_string();
        // AddNode answers once the new node has caught up as a learner and is a voter,
        // which under load can take long; an add that went through without its answer
        // reaching us shows in the membership.
        let added = retry_until(until, &format!("adding node {new}"), || async {
            match client.add_node(new, &spec.endpoint(), &advertised).await {
                Err(e) if e.code() == Some(ErrorCode::AlreadyExists) => Ok(()),
                other => other.map(|_| ()),
            }
        })
        .await;
        if let Err(e) = added {
            let status =
                tokio::time::timeout(Duration::from_secs(10), client.cluster_status()).await;
            let member = matches!(&status, Ok(Ok(s)) if s.members.iter().any(|m| m.id == new));
            if !member {
                // Leave no half-joined node behind to confuse what follows.
                let _ = self.local_mut("replacing a node")?.kill(new);
                return Err(e);
            }
        }
        self.ids.push(new);
        self.wait_ready(until.saturating_duration_since(Instant::now()))
            .await?;
        Ok(new)
    }

    /// Nodes removed for good by [`ChaosCluster::replace`].
    pub fn retired(&self) -> Vec<NodeId> {
        let Some(local) = self.local() else {
            return Vec::new();
        };
        local
            .nodes()
            .iter()
            .map(|n| n.id)
            .filter(|id| !self.ids.contains(id))
            .collect()
    }

    /// Fills node `id`'s data filesystem until it refuses more; returns the ballast's
    /// size. The cluster must have been started with [`ClusterOptions::data_fs_bytes`].
    pub fn fill_disk(&self, id: NodeId) -> Result<u64, Error> {
        self.disk(id)?.fill().map_err(Error::Invalid)
    }

    /// Gives node `id`'s data filesystem its room back.
    pub fn unfill_disk(&self, id: NodeId) -> Result<(), Error> {
        self.disk(id)?.unfill().map_err(Error::Invalid)
    }

    fn disk(&self, id: NodeId) -> Result<&LimitedFs, Error> {
        self.check_id(id)?;
        self.disks.get(&id).ok_or_else(|| {
            Error::Invalid(format!(
                "node {id}'s data directory has no size-limited filesystem (set the \
                 cluster's disk size)"
            ))
        })
    }

    /// Heals everything: every link passes, full disks get their room back, paused nodes
    /// resume, and nodes that are not running (killed, stopped or crashed) start again.
    /// Returns the first error after trying everything.
    pub fn heal_all(&mut self) -> Result<(), Error> {
        if let Ok(network) = self.network() {
            network.heal();
        }
        let mut first = None;
        for disk in self.disks.values() {
            if let Err(e) = disk.unfill() {
                first.get_or_insert(Error::Invalid(e));
            }
        }
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
        let local = match &mut self.nodes {
            Nodes::Local { cluster, .. } => cluster,
            Nodes::Attached { .. } => return self.wait_attached_ready(timeout).await,
        };
        match local.wait_ready(&ids, timeout).await {
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

    /// [`ChaosCluster::wait_ready`] for an attached cluster: the same conditions, read
    /// from the members' cluster status.
    async fn wait_attached_ready(&self, timeout: Duration) -> Result<(), Error> {
        let client = self.client()?;
        let until = Instant::now() + timeout;
        loop {
            let status = tokio::time::timeout_at(until, client.cluster_status()).await;
            let last = match status {
                Ok(Ok(s)) => {
                    let missing: Vec<NodeId> = self
                        .ids
                        .iter()
                        .copied()
                        .filter(|id| {
                            !s.members
                                .iter()
                                .any(|m| m.id == *id && m.reachable && m.has_domain_key)
                        })
                        .collect();
                    if s.leader != 0 && missing.is_empty() {
                        let listed = tokio::time::timeout_at(until, client.list_keys(1, "")).await;
                        match listed {
                            Ok(Ok(_)) => return Ok(()),
                            Ok(Err(e)) => format!("listing keys: {e}"),
                            Err(_) => "listing keys: no answer".into(),
                        }
                    } else {
                        format!(
                            "leader {}; not reachable with the domain key: {missing:?}",
                            s.leader
                        )
                    }
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "no answer".into(),
            };
            if Instant::now() >= until {
                return Err(Error::Timeout(format!(
                    "attached cluster not ready: {last}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
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
            let started = match &self.nodes {
                Nodes::Local { cluster, .. } => cluster.pid(*id).is_some(),
                // Asking is how to find out; a node that is down does not answer.
                Nodes::Attached { .. } => !self.down.contains(id),
            };
            if !started || self.paused.contains(id) {
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

/// Node `spec`'s proxy: listens on `port` of `127.0.0.1`, forwards to the node's
/// node-to-node listener on its own loopback address.
fn proxy_for(spec: &NodeSpec, port: u16) -> Result<Proxy, Error> {
    let ip = node_ip(spec.id)
        .ok_or_else(|| Error::Invalid(format!("node id {} is too large for a proxy", spec.id)))?;
    Ok(Proxy {
        node: spec.id,
        listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
        upstream: SocketAddr::new(IpAddr::V4(ip), spec.raft_port),
    })
}

/// Runs `f`, which may block for seconds (a node command, a process to reap), without
/// holding up the runtime's other tasks (the proxies, the workload): needs the
/// multi-threaded runtime this module asks for.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Waits until an attached node no longer counts as running (after `kill` or `stop`).
fn wait_stopped(spec: &AttachSpec, id: NodeId) -> Result<(), Error> {
    wait_attached(spec, id, false)
}

/// Waits until an attached node counts as running (after `start`). Until then a check for
/// nodes that are not running would take it for crashed and start it a second time; the
/// second process fails on the first one's data, but its pid replaces the first one's in
/// whatever the commands use to find it, so the first could no longer be stopped.
fn wait_started(spec: &AttachSpec, id: NodeId) -> Result<(), Error> {
    wait_attached(spec, id, true)
}

fn wait_attached(spec: &AttachSpec, id: NodeId, running: bool) -> Result<(), Error> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while spec.is_running(id) != running {
        if std::time::Instant::now() >= deadline {
            let what = if running {
                "does not count as running 30 s after it was started"
            } else {
                "still counts as running 30 s after it was stopped"
            };
            return Err(Error::Timeout(format!("node {id} {what}")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Calls `call` until it succeeds or `until` passes (the SDK retries what it can; this
/// covers elections and a membership change still in progress).
async fn retry_until<T, F, Fut>(until: Instant, what: &str, mut call: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, keyraft_client::Error>>,
{
    loop {
        let error = match tokio::time::timeout_at(until, call()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer".to_string(),
        };
        if Instant::now() + Duration::from_millis(250) >= until {
            return Err(Error::Timeout(format!("{what}: {error}")));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
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
