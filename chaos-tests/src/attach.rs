//! # Attaching to a cluster that runs elsewhere
//!
//! An SRE's cluster is not started by this harness: its nodes run under systemd, in
//! containers or on other machines. `keyraft-chaos run FILE --attach CLUSTER.toml` runs
//! the experiment against such a cluster. The file names each node's client endpoint and,
//! for each process fault the experiment may use, a shell command that acts on a node:
//!
//! ```toml
//! region = "eu-1"                       # optional: refuse a cluster of another region
//!
//! [[nodes]]
//! id = 1
//! endpoint = "https://kms-1.internal:7101"
//! # … one [[nodes]] table per member
//!
//! [commands]                            # each is run with `sh -c`; all are optional
//! kill   = "ssh {host} sudo systemctl kill --signal=KILL keyraft"
//! stop   = "ssh {host} sudo systemctl stop keyraft"
//! start  = "ssh {host} sudo systemctl start keyraft"
//! pause  = "ssh {host} sudo systemctl kill --signal=STOP keyraft"
//! resume = "ssh {host} sudo systemctl kill --signal=CONT keyraft"
//! status = "ssh {host} systemctl is-active --quiet keyraft"   # exit 0: running
//! ```
//!
//! In a command, `{id}` is the node's id, `{endpoint}` its client endpoint and `{host}`
//! the endpoint's host; the same values are in the environment as `KEYRAFT_NODE_ID`,
//! `KEYRAFT_NODE_ENDPOINT` and `KEYRAFT_NODE_HOST`. A command must finish within
//! [`COMMAND_TIMEOUT`] (start a node in the background, as `systemctl start` does).
//! Without `status`, a node counts as running while its endpoint accepts TCP
//! connections (a paused process still does).
//!
//! Credentials come from the environment or the credentials profile, as for every SDK
//! client (`KEYRAFT_ACCESS_KEY_ID`, `KEYRAFT_SECRET_ACCESS_KEY`, `KEYRAFT_PROFILE`), or
//! from the profile the file names (`profile = "prod"`, optionally with
//! `credentials_file = "…"`; the secret stays in the credentials file); the
//! principal must be a region administrator of the cluster (fail points, clock offsets,
//! quotas and membership are administrator calls).
//!
//! What an attached run cannot do, it refuses, so that the coverage checker reports
//! `unknown` instead of a pass without the fault: network faults (the harness's proxies
//! sit only between nodes it started), a full disk, and replacing a node. Fail points
//! need a cluster built with the `failpoints` feature; clock offsets need dev mode.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use keyraft_client::ClientConfig;

use crate::net::NodeId;

/// How long a node command may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The `--attach` file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachSpec {
    /// The region the cluster serves (empty: any).
    #[serde(default)]
    pub region: String,
    /// The credentials profile to use (default: `KEYRAFT_PROFILE`, then `default`, after
    /// the environment's access key).
    #[serde(default)]
    pub profile: Option<String>,
    /// The credentials file holding that profile (default:
    /// `KEYRAFT_SHARED_CREDENTIALS_FILE`, then `~/.keyraft/credentials`).
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// The members.
    pub nodes: Vec<AttachedNode>,
    /// How to act on a node.
    #[serde(default)]
    pub commands: Commands,
}

/// One member of an attached cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachedNode {
    /// Its Raft node id.
    pub id: NodeId,
    /// Its client API URL.
    pub endpoint: String,
}

/// Shell commands that act on one node (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Commands {
    /// Kill the node's process at once (SIGKILL).
    pub kill: Option<String>,
    /// Stop the node gracefully.
    pub stop: Option<String>,
    /// Start the node (returning once it is started, not when it ends).
    pub start: Option<String>,
    /// Freeze the node's process (SIGSTOP).
    pub pause: Option<String>,
    /// Let a frozen process run again (SIGCONT).
    pub resume: Option<String>,
    /// Exit 0 if the node's process is running (paused counts as running).
    pub status: Option<String>,
}

impl AttachSpec {
    /// Reads and checks an attach file.
    pub fn load(path: &Path) -> Result<AttachSpec, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        AttachSpec::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses and checks an attach file's text.
    pub fn parse(text: &str) -> Result<AttachSpec, String> {
        let spec: AttachSpec = toml::from_str(text).map_err(|e| e.to_string())?;
        if spec.nodes.len() < 3 {
            return Err(format!(
                "{} node(s) listed; an attached cluster needs 3 or more",
                spec.nodes.len()
            ));
        }
        let mut seen = BTreeMap::new();
        for node in &spec.nodes {
            if node.id == 0 {
                return Err("node id 0 is not a Raft node id".into());
            }
            if seen.insert(node.id, ()).is_some() {
                return Err(format!("node {} is listed twice", node.id));
            }
            if host_port(&node.endpoint).is_none() {
                return Err(format!(
                    "node {}'s endpoint {:?} is not a URL with a host and port",
                    node.id, node.endpoint
                ));
            }
        }
        Ok(spec)
    }

