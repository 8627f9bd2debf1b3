//! One documented configuration struct: defaults < TOML file < `KEYRAFT_*` environment <
//! command-line flags (applied by the CLI), validated once by [`Config::validate`].
//!
//! ```toml
//! node_id = 1
//! data_dir = "/var/lib/keyraft/node1"
//! region = "eu-central-1"
//! api_addr = "0.0.0.0:7101"              # client API (KeyService, AdminService)
//! raft_addr = "0.0.0.0:7201"             # node-to-node (Raft, join)
//! advertise_api = "http://10.0.0.1:7101" # what clients and peers are told
//! advertise_raft = "10.0.0.1:7201"
//! # cluster_secret and sealing_secret: better from KEYRAFT_CLUSTER_SECRET and
//! # KEYRAFT_SEALING_SECRET than from this file.
//!
//! [bootstrap]                            # on exactly one node, for the first start
//! account = "111122223333"
//! members = [
//!   { id = 1, api_endpoint = "http://10.0.0.1:7101", raft_addr = "10.0.0.1:7201" },
//!   { id = 2, api_endpoint = "http://10.0.0.2:7101", raft_addr = "10.0.0.2:7201" },
//!   { id = 3, api_endpoint = "http://10.0.0.3:7101", raft_addr = "10.0.0.3:7201" },
//! ]
//!
//! [raft]
//! heartbeat_ms = 100
//! election_timeout_min_ms = 500
//! election_timeout_max_ms = 1000
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use keyraft_types::{AccountId, KmsError, NodeId, Region};

/// A node's configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This node's id: unique in the cluster, never reused.
    pub node_id: NodeId,
    /// Where the node keeps its Raft log, state, snapshots and sealed domain key.
    pub data_dir: PathBuf,
    /// The region this cluster serves (fixed at bootstrap).
    pub region: String,
    /// Listen address of the client API.
    pub api_addr: String,
    /// Listen address of the node-to-node API.
    pub raft_addr: String,
    /// Client API URL announced to peers and clients (default `http://<api_addr>`).
    pub advertise_api: Option<String>,
    /// Node-to-node address announced to peers (default `raft_addr`).
    pub advertise_raft: Option<String>,
    /// Shared by all nodes; authenticates node-to-node calls. At least 16 bytes.
    pub cluster_secret: String,
    /// Seals this node's copy of the domain key on disk. At least 16 bytes. In
    /// production mode it must not come from a file inside `data_dir`.
    pub sealing_secret: String,
    /// Development mode: relaxes the rule that secrets never sit next to the data.
    pub dev_mode: bool,
    /// Set on one node for the first start of a new cluster.
    pub bootstrap: Option<BootstrapConfig>,
    /// Raft timing.
    pub raft: RaftConfig,
    /// Audit group commit.
    pub audit: AuditConfig,
    /// How long a request may wait for Raft before failing with
    /// `DependencyTimeoutException`, in ms.
    pub commit_timeout_ms: u64,
    /// The file the secrets were read from, if any (checked by `validate`).
    #[serde(skip)]
    pub secrets_from_file: Option<PathBuf>,
}

/// First-start parameters of a new cluster.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BootstrapConfig {
    /// The default account (12 digits).
    pub account: String,
    /// The initial members, this node included.
    pub members: Vec<MemberConfig>,
    /// The first administrator's access key id (generated if empty).
    pub admin_access_key_id: String,
    /// The first administrator's secret (generated if empty; then written to
    /// `<data_dir>/admin-credentials.json`, mode 0600).
    pub admin_secret_access_key: String,
    /// Keys per account (0: 1000).
    pub key_quota: u64,
}

/// One initial member.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// Node id.
    pub id: NodeId,
    /// Client API URL.
    pub api_endpoint: String,
    /// Node-to-node address.
    pub raft_addr: String,
}

/// Raft timing (milliseconds) and log compaction.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    /// Leader heartbeat; also the AppendEntries timeout.
    pub heartbeat_ms: u64,
    /// Lower bound of the election timeout.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the election timeout.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many log entries.
    pub snapshot_every_logs: u64,
    /// Log entries kept behind a snapshot for slow followers.
    pub keep_logs_after_snapshot: u64,
}

