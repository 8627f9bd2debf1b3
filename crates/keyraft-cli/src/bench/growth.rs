//! `keyraft bench growth`: whether a cluster's memory and data directories grow without
//! bound under audited operations, and whether they stop growing once the audit
//! retention that exists is applied.
//!
//! Every KMS call leaves an audit event that is committed through Raft and kept in each
//! node's state (sled), so a busy cluster writes to disk on every call, reads included.
//! Two things bound that growth: Raft log compaction (snapshots, then the log is
//! purged), and the audit retention — `AuditMarkExported` after a full export, then
//! `AuditPrune`, which removes exported events older than the retention period (at most
//! 10,000 per call) behind a signed checkpoint. This bench measures whether, with both
//! applied, the footprint is flat.
//!
//! Like `failover`, it starts a cluster of its own (through `keyraft-testkit`'s
//! [`LocalCluster`], in `--dir` or a temporary directory), because it must know the
//! nodes' processes and data directories. Then:
//!
//! 1. **start**: one key is created and every node is sampled;
//! 2. **phase 1**: `--ops` Encrypts of `--payload-bytes` under that key, from
//!    `--concurrency` closed-loop callers spread over every node; after every
//!    `--sample-every` operations the callers drain and every node is sampled;
//! 3. **retention**: the retention step (below) runs once, and every node is sampled;
//! 4. **phase 2**: another `--ops` Encrypts, with the retention step after every
//!    `--sample-every` operations, so it keeps pace; each sample follows its step.
//!
//! A sample holds, per node, its resident memory (`VmRSS` of `/proc/<pid>/status`) and
//! the size of its data directory (the lengths of the files under it, so sled's files
//! and the Raft log), and the audit head sequence. The summary gives
//! per node the values at the start, at the end of phase 1, after the retention and at
//! the end of phase 2, and the growth during phase 2, in MiB and in bytes per operation:
//! near zero if the footprint is bounded.
//!
//! **The retention step.** The server keeps audit events for at least one day
//! (`retention_days` 0 is refused), so nothing a bench run writes would ever be old
//! enough to prune. The step therefore first moves every node's *service clock* a day
//! and a minute ahead (`AdvanceClock`, which nodes in development mode — as the bench's
//! own cluster is — allow; request signatures are checked against the real time, so
//! they are unaffected), then marks the trail exported through its head and prunes with
//! a retention of one day until a call prunes nothing. Over a run the clocks move one
//! day per step; the only time-driven work that sees it is the expiry of remembered
//! request ids, which does not touch the audit trail.
//!
//! Sampling while the callers are drained makes each sample count exactly the
//! operations before it; the pause costs each interval one drain of the pipeline, which
//! is negligible against `--sample-every` calls.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use tokio::task::JoinSet;

use keyraft_client::{Client, EncryptionContext};
use keyraft_testkit::LocalCluster;

use super::{error_code, prepare_keyraft, print_report, BenchDir};

/// The retention the prune asks for: the least the server accepts.
const RETENTION_DAYS: u32 = 1;

/// How far each retention step moves every node's service clock: one day and one
/// minute, so that every event recorded before the step is older than the retention.
const CLOCK_STEP_MS: u64 = (24 * 60 + 1) * 60 * 1000;

/// Bytes in a MiB.
const MIB: f64 = 1024.0 * 1024.0;

/// Most clients (each one HTTP/2 connection per node) the callers share.
const MAX_CLIENTS: usize = 8;

/// `keyraft bench growth` flags.
#[derive(Args, Debug, Clone)]
pub(crate) struct GrowthArgs {
    /// Cluster size.
    #[arg(long, default_value_t = 3)]
    pub(crate) nodes: usize,
    /// Encrypt calls in each of the two phases.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) ops: u64,
    /// Callers issuing Encrypts in closed loops.
    #[arg(long, default_value_t = 64)]
    pub(crate) concurrency: usize,
    /// Plaintext bytes per Encrypt.
    #[arg(long, default_value_t = 64)]
    pub(crate) payload_bytes: usize,
    /// Sample every node after this many calls (and, in phase 2, apply the retention).
    #[arg(long, default_value_t = 50_000)]
    pub(crate) sample_every: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Keep the cluster's data and node logs in this (new or empty) directory instead
    /// of a temporary one that is removed at the end.
    #[arg(long)]
    pub(crate) dir: Option<PathBuf>,
}

