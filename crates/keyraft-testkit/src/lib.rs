//! # A local Keyraft cluster of real processes
//!
//! [`LocalCluster`] lays out N nodes on 127.0.0.1 — a data directory, a config file and
//! two ports each — and runs each node as its own `keyraft server` process, so that tests
//! (and `keyraft dev`, which is built on it) exercise exactly what operators run,
//! including `kill -9`.
//!
//! The layout of a cluster directory:
//!
//! ```text
//! <dir>/cluster.json     ports, secrets and the admin credential (development only)
//! <dir>/cluster.env      KEYRAFT_ENDPOINTS, KEYRAFT_REGION, KEYRAFT_ACCESS_KEY_ID, ...
//! <dir>/node<N>.toml     node N's configuration (dev_mode = true)
//! <dir>/node<N>/         node N's data directory
//! <dir>/node<N>.log      node N's log
//! ```
//!
//! A second `prepare` of the same directory reuses `cluster.json`, so the cluster starts
//! again on its existing data. Every process a `LocalCluster` started is killed when it
//! is dropped.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::collections::BTreeSet;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::Rng;
use serde::{Deserialize, Serialize};

use keyraft_client::{Client, ClientConfig};
use keyraft_server::config::{BootstrapConfig, Config, MemberConfig};

/// The default account of a local cluster.
pub const DEV_ACCOUNT: &str = "111122223333";

/// What can go wrong with a local cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// The cluster did not reach the expected state in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Invalid input.
    #[error("{0}")]
    Invalid(String),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// One node's fixed facts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeSpec {
    /// Node id.
    pub id: u64,
    /// Client API port.
    pub api_port: u16,
    /// Node-to-node port.
    pub raft_port: u16,
    /// The node's sealing secret.
    pub sealing_secret: String,
}

impl NodeSpec {
    /// The client API URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// The node-to-node address.
    pub fn raft_addr(&self) -> String {
        format!("127.0.0.1:{}", self.raft_port)
    }
}

/// What `cluster.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterFile {
    /// The region.
    pub region: String,
    /// The cluster secret.
    pub cluster_secret: String,
    /// The administrator's access key id.
    pub access_key_id: String,
    /// The administrator's secret.
    pub secret_access_key: String,
    /// The initial members (node 1 bootstraps).
    pub members: Vec<NodeSpec>,
    /// Nodes added later with `add_node`.
    #[serde(default)]
    pub added: Vec<NodeSpec>,
}

/// A change applied to every node's configuration (see [`LocalCluster::configure`]).
pub type ConfigAdjust = Box<dyn Fn(&mut Config) + Send + Sync>;

/// A local cluster of `keyraft server` processes.
pub struct LocalCluster {
    dir: PathBuf,
    binary: PathBuf,
    file: ClusterFile,
    children: Vec<(u64, Child)>,
    /// Extra environment for node processes (e.g. `RUST_LOG`).
    pub node_env: Vec<(String, String)>,
    adjust: Option<ConfigAdjust>,
}

/// Runtime threads for each of `nodes` nodes on this host: its share of the cores, at
/// least one (the trade-off is at `Config::worker_threads`).
fn share_of_cores(nodes: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / nodes.max(1)).max(1)
}

fn random_secret() -> String {
    hex::encode(rand::thread_rng().gen::<[u8; 32]>())
}

/// Ports this process has handed out, so no two nodes are given the same one, and where
/// it looks next.
static HANDED_OUT: Mutex<HandedOut> = Mutex::new(HandedOut {
    ports: BTreeSet::new(),
    next: None,
});

struct HandedOut {
    ports: BTreeSet<u16>,
    /// The offset (from [`LOWEST_PORT`]) the next search starts at; `None` before the
    /// first.
    next: Option<u32>,
}

/// The lowest port [`free_port`] hands out.
const LOWEST_PORT: u16 = 10_000;

/// How far apart, in ports, the searches of processes with consecutive ids start.
const PROCESS_STRIDE: u32 = 613;