/// Audit group commit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Most records in one Raft entry.
    pub max_batch: usize,
    /// Most audit entries in flight at once.
    pub max_in_flight: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: 1,
            data_dir: PathBuf::from("./keyraft-data"),
            region: "dev-1".to_string(),
            api_addr: "127.0.0.1:7101".to_string(),
            raft_addr: "127.0.0.1:7201".to_string(),
            advertise_api: None,
            advertise_raft: None,
            cluster_secret: String::new(),
            sealing_secret: String::new(),
            dev_mode: false,
            bootstrap: None,
            raft: RaftConfig::default(),
            audit: AuditConfig::default(),
            commit_timeout_ms: 10_000,
            secrets_from_file: None,
        }
    }
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            heartbeat_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            snapshot_every_logs: 10_000,
            keep_logs_after_snapshot: 1_000,
        }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            max_batch: 512,
            max_in_flight: 8,
        }
    }
}

/// The environment variables `apply_env` reads, with the field each sets.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("KEYRAFT_NODE_ID", "node_id"),
    ("KEYRAFT_DATA_DIR", "data_dir"),
    ("KEYRAFT_REGION", "region"),
    ("KEYRAFT_API_ADDR", "api_addr"),
    ("KEYRAFT_RAFT_ADDR", "raft_addr"),
    ("KEYRAFT_ADVERTISE_API", "advertise_api"),
    ("KEYRAFT_ADVERTISE_RAFT", "advertise_raft"),
    ("KEYRAFT_CLUSTER_SECRET", "cluster_secret"),
    ("KEYRAFT_SEALING_SECRET", "sealing_secret"),
    ("KEYRAFT_DEV_MODE", "dev_mode"),
    ("KEYRAFT_COMMIT_TIMEOUT_MS", "commit_timeout_ms"),
    (
        "KEYRAFT_BOOTSTRAP_ADMIN_ACCESS_KEY_ID",
        "bootstrap.admin_access_key_id",
    ),
    (
        "KEYRAFT_BOOTSTRAP_ADMIN_SECRET_ACCESS_KEY",
        "bootstrap.admin_secret_access_key",
    ),
];