/// When a sample was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Phase {
    /// After the cluster came up and the key was created, before any load.
    Start,
    /// During the first `--ops` calls, without retention.
    Phase1,
    /// After the retention step that follows phase 1.
    Retention,
    /// During the second `--ops` calls, each after its retention step.
    Phase2,
}

impl Phase {
    /// The table's name for it (the same as in the JSON).
    fn name(self) -> &'static str {
        match self {
            Phase::Start => "start",
            Phase::Phase1 => "phase1",
            Phase::Retention => "retention",
            Phase::Phase2 => "phase2",
        }
    }
}

/// One node in a sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct NodeSample {
    /// Node id.
    pub(crate) id: u64,
    /// Resident memory of the node's process (`VmRSS`).
    pub(crate) rss_bytes: u64,
    /// The summed lengths of the files under the node's data directory.
    pub(crate) data_bytes: u64,
}

/// Every node at one point of the run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Sample {
    /// Which part of the run.
    pub(crate) phase: Phase,
    /// Encrypt calls made since the start (both phases), failed ones included.
    pub(crate) ops: u64,
    /// Seconds since the start sample.
    pub(crate) elapsed_s: f64,
    /// Calls per second over the load interval just before this sample (0 when there
    /// was none), not counting the retention step.
    pub(crate) ops_per_s: f64,
    /// Failed calls since the start.
    pub(crate) errors: u64,
    /// The audit trail's newest sequence number.
    pub(crate) audit_head: u64,
    /// The newest pruned event so far (0: none).
    pub(crate) audit_pruned_through: u64,
    /// Events the retention step just before this sample pruned.
    pub(crate) pruned: u64,
    /// Seconds that retention step took (0 without one).
    pub(crate) retention_s: f64,
    /// Each node, by id.
    pub(crate) nodes: Vec<NodeSample>,
}

/// One quantity of one node across the run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub(crate) struct Growth {
    /// At the start sample.
    pub(crate) start: u64,
    /// At the last sample of phase 1.
    pub(crate) end_phase1: u64,
    /// After the retention step that follows phase 1.
    pub(crate) after_retention: u64,
    /// At the last sample of phase 2.
    pub(crate) end_phase2: u64,
    /// (end of phase 1 − start) / calls per phase.
    pub(crate) phase1_bytes_per_op: f64,
    /// end of phase 2 − after retention (negative if it shrank).
    pub(crate) phase2_growth_bytes: i64,
    /// That growth / calls per phase: about 0 when the footprint is bounded.
    pub(crate) phase2_bytes_per_op: f64,
}

impl Growth {
    /// From the values at the start, the end of phase 1, after the retention and at
    /// the end of phase 2, with `ops` calls in each phase.
    pub(crate) fn new(points: [u64; 4], ops: u64) -> Growth {
        let [start, end_phase1, after_retention, end_phase2] = points;
        let diff = |to: u64, from: u64| to as i64 - from as i64;
        let per_op = |bytes: i64| {
            if ops == 0 {
                0.0
            } else {
                bytes as f64 / ops as f64
            }
        };
        let phase2_growth_bytes = diff(end_phase2, after_retention);
        Growth {
            start,
            end_phase1,
            after_retention,
            end_phase2,
            phase1_bytes_per_op: per_op(diff(end_phase1, start)),
            phase2_growth_bytes,
            phase2_bytes_per_op: per_op(phase2_growth_bytes),
        }
    }

    /// One summary line: `what` in MiB at the four points, and the phase-2 growth.
    fn line(&self, node: u64, what: &str) -> String {
        let mib = |b: u64| b as f64 / MIB;
        format!(
            "node {node} {what:<4} MiB: start {:.1}, phase 1 end {:.1} ({:+.1} B/op), after retention {:.1}, phase 2 end {:.1}; phase 2 growth {:+.1} MiB ({:+.2} B/op)\n",
            mib(self.start),
            mib(self.end_phase1),
            self.phase1_bytes_per_op,
            mib(self.after_retention),
            mib(self.end_phase2),
            self.phase2_growth_bytes as f64 / MIB,
            self.phase2_bytes_per_op,
        )
    }
}

