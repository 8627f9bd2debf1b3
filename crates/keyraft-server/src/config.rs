//! One documented configuration struct: defaults < TOML file < `KEYRAFT_*` environment <
//! command-line flags, merged by [`Config::load`] from one table of fields ([`FIELDS`]),
//! validated once by [`Config::validate`].
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
    ///
    /// When it is a specific IP (not `0.0.0.0` or `::`), the node's outgoing
    /// node-to-node connections (Raft, join, forwarding to the leader) also leave from
    /// that IP, so that on a multi-homed host peer traffic stays on the node-to-node
    /// network and peers see it come from the node-to-node address. Exceptions, where the
    /// kernel picks the source as before: a destination of the other address family, and
    /// a loopback listen IP with a peer that is not on loopback. With an unspecified IP
    /// the kernel picks the source by route.
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
    /// Group commit of audit records and mutations.
    pub audit: AuditConfig,
    /// How long a request may wait for Raft before failing with
    /// `DependencyTimeoutException`, in ms.
    pub commit_timeout_ms: u64,
    /// How often the leader checks for time-driven work (deletions), in ms.
    pub tick_interval_ms: u64,
    /// Threads of the node's async runtime, which runs the APIs, Raft and apply; 0 (the
    /// default) is one per core. `keyraft server` reads it when it starts. Nodes that
    /// share a host (`keyraft dev`) answer a lone caller sooner on their share of its
    /// cores than each on all of them (fewer threads put to sleep and woken), but under
    /// heavy load the leader's share is then its limit.
    pub worker_threads: usize,
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
    /// Build a snapshot after at least this many log entries...
    pub snapshot_every_logs: u64,
    /// ...and once the log written since the last snapshot is at least this percentage
    /// of the state's size on disk, so that a follower that falls behind by less catches
    /// up from the log instead of being sent the whole state (0: the entry count
    /// alone). See `keyraft_raft::compaction`.
    pub snapshot_log_percent: u64,
    /// Log entries kept behind a snapshot for slow followers.
    pub keep_logs_after_snapshot: u64,
}

/// Group commit: audit records and callers' mutations share Raft entries.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Most records in one Raft entry (a mutation counts as one).
    pub max_batch: usize,
    /// Most group-commit entries this node has in flight at once. While they commit,
    /// new records and mutations wait and go into the next entry, so a smaller number
    /// means fewer, larger entries. With 64 callers on a 3-node cluster of 2 cores, 1
    /// gave 1.8x the Encrypt rate of 8 at lower latencies (each entry costs a Raft
    /// round of CPU on every node); raise it only where commit latency, not CPU, bounds
    /// the rate and batches reach `max_batch`.
    pub max_in_flight: usize,
    /// `sync` (the default): a read-only cryptographic request (Encrypt, Decrypt,
    /// GenerateDataKey, Sign, ...) answers only after its audit event has committed and
    /// apply confirmed the decision — fail closed, and a permission revoked before commit
    /// is never used. `async`: such a request answers as soon as this node decided, and
    /// its event commits behind it. Faster, but a request may be answered that the audit
    /// log later records as refused (a key disabled in between), and an answer can
    /// escape without an event if the node crashes or loses quorum first. Mutations are
    /// always synchronous. Explicitly weaker; off by default.
    pub crypto_mode: AuditMode,
}

/// How cryptographic requests wait for their audit events (see [`AuditConfig::crypto_mode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuditMode {
    /// Answer after the event committed and apply confirmed.
    #[default]
    Sync,
    /// Answer first; commit the event behind the answer.
    Async,
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
            tick_interval_ms: 1000,
            worker_threads: 0,
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
            snapshot_log_percent: 50,
            keep_logs_after_snapshot: 1_000,
        }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            max_batch: 512,
            max_in_flight: 1,
            crypto_mode: AuditMode::Sync,
        }
    }
}

/// How a field's value is read from the environment or a `--set` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// Taken verbatim as a string.
    Str,
    /// An unsigned integer.
    Int,
    /// `true`/`false` (also `1`/`0`, `yes`/`no`).
    Bool,
    /// An inline TOML value, e.g. an array of tables for `bootstrap.members`.
    Toml,
}