/// A port that is free right now and that nothing but a `bind` will take.
///
/// A port the kernel picks for `127.0.0.1:0` comes from its ephemeral range, the range
/// every outgoing connection also takes its local port from: between picking the port and
/// the node binding it, any client connecting anywhere may get it, and the node then
/// fails to start. So the port is chosen below that range and checked free by binding it.
/// Only where the ephemeral range leaves no room below it does this fall back to asking
/// the kernel.
///
/// A port checked free stays free only until some process binds it, and processes that
/// start clusters at the same moment (the tests of one binary, each running `keyraft
/// dev`) could check the same port free before either bound it: one of their nodes then
/// failed to start. So each process searches upwards from a start of its own, taken from
/// its process id: processes started one after another have nearby ids, and their
/// searches start 613 ports apart.
pub fn free_port() -> Result<u16, Error> {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    let below = ephemeral_range_start();
    if below > LOWEST_PORT + 1_000 {
        let span = u32::from(below - LOWEST_PORT);
        let start = *handed_out
            .next
            .get_or_insert_with(|| std::process::id().wrapping_mul(PROCESS_STRIDE) % span);
        for i in 0..span {
            let offset = (start + i) % span;
            // `offset < span <= u16::MAX - LOWEST_PORT`: the sum fits.
            let port = LOWEST_PORT + offset as u16;
            if !handed_out.ports.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
                handed_out.ports.insert(port);
                handed_out.next = Some((offset + 1) % span);
                return Ok(port);
            }
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").map_err(io("binding a free port"))?;
    let port = l.local_addr().map_err(io("reading a port"))?.port();
    handed_out.ports.insert(port);
    Ok(port)
}

/// The first port of the kernel's ephemeral range (Linux's default when it cannot be read).
fn ephemeral_range_start() -> u16 {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

impl LocalCluster {
    /// Lays out (or reuses) a cluster in `dir`. `base_port` 0 picks free ports; otherwise
    /// node N listens on `base_port + N` (API) and `base_port + 100 + N` (Raft).
    pub fn prepare(
        dir: &Path,
        binary: &Path,
        nodes: usize,
        base_port: u16,
        region: &str,
    ) -> Result<LocalCluster, Error> {
        fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let state = dir.join("cluster.json");
        let file = if state.exists() {
            let text = fs::read_to_string(&state).map_err(io("reading cluster.json"))?;
            let file: ClusterFile = serde_json::from_str(&text)
                .map_err(|e| Error::Invalid(format!("{}: {e}", state.display())))?;
            if file.region != region {
                return Err(Error::Invalid(format!(
                    "{} holds a cluster of region {}, not {region}",
                    dir.display(),
                    file.region
                )));
            }
            file
        } else {
            if nodes == 0 {
                return Err(Error::Invalid("a cluster needs at least one node".into()));
            }
            let mut members = Vec::new();
            for id in 1..=nodes as u64 {
                let (api_port, raft_port) = if base_port == 0 {
                    (free_port()?, free_port()?)
                } else {
                    let api = base_port as u64 + id;
                    let raft = base_port as u64 + 100 + id;
                    if raft > u16::MAX as u64 {
                        return Err(Error::Invalid("base port too high".into()));
                    }
                    (api as u16, raft as u16)
                };
                members.push(NodeSpec {
                    id,
                    api_port,
                    raft_port,
                    sealing_secret: random_secret(),
                });
            }
            let (access_key_id, secret_access_key) = keyraft_server::generate_access_key();
            let file = ClusterFile {
                region: region.to_string(),
                cluster_secret: random_secret(),
                access_key_id,
                secret_access_key,
                members,
                added: Vec::new(),
            };
            write_private(
                &state,
                &serde_json::to_vec_pretty(&file).map_err(|e| Error::Invalid(e.to_string()))?,
            )?;
            file
        };
        let cluster = LocalCluster {
            dir: dir.to_path_buf(),
            binary: binary.to_path_buf(),
            file,
            children: Vec::new(),
            node_env: Vec::new(),
            adjust: None,
        };
        for spec in cluster.nodes() {
            cluster.write_config(&spec)?;
        }
        cluster.write_env()?;
        Ok(cluster)
    }

    /// The cluster directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What `cluster.json` holds.
    pub fn file(&self) -> &ClusterFile {
        &self.file
    }

    /// Every node ever laid out (initial and added).
    pub fn nodes(&self) -> Vec<NodeSpec> {
        self.file
            .members
            .iter()
            .chain(&self.file.added)
            .cloned()
            .collect()
    }

    /// A node's spec.
    pub fn node(&self, id: u64) -> Result<NodeSpec, Error> {
        self.nodes()
            .into_iter()
            .find(|n| n.id == id)
            .ok_or_else(|| Error::Invalid(format!("no node {id}")))
    }

    /// A node's data directory.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node{id}"))
    }

    /// A node's configuration file.
    pub fn config_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node{id}.toml"))
    }

    /// Adjusts every node's configuration (e.g. Raft timing or snapshot thresholds in a
    /// test); applies to nodes started afterwards, and to nodes added later.
    pub fn configure(
        &mut self,
        adjust: impl Fn(&mut Config) + Send + Sync + 'static,
    ) -> Result<(), Error> {
        self.adjust = Some(Box::new(adjust));
        for spec in self.nodes() {
            self.write_config(&spec)?;
        }
        Ok(())
    }

    /// Writes a node's configuration; the first initial member bootstraps the region.
    fn write_config(&self, spec: &NodeSpec) -> Result<(), Error> {
        let bootstrap = self.file.members.first().is_some_and(|m| m.id == spec.id);
        let config = Config {
            node_id: spec.id,
            data_dir: self.data_dir(spec.id),
            region: self.file.region.clone(),
            api_addr: format!("127.0.0.1:{}", spec.api_port),
            raft_addr: spec.raft_addr(),
            cluster_secret: self.file.cluster_secret.clone(),
            sealing_secret: spec.sealing_secret.clone(),
            dev_mode: true,
            worker_threads: share_of_cores(self.nodes().len()),
            bootstrap: bootstrap.then(|| BootstrapConfig {
                account: DEV_ACCOUNT.to_string(),
                members: self
                    .file
                    .members
                    .iter()
                    .map(|m| MemberConfig {
                        id: m.id,
                        api_endpoint: m.endpoint(),
                        raft_addr: m.raft_addr(),
                    })
                    .collect(),
                admin_access_key_id: self.file.access_key_id.clone(),
                admin_secret_access_key: self.file.secret_access_key.clone(),
                key_quota: 0,
            }),
            ..Config::default()
        };
        let mut config = config;
        if let Some(adjust) = &self.adjust {
            adjust(&mut config);
        }
        let text = toml::to_string_pretty(&config).map_err(|e| Error::Invalid(e.to_string()))?;
        let header =
            "# Written by keyraft dev / keyraft-testkit. Development only: it holds secrets.\n";
        write_private(
            &self.config_path(spec.id),
            format!("{header}{text}").as_bytes(),
        )
    }

    /// The client settings as `KEY=value` lines.
    pub fn env_lines(&self) -> String {
        let endpoints: Vec<String> = self.nodes().iter().map(NodeSpec::endpoint).collect();
        format!(
            "KEYRAFT_ENDPOINTS={}\nKEYRAFT_REGION={}\nKEYRAFT_ACCESS_KEY_ID={}\nKEYRAFT_SECRET_ACCESS_KEY={}\n",
            endpoints.join(","),
            self.file.region,
            self.file.access_key_id,
            self.file.secret_access_key
        )
    }

    fn write_env(&self) -> Result<(), Error> {
        write_private(&self.dir.join("cluster.env"), self.env_lines().as_bytes())
    }

    /// Client settings for this cluster.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig {
            endpoints: self.nodes().iter().map(NodeSpec::endpoint).collect(),
            region: self.file.region.clone(),
            access_key_id: self.file.access_key_id.clone(),
            secret_access_key: self.file.secret_access_key.clone(),
            timeout: Duration::from_secs(30),
            user_agent: "keyraft-testkit".into(),
        }
    }

    /// A client of this cluster.
    pub fn client(&self) -> Result<Client, Error> {
        Client::new(self.client_config()).map_err(|e| Error::Invalid(e.to_string()))
    }

    /// A client that talks to one node only.
    pub fn client_of(&self, id: u64) -> Result<Client, Error> {
        let mut c = self.client_config();
        c.endpoints = vec![self.node(id)?.endpoint()];
        Client::new(c).map_err(|e| Error::Invalid(e.to_string()))
    }

    /// Starts every node that is not running.
    pub fn start_all(&mut self) -> Result<(), Error> {
        for spec in self.nodes() {
            if !self.is_running(spec.id) {
                self.start(spec.id)?;
            }
        }
        Ok(())
    }

    /// Starts node `id` as a child process.
    pub fn start(&mut self, id: u64) -> Result<(), Error> {
        self.reap();
        if self.children.iter().any(|(n, _)| *n == id) {
            return Err(Error::Invalid(format!("node {id} is already running")));
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node{id}.log")))
            .map_err(io("opening the node log"))?;
        let log2 = log.try_clone().map_err(io("opening the node log"))?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("server")
            .arg("--config")
            .arg(self.config_path(id))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        for (k, v) in &self.node_env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .map_err(io(format!("starting {}", self.binary.display())))?;
        self.children.push((id, child));
        Ok(())
    }

    /// The process id of a running node.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.children
            .iter()
            .find(|(n, _)| *n == id)
            .map(|(_, c)| c.id())
    }

    /// Whether node `id` is running (as a child of this cluster).
    pub fn is_running(&mut self, id: u64) -> bool {
        self.reap();
        self.children.iter().any(|(n, _)| *n == id)
    }

    /// Forgets children that exited; returns their ids and exit descriptions.
    pub fn reap(&mut self) -> Vec<(u64, String)> {
        let mut gone = Vec::new();
        self.children
            .retain_mut(|(id, child)| match child.try_wait() {
                Ok(Some(status)) => {
                    gone.push((*id, status.to_string()));
                    false
                }
                _ => true,
            });
        gone
    }

    fn take_child(&mut self, id: u64) -> Result<Child, Error> {
        let pos = self
            .children
            .iter()
            .position(|(n, _)| *n == id)
            .ok_or_else(|| Error::Invalid(format!("node {id} is not running")))?;
        Ok(self.children.remove(pos).1)
    }

    /// `kill -9` node `id` and wait for it to be gone.
    pub fn kill(&mut self, id: u64) -> Result<(), Error> {
        let mut child = self.take_child(id)?;
        child.kill().map_err(io("killing a node"))?;
        child.wait().map_err(io("waiting for a killed node"))?;
        Ok(())
    }

    /// Stops node `id` gracefully (SIGTERM), or kills it after `grace`. Returns how the
    /// node exited if it stopped by itself within `grace`, `None` if it had to be killed.
    pub fn stop(&mut self, id: u64, grace: Duration) -> Result<Option<ExitStatus>, Error> {
        let mut child = self.take_child(id)?;
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Ok(Some(status));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Ok(None)
    }

    /// Stops every node.
    pub fn stop_all(&mut self, grace: Duration) {
        let ids: Vec<u64> = self.children.iter().map(|(id, _)| *id).collect();
        for id in ids {
            let _ = self.stop(id, grace);
        }
    }

    /// Lays out a new node (not yet a member; see `keyraft cluster add-node`).
    pub fn add_node_spec(&mut self, id: u64) -> Result<NodeSpec, Error> {
        if self.nodes().iter().any(|n| n.id == id) {
            return Err(Error::Invalid(format!("node {id} exists already")));
        }
        let spec = NodeSpec {
            id,
            api_port: free_port()?,
            raft_port: free_port()?,
            sealing_secret: random_secret(),
        };
        self.file.added.push(spec.clone());
        write_private(
            &self.dir.join("cluster.json"),
            &serde_json::to_vec_pretty(&self.file).map_err(|e| Error::Invalid(e.to_string()))?,
        )?;
        self.write_config(&spec)?;
        self.write_env()?;
        Ok(spec)
    }

    /// The last `lines` lines of node `id`'s log (for error messages: the temp dir that
    /// holds the log is usually gone by the time anyone reads a failed test's output).
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let path = self.dir.join(format!("node{id}.log"));
        match fs::read_to_string(&path) {
            Ok(text) => {
                let all: Vec<&str> = text.lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Err(e) => format!("({} cannot be read: {e})", path.display()),
        }
    }

    /// Waits until the cluster has a leader, every listed member answers and holds the
    /// domain key, and the region is bootstrapped (a key can be listed). Fails early if
    /// a listed node's process exits (a port in use, a bad config: see its log).
    pub async fn wait_ready(&mut self, members: &[u64], timeout: Duration) -> Result<(), Error> {
        let client = self.client()?;
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some((id, status)) = self.reap().into_iter().find(|(id, _)| members.contains(id))
            {
                return Err(Error::Invalid(format!(
                    "node {id} exited ({status}); the end of its log:\n{}",
                    self.log_tail(id, 20)
                )));
            }
            match client.cluster_status().await {
                Ok(s) => {
                    let ready = s.leader != 0
                        && members.iter().all(|id| {
                            s.members
                                .iter()
                                .any(|m| m.id == *id && m.reachable && m.has_domain_key)
                        });
                    if ready && client.list_keys(1, "").await.is_ok() {
                        return Ok(());
                    }
                    last = format!("{s:?}");
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Error::Timeout(format!("cluster not ready: {last}")))
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("writing {}", path.display())))?;
    f.write_all(bytes)
        .map_err(io(format!("writing {}", path.display())))?;
    f.sync_all()
        .map_err(io(format!("syncing {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let below = ephemeral_range_start();
        let ports: Vec<u16> = (0..20).map(|_| free_port().unwrap()).collect();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        for port in ports {
            if below > LOWEST_PORT + 1_000 {
                assert!((LOWEST_PORT..below).contains(&port), "{port}");
            }
            TcpListener::bind(("127.0.0.1", port)).unwrap();
        }
    }
}