/// One node's memory and data directory across the run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct NodeSummary {
    /// Node id.
    pub(crate) id: u64,
    /// Resident memory.
    pub(crate) rss: Growth,
    /// Data directory size.
    pub(crate) data: Growth,
}

/// Per node, the values at the start, the end of phase 1, after the retention and at
/// the end of phase 2, with `ops` calls in each phase. Empty if one of those samples
/// is missing (a run that failed half-way); a node missing from one is left out.
pub(crate) fn summarize(samples: &[Sample], ops: u64) -> Vec<NodeSummary> {
    let first = |p: Phase| samples.iter().find(|s| s.phase == p);
    let last = |p: Phase| samples.iter().rev().find(|s| s.phase == p);
    let (Some(start), Some(p1), Some(ret), Some(p2)) = (
        first(Phase::Start),
        last(Phase::Phase1),
        first(Phase::Retention),
        last(Phase::Phase2),
    ) else {
        return Vec::new();
    };
    start
        .nodes
        .iter()
        .filter_map(|n| {
            let at = |s: &Sample| s.nodes.iter().find(|m| m.id == n.id).copied();
            let points = [at(start)?, at(p1)?, at(ret)?, at(p2)?];
            Some(NodeSummary {
                id: n.id,
                rss: Growth::new(points.map(|p| p.rss_bytes), ops),
                data: Growth::new(points.map(|p| p.data_bytes), ops),
            })
        })
        .collect()
}

/// What `--json` prints.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct GrowthReport {
    /// Cluster size.
    pub(crate) nodes: usize,
    /// Calls in each phase.
    pub(crate) ops_per_phase: u64,
    /// Callers.
    pub(crate) concurrency: usize,
    /// Plaintext bytes per Encrypt.
    pub(crate) payload_bytes: usize,
    /// Calls between samples.
    pub(crate) sample_every: u64,
    /// What the retention step does.
    pub(crate) retention: String,
    /// Failed calls by error code.
    pub(crate) errors: BTreeMap<String, u64>,
    /// Every sample, in order.
    pub(crate) samples: Vec<Sample>,
    /// Per node, see [`summarize`].
    pub(crate) summary: Vec<NodeSummary>,
}

impl GrowthReport {
    /// The table printed without `--json`: a row per sample, then per node a summary
    /// line for its memory and one for its data directory, then the errors.
    pub(crate) fn table(&self) -> String {
        let mut out = format!(
            "growth of a {}-node Keyraft cluster under audited Encrypts ({} callers, {}-byte plaintexts, {} calls per phase, a sample every {})\n",
            self.nodes, self.concurrency, self.payload_bytes, self.ops_per_phase, self.sample_every
        );
        out.push_str(&format!("retention step: {}\n", self.retention));
        let ids: Vec<u64> = self
            .samples
            .first()
            .map(|s| s.nodes.iter().map(|n| n.id).collect())
            .unwrap_or_default();
        out.push_str(&header(&ids));
        out.push('\n');
        for s in &self.samples {
            out.push_str(&row(s));
            out.push('\n');
        }
        for n in &self.summary {
            out.push_str(&n.rss.line(n.id, "rss"));
            out.push_str(&n.data.line(n.id, "data"));
        }
        if self.errors.is_empty() {
            out.push_str("errors: none\n");
        } else {
            let e: Vec<String> = self
                .errors
                .iter()
                .map(|(c, n)| format!("{c}={n}"))
                .collect();
            out.push_str(&format!("errors: {}\n", e.join(" ")));
        }
        out
    }
}

/// The table's column names, for nodes `ids`.
fn header(ids: &[u64]) -> String {
    let mut out = format!("{:<9} {:>9} {:>8}", "phase", "ops", "ops/s");
    for id in ids {
        out.push_str(&format!(
            " {:>10} {:>11}",
            format!("n{id} rss MiB"),
            format!("n{id} data MiB")
        ));
    }
    out.push_str(&format!(" {:>10} {:>8}", "audit head", "pruned"));
    out
}