    /// The members' ids.
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    fn node(&self, id: NodeId) -> Result<&AttachedNode, String> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .ok_or_else(|| format!("no node {id} in the attach file"))
    }

    /// SDK settings for the given members: their endpoints, the file's region, and
    /// credentials from the environment or the credentials profile.
    pub fn client_config(&self, ids: &[NodeId]) -> Result<ClientConfig, String> {
        let endpoints: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| ids.contains(&n.id))
            .map(|n| n.endpoint.clone())
            .collect();
        let mut builder = ClientConfig::builder()
            .endpoints(endpoints)
            .region(self.region.clone())
            .user_agent("keyraft-chaos");
        if let Some(profile) = &self.profile {
            builder = builder.profile(profile.clone());
        }
        if let Some(file) = &self.credentials_file {
            builder = builder.credentials_file(file.clone());
        }
        builder
            .build()
            .map_err(|e| format!("the attached cluster's client settings: {e}"))
    }

    /// Whether node `id` runs: its `status` command exits 0, or (without one) its
    /// endpoint accepts a TCP connection within a second.
    pub fn is_running(&self, id: NodeId) -> bool {
        let Ok(node) = self.node(id) else {
            return false;
        };
        if let Some(status) = &self.commands.status {
            return self.run_command("status", status, node).is_ok();
        }
        let Some((host, port)) = host_port(&node.endpoint) else {
            return false;
        };
        let Ok(addrs) = (host.as_str(), port).to_socket_addrs() else {
            return false;
        };
        addrs
            .into_iter()
            .any(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok())
    }

    /// Runs the named command (`kill`, `stop`, `start`, `pause`, `resume`) for node
    /// `id`; an error if the file has none or it fails.
    pub fn act(&self, action: &str, id: NodeId) -> Result<(), String> {
        let node = self.node(id)?;
        let command = match action {
            "kill" => &self.commands.kill,
            "stop" => &self.commands.stop,
            "start" => &self.commands.start,
            "pause" => &self.commands.pause,
            "resume" => &self.commands.resume,
            other => return Err(format!("no node action {other:?}")),
        };
        let command = command.as_deref().ok_or_else(|| {
            format!("the attach file has no `{action}` command, so this fault cannot be injected")
        })?;
        self.run_command(action, command, node)
    }

    /// Runs `template` for `node` with `sh -c`; its stderr is the error if it fails.
    fn run_command(&self, action: &str, template: &str, node: &AttachedNode) -> Result<(), String> {
        let host = host_port(&node.endpoint)
            .map(|(h, _)| h)
            .unwrap_or_default();
        let command = template
            .replace("{id}", &node.id.to_string())
            .replace("{endpoint}", &node.endpoint)
            .replace("{host}", &host);
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&command)
            .env("KEYRAFT_NODE_ID", node.id.to_string())
            .env("KEYRAFT_NODE_ENDPOINT", &node.endpoint)
            .env("KEYRAFT_NODE_HOST", &host)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{action} node {}: starting sh: {e}", node.id))?;
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "{action} node {}: `{command}` ran longer than {COMMAND_TIMEOUT:?}",
                        node.id
                    ));
                }
                Err(e) => return Err(format!("{action} node {}: {e}", node.id)),
            }
        };
        if status.success() {
            return Ok(());
        }
        let mut stderr = String::new();
        if let Some(mut err) = child.stderr.take() {
            let _ = err.read_to_string(&mut stderr);
        }
        Err(format!(
            "{action} node {}: `{command}` exited with {status}: {}",
            node.id,
            stderr.trim()
        ))
    }
}

/// The host and port of an `http(s)://host:port[/…]` URL.
fn host_port(url: &str) -> Option<(String, u16)> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let authority = rest.split('/').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
region = "eu-1"
[[nodes]]
id = 1
endpoint = "http://127.0.0.1:7101"
[[nodes]]
id = 2
endpoint = "https://kms-2.internal:7101/"
[[nodes]]
id = 3
endpoint = "http://[::1]:7103"
[commands]
kill = "test {id} = 2 && test {host} = kms-2.internal && test $KEYRAFT_NODE_ID = 2"
start = "echo no such node >&2; exit 3"
"#;

    #[test]
    fn a_file_names_members_and_commands() {
        let spec = AttachSpec::parse(FILE).unwrap();
        assert_eq!(spec.ids(), vec![1, 2, 3]);
        assert_eq!(
            host_port("http://[::1]:7103"),
            Some(("::1".to_string(), 7103))
        );
        assert_eq!(
            host_port("https://kms-2.internal:7101/"),
            Some(("kms-2.internal".to_string(), 7101))
        );
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let two = "[[nodes]]\nid = 1\nendpoint = \"http://a:1\"\n[[nodes]]\nid = 2\nendpoint = \"http://b:1\"\n";
        assert!(AttachSpec::parse(two).unwrap_err().contains("needs 3"));
        let dup = format!("{two}[[nodes]]\nid = 2\nendpoint = \"http://c:1\"\n");
        assert!(AttachSpec::parse(&dup).unwrap_err().contains("twice"));
        let bad = format!("{two}[[nodes]]\nid = 3\nendpoint = \"c:1\"\n");
        assert!(AttachSpec::parse(&bad).unwrap_err().contains("not a URL"));
        let unknown = format!(
            "{two}[[nodes]]\nid = 3\nendpoint = \"http://c:1\"\n[commands]\nreboot = \"x\"\n"
        );
        assert!(AttachSpec::parse(&unknown).is_err());
    }

    #[test]
    fn commands_get_the_node_and_report_failures() {
        let spec = AttachSpec::parse(FILE).unwrap();
        spec.act("kill", 2)
            .expect("the placeholders and environment are filled in");
        assert!(spec.act("kill", 1).is_err());
        let err = spec.act("start", 1).unwrap_err();
        assert!(
            err.contains("no such node") && err.contains("exit status: 3"),
            "{err}"
        );
        let err = spec.act("pause", 1).unwrap_err();
        assert!(err.contains("no `pause` command"), "{err}");
        assert!(spec.act("kill", 9).unwrap_err().contains("no node 9"));
    }
}