impl Config {
    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &Path) -> Result<Config, KmsError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            KmsError::validation(format!("cannot read config {}: {e}", path.display()))
        })?;
        let mut config: Config = toml::from_str(&text)
            .map_err(|e| KmsError::validation(format!("config {}: {e}", path.display())))?;
        config.secrets_from_file = Some(path.to_path_buf())
            .filter(|_| !config.cluster_secret.is_empty() || !config.sealing_secret.is_empty());
        Ok(config)
    }

    /// Overrides fields from `KEYRAFT_*` variables (see [`ENV_VARS`]).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), KmsError> {
        let parse_u64 = |name: &str, v: String| {
            v.parse::<u64>()
                .map_err(|_| KmsError::validation(format!("{name} must be a number, not '{v}'")))
        };
        if let Some(v) = get("KEYRAFT_NODE_ID") {
            self.node_id = parse_u64("KEYRAFT_NODE_ID", v)?;
        }
        if let Some(v) = get("KEYRAFT_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = get("KEYRAFT_REGION") {
            self.region = v;
        }
        if let Some(v) = get("KEYRAFT_API_ADDR") {
            self.api_addr = v;
        }
        if let Some(v) = get("KEYRAFT_RAFT_ADDR") {
            self.raft_addr = v;
        }
        if let Some(v) = get("KEYRAFT_ADVERTISE_API") {
            self.advertise_api = Some(v);
        }
        if let Some(v) = get("KEYRAFT_ADVERTISE_RAFT") {
            self.advertise_raft = Some(v);
        }
        if let Some(v) = get("KEYRAFT_CLUSTER_SECRET") {
            self.cluster_secret = v;
        }
        if let Some(v) = get("KEYRAFT_SEALING_SECRET") {
            self.sealing_secret = v;
        }
        if let Some(v) = get("KEYRAFT_DEV_MODE") {
            self.dev_mode = matches!(v.as_str(), "1" | "true" | "yes");
        }
        if let Some(v) = get("KEYRAFT_COMMIT_TIMEOUT_MS") {
            self.commit_timeout_ms = parse_u64("KEYRAFT_COMMIT_TIMEOUT_MS", v)?;
        }
        if let Some(b) = self.bootstrap.as_mut() {
            if let Some(v) = get("KEYRAFT_BOOTSTRAP_ADMIN_ACCESS_KEY_ID") {
                b.admin_access_key_id = v;
            }
            if let Some(v) = get("KEYRAFT_BOOTSTRAP_ADMIN_SECRET_ACCESS_KEY") {
                b.admin_secret_access_key = v;
            }
        }
        Ok(())
    }

    /// Checks everything once, before anything starts.
    pub fn validate(&self) -> Result<(), KmsError> {
        if self.node_id == 0 {
            return Err(KmsError::validation("node_id must be at least 1"));
        }
        Region::parse(&self.region)?;
        if self.cluster_secret.len() < 16 {
            return Err(KmsError::validation(
                "cluster_secret (KEYRAFT_CLUSTER_SECRET) must be at least 16 bytes",
            ));
        }
        if self.sealing_secret.len() < 16 {
            return Err(KmsError::validation(
                "sealing_secret (KEYRAFT_SEALING_SECRET) must be at least 16 bytes",
            ));
        }
        if let Some(file) = &self.secrets_from_file {
            if !self.dev_mode {
                let data = absolute(&self.data_dir);
                if absolute(file).starts_with(&data) {
                    return Err(KmsError::validation(format!(
                        "secrets must not be kept next to the data: {} is inside data_dir {}",
                        file.display(),
                        self.data_dir.display()
                    )));
                }
            }
        }
        let r = &self.raft;
        if !(r.heartbeat_ms < r.election_timeout_min_ms
            && r.election_timeout_min_ms < r.election_timeout_max_ms)
        {
            return Err(KmsError::validation(
                "raft timing must satisfy heartbeat_ms < election_timeout_min_ms < election_timeout_max_ms",
            ));
        }
        if self.audit.max_batch == 0 || self.audit.max_in_flight == 0 {
            return Err(KmsError::validation(
                "audit.max_batch and audit.max_in_flight must be positive",
            ));
        }
        if let Some(b) = &self.bootstrap {
            AccountId::parse(&b.account)?;
            if !b.members.iter().any(|m| m.id == self.node_id) {
                return Err(KmsError::validation(
                    "bootstrap.members must include this node",
                ));
            }
            let mut ids: Vec<_> = b.members.iter().map(|m| m.id).collect();
            ids.sort_unstable();
            ids.dedup();
            if ids.len() != b.members.len() || ids.contains(&0) {
                return Err(KmsError::validation(
                    "bootstrap.members must have distinct ids of at least 1",
                ));
            }
        }
        Ok(())
    }

    /// The client API URL peers and clients are told.
    pub fn api_endpoint(&self) -> String {
        self.advertise_api
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.api_addr))
    }

    /// The node-to-node address peers are told.
    pub fn raft_endpoint(&self) -> String {
        self.advertise_raft
            .clone()
            .unwrap_or_else(|| self.raft_addr.clone())
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Config {
        Config {
            cluster_secret: "c".repeat(32),
            sealing_secret: "s".repeat(32),
            ..Config::default()
        }
    }

    #[test]
    fn env_overrides_file_values() {
        let mut c: Config = toml::from_str("node_id = 2\nregion = \"eu-1\"").unwrap();
        c.apply_env(|k| (k == "KEYRAFT_REGION").then(|| "us-9".to_string()))
            .unwrap();
        assert_eq!(c.node_id, 2);
        assert_eq!(c.region, "us-9");
        let err = c
            .apply_env(|k| (k == "KEYRAFT_NODE_ID").then(|| "x".to_string()))
            .unwrap_err();
        assert!(err.message.contains("KEYRAFT_NODE_ID"));
    }

    #[test]
    fn the_example_cluster_configs_are_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../cluster");
        for i in 1..=3 {
            let mut c = Config::from_file(&dir.join(format!("node{i}.toml"))).unwrap();
            c.apply_env(|k| match k {
                "KEYRAFT_CLUSTER_SECRET" | "KEYRAFT_SEALING_SECRET" => Some("x".repeat(32)),
                _ => None,
            })
            .unwrap();
            c.validate().unwrap();
            assert_eq!(c.node_id, i);
            assert_eq!(c.bootstrap.is_some(), i == 1);
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(toml::from_str::<Config>("nodeid = 2").is_err());
    }

    #[test]
    fn validation() {
        assert!(valid().validate().is_ok());
        let mut c = valid();
        c.sealing_secret = "short".into();
        assert!(c.validate().is_err());
        let mut c = valid();
        c.raft.heartbeat_ms = 600;
        assert!(c.validate().is_err());
        let mut c = valid();
        c.bootstrap = Some(BootstrapConfig {
            account: "111122223333".into(),
            members: vec![MemberConfig {
                id: 2,
                ..Default::default()
            }],
            ..Default::default()
        });
        assert!(c.validate().is_err(), "bootstrap without this node");
    }

    #[test]
    fn secrets_next_to_data_are_refused_outside_dev_mode() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(
            &file,
            format!(
                "data_dir = {:?}\ncluster_secret = \"{}\"\nsealing_secret = \"{}\"",
                dir.path(),
                "c".repeat(32),
                "s".repeat(32)
            ),
        )
        .unwrap();
        let c = Config::from_file(&file).unwrap();
        assert!(c.validate().is_err());
        let mut c = c;
        c.dev_mode = true;
        assert!(c.validate().is_ok());
    }
}