/// Every configuration field by its dotted path. Each can be set in the file, by the
/// environment variable `KEYRAFT_<PATH>` (dots become underscores, upper case:
/// `raft.heartbeat_ms` is `KEYRAFT_RAFT_HEARTBEAT_MS`) and by
/// `keyraft server --set <path>=<value>`, in that order of precedence.
pub const FIELDS: &[(&str, FieldKind)] = &[
    ("node_id", FieldKind::Int),
    ("data_dir", FieldKind::Str),
    ("region", FieldKind::Str),
    ("api_addr", FieldKind::Str),
    ("raft_addr", FieldKind::Str),
    ("advertise_api", FieldKind::Str),
    ("advertise_raft", FieldKind::Str),
    ("cluster_secret", FieldKind::Str),
    ("sealing_secret", FieldKind::Str),
    ("dev_mode", FieldKind::Bool),
    ("commit_timeout_ms", FieldKind::Int),
    ("tick_interval_ms", FieldKind::Int),
    ("worker_threads", FieldKind::Int),
    ("bootstrap.account", FieldKind::Str),
    ("bootstrap.members", FieldKind::Toml),
    ("bootstrap.admin_access_key_id", FieldKind::Str),
    ("bootstrap.admin_secret_access_key", FieldKind::Str),
    ("bootstrap.key_quota", FieldKind::Int),
    ("raft.heartbeat_ms", FieldKind::Int),
    ("raft.election_timeout_min_ms", FieldKind::Int),
    ("raft.election_timeout_max_ms", FieldKind::Int),
    ("raft.snapshot_every_logs", FieldKind::Int),
    ("raft.snapshot_log_percent", FieldKind::Int),
    ("raft.keep_logs_after_snapshot", FieldKind::Int),
    ("audit.max_batch", FieldKind::Int),
    ("audit.max_in_flight", FieldKind::Int),
    ("audit.crypto_mode", FieldKind::Str),
];

/// The environment variable of a field path.
pub fn env_name(path: &str) -> String {
    format!("KEYRAFT_{}", path.replace('.', "_").to_uppercase())
}

/// The most runtime threads a node may be given.
const MAX_WORKER_THREADS: usize = 1024;

/// Secrets, which may not come from a file inside the data directory.
const SECRET_FIELDS: &[&str] = &["cluster_secret", "sealing_secret"];

fn parse_value(path: &str, kind: FieldKind, raw: &str) -> Result<toml::Value, KmsError> {
    let bad = |what: &str| KmsError::validation(format!("{path}: '{raw}' is not {what}"));
    Ok(match kind {
        FieldKind::Str => toml::Value::String(raw.to_string()),
        FieldKind::Int => toml::Value::Integer(
            raw.trim()
                .parse::<u64>()
                .ok()
                .and_then(|n| i64::try_from(n).ok())
                .ok_or_else(|| bad("a whole number"))?,
        ),
        FieldKind::Bool => toml::Value::Boolean(match raw.trim() {
            "1" | "true" | "yes" => true,
            "0" | "false" | "no" => false,
            _ => return Err(bad("true or false")),
        }),
        FieldKind::Toml => toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .ok_or_else(|| bad("a TOML value"))?,
    })
}

fn set_path(table: &mut toml::Table, path: &str, value: toml::Value) -> Result<(), KmsError> {
    let mut parts = path.split('.').peekable();
    let mut cur = table;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            cur.insert(part.to_string(), value);
            return Ok(());
        }
        let entry = cur
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| KmsError::validation(format!("{part} is not a table")))?;
    }
    Ok(())
}