/// One sample as a table row (also the progress line).
fn row(s: &Sample) -> String {
    let rate = if s.ops_per_s > 0.0 {
        format!("{:.0}", s.ops_per_s)
    } else {
        "-".to_string()
    };
    let mut out = format!("{:<9} {:>9} {:>8}", s.phase.name(), s.ops, rate);
    for n in &s.nodes {
        out.push_str(&format!(
            " {:>10.1} {:>11.1}",
            n.rss_bytes as f64 / MIB,
            n.data_bytes as f64 / MIB
        ));
    }
    out.push_str(&format!(" {:>10} {:>8}", s.audit_head, s.pruned));
    out
}

/// The resident memory in a `/proc/<pid>/status` text, in bytes (its `VmRSS` line,
/// which the kernel gives in kB); `None` if there is none or it does not parse.
pub(crate) fn parse_vm_rss(status: &str) -> Option<u64> {
    let rest = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let mut words = rest.split_whitespace();
    let kb: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => kb.checked_mul(1024),
        _ => None,
    }
}

/// The resident memory of process `pid`, in bytes.
fn rss_bytes(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    parse_vm_rss(&text).ok_or_else(|| format!("{path} has no VmRSS line"))
}

/// The summed lengths of the regular files under `root`, walked recursively without
/// following symbolic links. Entries that vanish during the walk (a snapshot's temporary
/// file renamed, a sled segment removed) are skipped; a missing `root` is 0.
pub(crate) fn dir_size(root: &Path) -> io::Result<u64> {
    /// `Ok(None)` for an entry that is gone.
    fn gone_is_none<T>(r: io::Result<T>) -> io::Result<Option<T>> {
        match r {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
    let mut total = 0u64;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Some(meta) = gone_is_none(std::fs::symlink_metadata(&dir))? else {
            continue;
        };
        if meta.is_file() {
            total += meta.len();
            continue;
        }
        if !meta.is_dir() {
            continue;
        }
        let Some(entries) = gone_is_none(std::fs::read_dir(&dir))? else {
            continue;
        };
        for entry in entries {
            let Some(entry) = gone_is_none(entry)? else {
                continue;
            };
            let path = entry.path();
            let Some(meta) = gone_is_none(std::fs::symlink_metadata(&path))? else {
                continue;
            };
            if meta.is_dir() {
                dirs.push(path);
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

/// `total` calls in chunks of `every` (the last one shorter): the intervals between
/// samples.
pub(crate) fn chunks(total: u64, every: u64) -> Vec<u64> {
    let every = every.max(1);
    let mut out = Vec::new();
    let mut left = total;
    while left > 0 {
        let n = left.min(every);
        out.push(n);
        left -= n;
    }
    out
}

/// Refuses flags the run cannot use.
fn validate(args: &GrowthArgs) -> Result<(), String> {
    if args.nodes == 0 {
        return Err("--nodes must be at least 1".into());
    }
    if args.ops == 0 || args.concurrency == 0 || args.sample_every == 0 {
        return Err("--ops, --concurrency and --sample-every must be at least 1".into());
    }
    Ok(())
}

/// Runs the measurement and prints the report.
pub(crate) async fn run(args: GrowthArgs) -> Result<ExitCode, String> {
    validate(&args)?;
    // Declared before the cluster, so the cluster (and its processes) goes first.
    let dir = BenchDir::new(args.dir.as_deref(), "keyraft-bench-growth-")?;
    let mut cluster = prepare_keyraft(dir.path(), args.nodes)?;
    eprintln!(
        "keyraft bench growth: starting {} Keyraft nodes in {} ...",
        args.nodes,
        dir.path().display()
    );
    cluster.start_all().map_err(|e| e.to_string())?;
    let ids: Vec<u64> = cluster.nodes().iter().map(|n| n.id).collect();
    cluster
        .wait_ready(&ids, Duration::from_secs(60))
        .await
        .map_err(|e| e.to_string())?;
    let outcome = tokio::select! {
        r = measure(&mut cluster, &args) => r,
        _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
    };
    drop(cluster);
    let report = outcome?;
    print_report(args.json, &report, || report.table())
}

/// The callers' shared setup.
struct Load {
    /// Clients over every node, assigned to callers round-robin.
    clients: Vec<Arc<Client>>,
    /// The key the Encrypts use.
    key: Arc<str>,
    /// The plaintext.
    payload: Arc<[u8]>,
    /// Callers.
    concurrency: usize,
}

impl Load {
    /// Makes exactly `n` Encrypt calls from closed-loop callers; adds the failures to
    /// `errors` by code and returns how long it took.
    async fn run(&self, n: u64, errors: &mut BTreeMap<String, u64>) -> Result<Duration, String> {
        let issued = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let mut callers = JoinSet::new();
        let callers_n = (self.concurrency as u64).min(n) as usize;
        for i in 0..callers_n {
            let client = self.clients[i % self.clients.len()].clone();
            let (key, payload, issued) = (self.key.clone(), self.payload.clone(), issued.clone());
            callers.spawn(async move {
                let context = EncryptionContext::new();
                let mut failed: BTreeMap<String, u64> = BTreeMap::new();
                while issued.fetch_add(1, Ordering::Relaxed) < n {
                    if let Err(e) = client.encrypt(&key, &payload, &context).await {
                        *failed.entry(error_code(&e)).or_default() += 1;
                    }
                }
                failed
            });
        }
        while let Some(joined) = callers.join_next().await {
            for (code, count) in joined.map_err(|e| format!("a caller failed: {e}"))? {
                *errors.entry(code).or_default() += count;
            }
        }
        Ok(start.elapsed())
    }
}

/// What a retention step did.
struct Retention {
    /// Events pruned.
    pruned: u64,
    /// The newest pruned event afterwards.
    pruned_through: u64,
    /// How long it took.
    seconds: f64,
}

/// The run in progress: the clients it needs and what it has recorded.
struct Run<'a> {
    /// The bench's own cluster.
    cluster: &'a mut LocalCluster,
    /// The region's administrator, over every node.
    admin: Client,
    /// One client per node, for `AdvanceClock` (which addresses one node).
    per_node: Vec<(u64, Client)>,
    /// When the start sample was taken.
    started: Instant,
    /// Encrypt calls made so far.
    ops: u64,
    /// Failed calls so far, by error code.
    errors: BTreeMap<String, u64>,
    /// The newest pruned audit event so far.
    pruned_through: u64,
    /// The samples so far.
    samples: Vec<Sample>,
}

impl Run<'_> {
    /// Moves every node's clock ahead, marks the trail exported through its head and
    /// prunes until nothing is left to prune.
    async fn retain(&mut self) -> Result<Retention, String> {
        let start = Instant::now();
        for (id, node) in &self.per_node {
            node.advance_clock(CLOCK_STEP_MS)
                .await
                .map_err(|e| format!("advancing node {id}'s clock: {e}"))?;
        }
        let head = self.audit_head().await?;
        self.admin
            .audit_mark_exported(head)
            .await
            .map_err(|e| format!("marking the audit trail exported through {head}: {e}"))?;
        let mut pruned = 0;
        loop {
            let r = self
                .admin
                .audit_prune(RETENTION_DAYS)
                .await
                .map_err(|e| format!("pruning the audit trail: {e}"))?;
            pruned += r.pruned;
            self.pruned_through = self.pruned_through.max(r.pruned_through);
            if r.pruned == 0 {
                break;
            }
        }
        Ok(Retention {
            pruned,
            pruned_through: self.pruned_through,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// The audit trail's head sequence (one event read).
    async fn audit_head(&self) -> Result<u64, String> {
        self.admin
            .audit_tail(1)
            .await
            .map(|t| t.head_sequence)
            .map_err(|e| format!("reading the audit head: {e}"))
    }

    /// Samples every node, records it and prints it to stderr. Fails if a node exited.
    async fn sample(
        &mut self,
        phase: Phase,
        interval: Option<(u64, Duration)>,
        retention: Option<Retention>,
    ) -> Result<(), String> {
        if let Some((id, status)) = self.cluster.reap().into_iter().next() {
            return Err(format!(
                "node {id} exited ({status}); the end of its log:\n{}",
                self.cluster.log_tail(id, 20)
            ));
        }
        let mut nodes = Vec::new();
        for spec in self.cluster.nodes() {
            let pid = self
                .cluster
                .pid(spec.id)
                .ok_or_else(|| format!("node {} is not running", spec.id))?;
            let data = self.cluster.data_dir(spec.id);
            nodes.push(NodeSample {
                id: spec.id,
                rss_bytes: rss_bytes(pid)?,
                data_bytes: dir_size(&data)
                    .map_err(|e| format!("measuring {}: {e}", data.display()))?,
            });
        }
        let audit_head = self.audit_head().await?;
        let ops_per_s = match interval {
            Some((n, took)) if !took.is_zero() => n as f64 / took.as_secs_f64(),
            _ => 0.0,
        };
        let (pruned, retention_s) = retention
            .as_ref()
            .map_or((0, 0.0), |r| (r.pruned, r.seconds));
        let sample = Sample {
            phase,
            ops: self.ops,
            elapsed_s: self.started.elapsed().as_secs_f64(),
            ops_per_s,
            errors: self.errors.values().sum(),
            audit_head,
            audit_pruned_through: retention
                .as_ref()
                .map_or(self.pruned_through, |r| r.pruned_through),
            pruned,
            retention_s,
            nodes,
        };
        eprintln!("{}", row(&sample));
        self.samples.push(sample);
        Ok(())
    }
}

/// Creates the key, runs both phases with their samples and retention steps, and
/// builds the report.
async fn measure(cluster: &mut LocalCluster, args: &GrowthArgs) -> Result<GrowthReport, String> {
    let mut config = cluster.client_config();
    config.user_agent = format!("keyraft-bench/{}", env!("CARGO_PKG_VERSION"));
    let admin = Client::new(config.clone()).map_err(|e| e.to_string())?;
    let key = admin
        .create_key("keyraft-bench growth")
        .await
        .map_err(|e| format!("creating the key: {e}"))?
        .arn;
    let clients = (0..args.concurrency.min(MAX_CLIENTS))
        .map(|_| Client::new(config.clone()).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let mut per_node = Vec::new();
    for spec in cluster.nodes() {
        let node = cluster.client_of(spec.id).map_err(|e| e.to_string())?;
        per_node.push((spec.id, node));
    }
    let load = Load {
        clients,
        key: Arc::from(key),
        payload: Arc::from(vec![0x5a; args.payload_bytes]),
        concurrency: args.concurrency,
    };
    let mut run = Run {
        cluster,
        admin,
        per_node,
        started: Instant::now(),
        ops: 0,
        errors: BTreeMap::new(),
        pruned_through: 0,
        samples: Vec::new(),
    };
    let ids: Vec<u64> = run.per_node.iter().map(|(id, _)| *id).collect();
    eprintln!("{}", header(&ids));
    run.sample(Phase::Start, None, None).await?;
    for n in chunks(args.ops, args.sample_every) {
        let took = load.run(n, &mut run.errors).await?;
        run.ops += n;
        run.sample(Phase::Phase1, Some((n, took)), None).await?;
    }
    let r = run.retain().await?;
    run.sample(Phase::Retention, None, Some(r)).await?;
    for n in chunks(args.ops, args.sample_every) {
        let took = load.run(n, &mut run.errors).await?;
        run.ops += n;
        let r = run.retain().await?;
        run.sample(Phase::Phase2, Some((n, took)), Some(r)).await?;
    }
    let summary = summarize(&run.samples, args.ops);
    Ok(GrowthReport {
        nodes: args.nodes,
        ops_per_phase: args.ops,
        concurrency: args.concurrency,
        payload_bytes: args.payload_bytes,
        sample_every: args.sample_every,
        retention: retention_description(),
        errors: run.errors,
        samples: run.samples,
        summary,
    })
}

/// What the retention step does, for the report.
fn retention_description() -> String {
    format!(
        "every node's service clock +{} min (AdvanceClock, development mode), AuditMarkExported through the head, AuditPrune(retention_days={RETENTION_DAYS}) until it prunes 0; once after phase 1 and after every sample interval of phase 2",
        CLOCK_STEP_MS / 60_000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tkeyraft\nUmask:\t0022\nState:\tS (sleeping)\nVmPeak:\t  912345 kB\nVmSize:\t  812345 kB\nVmHWM:\t   60000 kB\nVmRSS:\t   51234 kB\nRssAnon:\t   40000 kB\nThreads:\t12\n";

    #[test]
    fn vm_rss_is_read_in_bytes() {
        assert_eq!(parse_vm_rss(STATUS), Some(51234 * 1024));
        assert_eq!(parse_vm_rss("VmRSS:\t0 kB\n"), Some(0));
        // Kernel threads have no VmRSS line.
        assert_eq!(parse_vm_rss("Name:\tkthreadd\nState:\tS\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\tlots kB\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\t12 MB\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\t12\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\t18446744073709551615 kB\n"), None);
        // Only the VmRSS line counts, not RssAnon before it.
        assert_eq!(
            parse_vm_rss("RssAnon:\t7 kB\nVmRSS:\t9 kB\n"),
            Some(9 * 1024)
        );
    }

    #[test]
    fn dir_size_sums_files_recursively_without_following_links() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("node1");
        std::fs::create_dir_all(root.join("snapshots/deeper")).unwrap();
        std::fs::write(root.join("db"), vec![0u8; 1000]).unwrap();
        std::fs::write(root.join("conf"), b"12345").unwrap();
        std::fs::write(root.join("snapshots/current.snap"), vec![1u8; 300]).unwrap();
        std::fs::write(root.join("snapshots/deeper/x"), b"").unwrap();
        // Outside the directory: a link to it must not count.
        std::fs::write(t.path().join("outside"), vec![2u8; 5000]).unwrap();
        std::os::unix::fs::symlink(t.path().join("outside"), root.join("link")).unwrap();
        std::os::unix::fs::symlink(t.path(), root.join("snapshots/loop")).unwrap();
        assert_eq!(dir_size(&root).unwrap(), 1305);
        // A file as the root, and a root that does not exist.
        assert_eq!(dir_size(&root.join("db")).unwrap(), 1000);
        assert_eq!(dir_size(&t.path().join("missing")).unwrap(), 0);
        let empty = t.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert_eq!(dir_size(&empty).unwrap(), 0);
    }

    #[test]
    fn chunks_cover_the_total_exactly() {
        assert_eq!(chunks(20_000, 5_000), vec![5_000; 4]);
        assert_eq!(chunks(10, 3), vec![3, 3, 3, 1]);
        assert_eq!(chunks(2, 50_000), vec![2]);
        assert!(chunks(0, 7).is_empty());
        assert_eq!(chunks(3, 0), vec![1, 1, 1]);
    }

    fn sample(phase: Phase, ops: u64, nodes: &[(u64, u64, u64)]) -> Sample {
        Sample {
            phase,
            ops,
            elapsed_s: 0.0,
            ops_per_s: 0.0,
            errors: 0,
            audit_head: ops,
            audit_pruned_through: 0,
            pruned: 0,
            retention_s: 0.0,
            nodes: nodes
                .iter()
                .map(|&(id, rss_bytes, data_bytes)| NodeSample {
                    id,
                    rss_bytes,
                    data_bytes,
                })
                .collect(),
        }
    }

    fn run_samples() -> Vec<Sample> {
        vec![
            sample(Phase::Start, 0, &[(1, 100, 1_000), (2, 90, 1_100)]),
            sample(Phase::Phase1, 500, &[(1, 150, 6_000), (2, 95, 6_100)]),
            sample(Phase::Phase1, 1_000, &[(1, 200, 11_000), (2, 99, 11_100)]),
            sample(Phase::Retention, 1_000, &[(1, 210, 12_000), (2, 98, 3_000)]),
            sample(Phase::Phase2, 1_500, &[(1, 215, 12_500), (2, 97, 3_100)]),
            sample(Phase::Phase2, 2_000, &[(1, 230, 12_000), (2, 96, 2_000)]),
        ]
    }

    #[test]
    fn the_summary_takes_the_four_points_per_node() {
        let s = summarize(&run_samples(), 1_000);
        assert_eq!(s.len(), 2);
        let n1 = &s[0];
        assert_eq!(n1.id, 1);
        assert_eq!(
            (
                n1.data.start,
                n1.data.end_phase1,
                n1.data.after_retention,
                n1.data.end_phase2
            ),
            (1_000, 11_000, 12_000, 12_000)
        );
        assert_eq!(n1.data.phase1_bytes_per_op, 10.0);
        assert_eq!(n1.data.phase2_growth_bytes, 0);
        assert_eq!(n1.data.phase2_bytes_per_op, 0.0);
        assert_eq!(n1.rss.phase2_growth_bytes, 20);
        assert_eq!(n1.rss.phase2_bytes_per_op, 0.02);
        // Shrinking is negative growth.
        let n2 = &s[1];
        assert_eq!(n2.data.phase2_growth_bytes, -1_000);
        assert_eq!(n2.data.phase2_bytes_per_op, -1.0);
        assert_eq!(n2.rss.phase2_growth_bytes, -2);
    }

    #[test]
    fn an_incomplete_run_has_no_summary_and_zero_ops_divide_safely() {
        let mut samples = run_samples();
        samples.retain(|s| s.phase != Phase::Phase2);
        assert!(summarize(&samples, 1_000).is_empty());
        assert!(summarize(&[], 1_000).is_empty());
        let g = Growth::new([1, 2, 3, 4], 0);
        assert_eq!((g.phase1_bytes_per_op, g.phase2_bytes_per_op), (0.0, 0.0));
        assert_eq!(g.phase2_growth_bytes, 1);
    }

    #[test]
    fn the_report_prints_and_serialises_every_sample() {
        let samples = run_samples();
        let report = GrowthReport {
            nodes: 2,
            ops_per_phase: 1_000,
            concurrency: 4,
            payload_bytes: 64,
            sample_every: 500,
            retention: retention_description(),
            errors: BTreeMap::from([("TransportError".to_string(), 2)]),
            summary: summarize(&samples, 1_000),
            samples,
        };
        let table = report.table();
        assert!(table.contains("n2 data MiB"), "{table}");
        assert!(table.contains("retention "), "{table}");
        assert!(
            table.contains("node 2 data MiB:") && table.contains("node 1 rss  MiB:"),
            "{table}"
        );
        assert!(table.contains("errors: TransportError=2"), "{table}");
        assert_eq!(table.lines().filter(|l| l.starts_with("phase2")).count(), 2);
        let v = serde_json::to_value(&report).unwrap();
        assert_eq!(v["samples"].as_array().unwrap().len(), 6);
        assert_eq!(v["samples"][3]["phase"], "retention");
        assert_eq!(v["samples"][1]["phase"], "phase1");
        assert_eq!(v["samples"][5]["nodes"][1]["data_bytes"], 2_000);
        assert_eq!(v["summary"][1]["data"]["phase2_growth_bytes"], -1_000);
        assert_eq!(v["errors"]["TransportError"], 2);
    }

    #[test]
    fn the_growth_subcommand_parses_with_its_defaults() {
        use clap::Parser;
        let parse = |extra: &[&str]| {
            let mut argv = vec!["keyraft", "bench", "growth"];
            argv.extend_from_slice(extra);
            match crate::Cli::try_parse_from(argv).map(|c| c.command) {
                Ok(crate::Top::Bench { args, .. }) => match args.command {
                    Some(super::super::BenchCommand::Growth(g)) => Ok(g),
                    other => Err(format!("not growth: {other:?}")),
                },
                Ok(_) => Err("not bench".to_string()),
                Err(e) => Err(e.to_string()),
            }
        };
        let g = parse(&[]).unwrap();
        assert_eq!(
            (
                g.nodes,
                g.ops,
                g.concurrency,
                g.payload_bytes,
                g.sample_every
            ),
            (3, 1_000_000, 64, 64, 50_000)
        );
        assert!(!g.json && g.dir.is_none());
        assert!(validate(&g).is_ok());
        let g = parse(&[
            "--ops",
            "20000",
            "--sample-every",
            "5000",
            "--concurrency",
            "16",
            "--json",
            "--dir",
            "/tmp/x",
        ])
        .unwrap();
        assert_eq!((g.ops, g.sample_every, g.concurrency), (20_000, 5_000, 16));
        assert!(g.json);
        assert_eq!(g.dir, Some(PathBuf::from("/tmp/x")));
        assert!(parse(&["--ops", "many"]).is_err());
        assert!(validate(&parse(&["--ops", "0"]).unwrap()).is_err());
        assert!(validate(&parse(&["--sample-every", "0"]).unwrap()).is_err());
        assert!(validate(&parse(&["--nodes", "0"]).unwrap()).is_err());
    }
}