impl Config {
    /// Loads the configuration: defaults, then the TOML `file`, then `KEYRAFT_*`
    /// variables from `env`, then `--set path=value` overrides.
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        sets: &[(String, String)],
    ) -> Result<Config, KmsError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    KmsError::validation(format!("cannot read config {}: {e}", path.display()))
                })?;
                toml::from_str::<toml::Table>(&text)
                    .map_err(|e| KmsError::validation(format!("config {}: {e}", path.display())))?
            }
            None => toml::Table::new(),
        };
        let secrets_in_file = file.filter(|_| SECRET_FIELDS.iter().any(|f| table.contains_key(*f)));
        for (path, kind) in FIELDS {
            if let Some(raw) = env(&env_name(path)) {
                set_path(&mut table, path, parse_value(path, *kind, &raw)?)?;
            }
        }
        for (path, raw) in sets {
            let (_, kind) = FIELDS
                .iter()
                .find(|(p, _)| p == path)
                .ok_or_else(|| KmsError::validation(format!("--set: unknown option '{path}'")))?;
            set_path(&mut table, path, parse_value(path, *kind, raw)?)?;
        }
        let mut config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    let origin = file
                        .map(|f| format!("config {}", f.display()))
                        .unwrap_or_else(|| "configuration".into());
                    KmsError::validation(format!("{origin}: {e}"))
                })?;
        config.secrets_from_file = secrets_in_file.map(Path::to_path_buf);
        Ok(config)
    }

    /// Reads a TOML file over the defaults (no environment, no overrides).
    pub fn from_file(path: &Path) -> Result<Config, KmsError> {
        Config::load(Some(path), |_| None, &[])
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
        if self.tick_interval_ms == 0 {
            return Err(KmsError::validation("tick_interval_ms must be positive"));
        }
        if self.worker_threads > MAX_WORKER_THREADS {
            return Err(KmsError::validation(format!(
                "worker_threads must be at most {MAX_WORKER_THREADS} (0: one per core)"
            )));
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
    fn file_then_environment_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("n.toml");
        std::fs::write(
            &file,
            "node_id = 2\nregion = \"eu-1\"\n[raft]\nheartbeat_ms = 50",
        )
        .unwrap();
        let env = |k: &str| match k {
            "KEYRAFT_REGION" => Some("us-9".to_string()),
            "KEYRAFT_RAFT_ELECTION_TIMEOUT_MIN_MS" => Some("700".to_string()),
            "KEYRAFT_SEALING_SECRET" => Some("1234567890123456789".to_string()),
            "KEYRAFT_BOOTSTRAP_MEMBERS" => {
                Some(r#"[{ id = 2, api_endpoint = "http://h:1", raft_addr = "h:2" }]"#.to_string())
            }
            // Client variables in the same shell are not node options.
            "KEYRAFT_ENDPOINTS" => Some("http://x".to_string()),
            _ => None,
        };
        let sets = vec![
            ("region".to_string(), "ap-3".to_string()),
            ("dev_mode".to_string(), "yes".to_string()),
        ];
        let c = Config::load(Some(&file), env, &sets).unwrap();
        assert_eq!(c.node_id, 2);
        assert_eq!(c.region, "ap-3", "flags win over the environment");
        assert_eq!(c.raft.heartbeat_ms, 50, "the file wins over defaults");
        assert_eq!(c.raft.election_timeout_min_ms, 700);
        assert_eq!(
            c.raft.election_timeout_max_ms, 1000,
            "defaults fill the rest"
        );
        assert_eq!(
            c.sealing_secret, "1234567890123456789",
            "digits stay a string"
        );
        assert!(c.dev_mode);
        assert_eq!(c.bootstrap.unwrap().members[0].raft_addr, "h:2");
        assert!(c.secrets_from_file.is_none());

        let bad = |k: &str| (k == "KEYRAFT_NODE_ID").then(|| "x".to_string());
        let err = Config::load(None, bad, &[]).unwrap_err();
        assert!(err.message.contains("node_id"), "{}", err.message);
        let err = Config::load(None, |_| None, &[("nodeid".into(), "1".into())]).unwrap_err();
        assert!(err.message.contains("unknown option"));
        assert_eq!(env_name("raft.heartbeat_ms"), "KEYRAFT_RAFT_HEARTBEAT_MS");
    }

    #[test]
    fn the_example_cluster_configs_are_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../cluster");
        for i in 1..=3 {
            let c = Config::load(
                Some(&dir.join(format!("node{i}.toml"))),
                |k| match k {
                    "KEYRAFT_CLUSTER_SECRET" | "KEYRAFT_SEALING_SECRET" => Some("x".repeat(32)),
                    _ => None,
                },
                &[],
            )
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
        c.worker_threads = 4;
        assert!(c.validate().is_ok());
        c.worker_threads = MAX_WORKER_THREADS + 1;
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
