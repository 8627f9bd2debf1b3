//! # `keyraft bench`: a load generator
//!
//! In the spirit of `etcd benchmark`, `redis-benchmark` and `vault-benchmark`: it
//! drives one workload against a cluster and prints, per operation, the rate and the
//! latency distribution, with errors counted by code.
//!
//! ```text
//! keyraft bench --workload encrypt --concurrency 64 --duration 10s
//! keyraft bench --workload mix --mix encrypt=8,decrypt=1,create-key=1 --json
//! keyraft bench --workload noop-rpc --concurrency 64          # the bare RPC bound
//! keyraft bench --workload etcd-put --etcd-endpoints http://127.0.0.1:2379
//! keyraft bench failover --runs 5                             # see `failover`
//! keyraft bench growth --ops 1000000                          # see `growth`
//! ```
//!
//! ## How it measures
//!
//! **Closed-loop callers.** `--concurrency N` starts N callers, each its own Tokio
//! task, each issuing one call, waiting for the answer and issuing the next: at most
//! N calls are in flight, and the rate is whatever the system sustains at that
//! concurrency. The callers share `--clients` separate clients (one `keyraft_client::
//! Client`, and so one HTTP/2 connection per node, each), assigned round-robin, so
//! both many streams on one connection and many connections can be tried. A call is
//! one *logical* SDK call — with the client's signing, leader routing and retries —
//! because that is what an application sees.
//!
//! **Phases.** The callers first run for `--warmup` (connections, leader discovery,
//! caches, the allocator's first pages) without recording; then for `--duration`, or
//! until `--count` calls have been issued, recording every call that *started* in the
//! measurement phase. The window ends when the last caller has returned, so the calls
//! in flight at the deadline are counted and the window includes them. `ops_per_s` is
//! successful calls divided by that window.
//!
//! **What is recorded.** Each caller keeps its own histograms (see [`stats`]): per
//! operation, the latency of successful calls (HdrHistogram, µs resolution, 0.1%
//! precision) and failures by error code — the AWS code of a service error (e.g.
//! `ThrottlingException`), `TransportError` for every failure that is not a
//! service answer (no node answered within the deadline, or a gRPC status no retry
//! fixes), `grpc:<code>` from the no-op server, `etcd:<gRPC code>` for the etcd
//! baseline. Once a second the interval
//! samples of all callers are merged into one row (`--csv FILE`: second, ops, p50,
//! p99, errors) and the live progress line on stderr (when stderr is a terminal, or
//! with `--progress`).
//!
//! **The coordinated-omission caveat.** A closed-loop caller does not issue the calls
//! it *would* have issued while it waited for a slow one, so a stall of one second is
//! recorded as *one* slow sample rather than as the hundreds of requests a real,
//! open-loop client population would have queued behind it. The percentiles here are
//! therefore those of the calls that were made, at the rate the system allowed —
//! honest about service time under saturation, optimistic about the latency users
//! would see at a fixed offered load. The per-second CSV shows stalls as dips in the
//! rate; `failover` measures outages directly.
//!
//! **Keys.** Without `--key-id` the bench creates `--keys` symmetric keys (they stay:
//! KMS keys are only ever scheduled for deletion) and spreads the calls over them;
//! `decrypt` first encrypts one ciphertext per key. Workloads that create keys first
//! raise the account's key quota if the caller is the region's administrator (as in a
//! `keyraft dev` cluster), so minutes of CreateKey do not end in
//! `LimitExceededException`; `--no-raise-quota` skips that.
//!
//! **Targets.** `--target all` sends to every member `ClusterStatus` lists, with the
//! SDK's discovery on, so mutations go to the leader as in an application; `leader`
//! and `follower` give the clients that
//! one endpoint only (a follower forwards mutations to the leader itself); an URL
//! names one node.
//!
//! **Baselines.** `noop-rpc` is the bare RPC bound: the same callers against a tonic
//! unary method that does nothing, served in this process ([`noop`]). `etcd-put` puts
//! `--payload-bytes` values into an etcd cluster ([`etcd`]). `bench/etcd-baseline.sh`
//! runs all of them side by side; BENCHMARKS.md has the numbers.

mod cpu;
mod etcd;
mod failover;
mod growth;
mod noop;
mod stats;

use std::collections::BTreeMap;
use std::fmt;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand, ValueEnum};
use rand::Rng;
use tokio::task::JoinSet;

use keyraft_client::envelope::{encrypt_stream, EncryptOptions, EnvelopeError};
use keyraft_client::{Client, ClientConfig, ClientOptions, EncryptionContext, Error};
use keyraft_testkit::LocalCluster;

use crate::Connection;
use etcd::EtcdClient;
use noop::{NoopClient, NoopServer};
use stats::{OpStats, Recorder, Report, Tick};

/// `keyraft bench` flags: a load run, or the `failover` measurement.
#[derive(Args, Debug)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Start a cluster, kill -9 its leader under write load, and time until the next
    /// write succeeds; repeated --runs times.
    Failover(failover::FailoverArgs),
    /// Start a cluster, run audited Encrypts, and sample the nodes' memory and data
    /// directories before and after the audit retention (prune) is applied.
    Growth(growth::GrowthArgs),
}

/// The flags of a load run.
#[derive(Args, Debug, Clone)]
pub(crate) struct LoadArgs {
    /// What each call does.
    #[arg(long, value_enum, default_value_t = Workload::Encrypt)]
    workload: Workload,
    /// Weights of a `mix`, e.g. encrypt=8,decrypt=1,create-key=1 (the default).
    #[arg(long, value_parser = parse_mix)]
    mix: Option<Mix>,
    /// Plaintext bytes per Encrypt (and the value size of etcd puts).
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
    /// Keys to create and spread the calls over, when no --key-id is given.
    #[arg(long, default_value_t = 8)]
    keys: usize,
    /// Use these keys instead of creating some (repeatable).
    #[arg(long = "key-id")]
    key_ids: Vec<String>,
    /// A key policy (a JSON file) to put on the keys the run creates, to measure keys as
    /// production has them; without it they keep the default key policy.
    #[arg(long, conflicts_with = "key_ids")]
    key_policy: Option<PathBuf>,
    /// Concurrent callers, each its own task in a closed loop.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Separate clients (HTTP/2 connections per node) the callers share; default
    /// min(concurrency, 8).
    #[arg(long)]
    clients: Option<usize>,
    /// How long to measure (default 10s), e.g. 30s, 2m.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "count")]
    duration: Option<Duration>,
    /// Measure this many calls instead of a duration.
    #[arg(long)]
    count: Option<u64>,
    /// Run this long before measuring.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    warmup: Duration,
    /// all | leader | follower | a node's URL.
    #[arg(long, value_parser = parse_target, default_value = "all")]
    target: Target,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Write per-second rows (second, ops, p50, p99, errors) to this CSV file.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Show the progress line even when stderr is not a terminal.
    #[arg(long)]
    progress: bool,
    /// The file the `envelope` workload encrypts (to nowhere) on every call.
    #[arg(long)]
    file: Option<PathBuf>,
    /// etcd client URLs for `etcd-put` (comma-separated).
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// Do not raise the key quota before creating keys.
    #[arg(long)]
    no_raise_quota: bool,
    /// Also report the CPU time these processes (e.g. the nodes, comma-separated ids)
    /// spent per call in the measured window; the bench's own is always reported.
    #[arg(long, value_delimiter = ',')]
    cpu_pids: Vec<u32>,
}

/// What a load run does on each call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Workload {
    /// Encrypt --payload-bytes under one of the keys.
    Encrypt,
    /// Decrypt a ciphertext made at the start.
    Decrypt,
    /// GenerateDataKey (AES_256).
    GenerateDataKey,
    /// CreateKey: a Raft write per call.
    CreateKey,
    /// DescribeKey: a local read.
    DescribeKey,
    /// Envelope-encrypt --file (GenerateDataKey + local AES-GCM).
    Envelope,
    /// Weighted mix of the above (--mix).
    Mix,
    /// The bare RPC bound: a no-op tonic unary call to an in-process server.
    NoopRpc,
    /// The etcd baseline: a put to --etcd-endpoints.
    EtcdPut,
}

/// One kind of call; the report has a line per kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Op {
    Encrypt,
    Decrypt,
    GenerateDataKey,
    CreateKey,
    DescribeKey,
    Envelope,
    NoopRpc,
    EtcdPut,
}

impl Op {
    /// The report's name for it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::Encrypt => "Encrypt",
            Op::Decrypt => "Decrypt",
            Op::GenerateDataKey => "GenerateDataKey",
            Op::CreateKey => "CreateKey",
            Op::DescribeKey => "DescribeKey",
            Op::Envelope => "EnvelopeEncrypt",
            Op::NoopRpc => "NoopRpc",
            Op::EtcdPut => "EtcdPut",
        }
    }

    /// The flag's name for it (as in `--workload` and `--mix`).
    fn flag(self) -> &'static str {
        match self {
            Op::Encrypt => "encrypt",
            Op::Decrypt => "decrypt",
            Op::GenerateDataKey => "generate-data-key",
            Op::CreateKey => "create-key",
            Op::DescribeKey => "describe-key",
            Op::Envelope => "envelope",
            Op::NoopRpc => "noop-rpc",
            Op::EtcdPut => "etcd-put",
        }
    }

    /// The operations a `--mix` may name (Keyraft calls).
    const MIXABLE: [Op; 6] = [
        Op::Encrypt,
        Op::Decrypt,
        Op::GenerateDataKey,
        Op::CreateKey,
        Op::DescribeKey,
        Op::Envelope,
    ];

    fn needs_key(self) -> bool {
        matches!(
            self,
            Op::Encrypt | Op::Decrypt | Op::GenerateDataKey | Op::DescribeKey | Op::Envelope
        )
    }
}

/// Weighted operations; each call picks one at random in proportion to its weight.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Mix {
    weights: Vec<(Op, u32)>,
    total: u32,
}

impl Mix {
    /// Every call is `op`.
    fn single(op: Op) -> Mix {
        Mix {
            weights: vec![(op, 1)],
            total: 1,
        }
    }

    /// The operation for a draw `r` in `0..total`.
    fn pick(&self, mut r: u32) -> Op {
        for (op, w) in &self.weights {
            if r < *w {
                return *op;
            }
            r -= w;
        }
        // Unreachable for r < total; the last operation is a safe answer.
        self.weights
            .last()
            .map(|(op, _)| *op)
            .unwrap_or(Op::Encrypt)
    }

    fn draw(&self) -> Op {
        if self.weights.len() == 1 {
            return self.weights[0].0;
        }
        self.pick(rand::thread_rng().gen_range(0..self.total))
    }

    fn ops(&self) -> impl Iterator<Item = Op> + '_ {
        self.weights.iter().map(|(op, _)| *op)
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .weights
            .iter()
            .map(|(op, w)| format!("{}={w}", op.flag()))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Parses `op=weight,...` (weights are whole numbers; zero leaves an operation out).
pub(crate) fn parse_mix(s: &str) -> Result<Mix, String> {
    let mut weights: Vec<(Op, u32)> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, weight) = part
            .split_once('=')
            .ok_or_else(|| format!("expected operation=weight, got '{part}'"))?;
        let op = Op::MIXABLE
            .into_iter()
            .find(|op| op.flag() == name.trim())
            .ok_or_else(|| {
                let names: Vec<&str> = Op::MIXABLE.iter().map(|o| o.flag()).collect();
                format!("unknown operation '{name}' (one of {})", names.join(", "))
            })?;
        let weight: u32 = weight
            .trim()
            .parse()
            .map_err(|_| format!("weight of {name} is not a whole number: '{weight}'"))?;
        if weights.iter().any(|(o, _)| *o == op) {
            return Err(format!("{name} is named twice"));
        }
        if weight > 0 {
            weights.push((op, weight));
        }
    }
    let total = weights
        .iter()
        .try_fold(0u32, |t, (_, w)| t.checked_add(*w))
        .ok_or("the weights add up to too much")?;
    if total == 0 {
        return Err("a mix needs at least one operation with a weight above 0".into());
    }
    Ok(Mix { weights, total })
}

/// Which nodes the clients talk to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// Every member.
    All,
    /// The leader only.
    Leader,
    /// One follower only.
    Follower,
    /// This URL only.
    Endpoint(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::All => f.write_str("all"),
            Target::Leader => f.write_str("leader"),
            Target::Follower => f.write_str("follower"),
            Target::Endpoint(u) => f.write_str(u),
        }
    }
}

/// Parses `all`, `leader`, `follower` or an `http(s)://` URL.
pub(crate) fn parse_target(s: &str) -> Result<Target, String> {
    match s {
        "all" => Ok(Target::All),
        "leader" => Ok(Target::Leader),
        "follower" => Ok(Target::Follower),
        u if u.starts_with("http://") || u.starts_with("https://") => {
            Ok(Target::Endpoint(u.to_string()))
        }
        _ => Err(format!(
            "expected all, leader, follower or a node's URL, got '{s}'"
        )),
    }
}

/// Runs `keyraft bench`.
/// Where a bench that starts its own cluster keeps it: `--dir` (which must be new or
/// empty, and is kept), or a temporary directory that is removed when this is dropped.
/// Drop the cluster first, so that no node still writes into the directory.
pub(crate) struct BenchDir {
    /// The directory.
    path: PathBuf,
    /// The temporary directory, if it is one; removes it when dropped.
    _temp: Option<tempfile::TempDir>,
}

impl BenchDir {
    /// `dir` if given (refused unless it is missing or empty), else a new temporary
    /// directory named `prefix...`.
    pub(crate) fn new(dir: Option<&Path>, prefix: &str) -> Result<BenchDir, String> {
        match dir {
            Some(d) => {
                let busy = std::fs::read_dir(d).is_ok_and(|mut entries| entries.next().is_some());
                if busy {
                    return Err(format!("--dir {} is not empty", d.display()));
                }
                Ok(BenchDir {
                    path: d.to_path_buf(),
                    _temp: None,
                })
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix(prefix)
                    .tempdir()
                    .map_err(|e| format!("cannot make a temporary directory: {e}"))?;
                Ok(BenchDir {
                    path: temp.path().to_path_buf(),
                    _temp: Some(temp),
                })
            }
        }
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// Lays out a Keyraft cluster of `nodes` nodes in `dir`, run by the `keyraft` binary
/// that is running now (not started yet).
pub(crate) fn prepare_keyraft(dir: &Path, nodes: usize) -> Result<LocalCluster, String> {
    let binary =
        std::env::current_exe().map_err(|e| format!("cannot find the keyraft binary: {e}"))?;
    LocalCluster::prepare(dir, &binary, nodes, 0, "bench-1").map_err(|e| e.to_string())
}

/// Prints a bench's report: one JSON object with `json`, else its table.
pub(crate) fn print_report<R: serde::Serialize>(
    json: bool,
    report: &R,
    table: impl FnOnce() -> String,
) -> Result<ExitCode, String> {
    if json {
        println!(
            "{}",
            serde_json::to_string(report).map_err(|e| e.to_string())?
        );
    } else {
        print!("{}", table());
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn run(conn: &Connection, args: BenchArgs) -> ExitCode {
    let result = match args.command {
        Some(BenchCommand::Failover(f)) => failover::run(f).await,
        Some(BenchCommand::Growth(g)) => growth::run(g).await,
        None => load(conn, args.load).await,
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("keyraft bench: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The error code a failed Keyraft call is counted under.
pub(crate) fn error_code(e: &Error) -> String {
    match e {
        Error::Service(k) => k.code.as_str().to_string(),
        Error::Transport(_) => "TransportError".to_string(),
        Error::Config(_) => "ConfigurationError".to_string(),
    }
}

fn envelope_error_code(e: &EnvelopeError) -> String {
    match e {
        EnvelopeError::Kms(e) => error_code(e),
        EnvelopeError::Io(_) => "IoError".to_string(),
        _ => "EnvelopeError".to_string(),
    }
}

/// How a load run is bounded.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Limit {
    Duration(Duration),
    Count(u64),
}

/// The validated plan of a load run.
#[derive(Debug, Clone)]
struct Plan {
    mix: Mix,
    concurrency: usize,
    clients: usize,
    limit: Limit,
}

fn plan(args: &LoadArgs) -> Result<Plan, String> {
    if args.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    let clients = args.clients.unwrap_or(args.concurrency.min(8));
    if clients == 0 {
        return Err("--clients must be at least 1".into());
    }
    let limit = match (args.duration, args.count) {
        (_, Some(0)) => return Err("--count must be at least 1".into()),
        (_, Some(n)) => Limit::Count(n),
        (Some(d), None) if d.is_zero() => return Err("--duration must be above 0".into()),
        (Some(d), None) => Limit::Duration(d),
        (None, None) => Limit::Duration(Duration::from_secs(10)),
    };
    let mix = match (args.workload, &args.mix) {
        (Workload::Mix, Some(m)) => m.clone(),
        (Workload::Mix, None) => parse_mix("encrypt=8,decrypt=1,create-key=1")?,
        (_, Some(_)) => return Err("--mix goes with --workload mix".into()),
        (w, None) => Mix::single(match w {
            Workload::Encrypt => Op::Encrypt,
            Workload::Decrypt => Op::Decrypt,
            Workload::GenerateDataKey => Op::GenerateDataKey,
            Workload::CreateKey => Op::CreateKey,
            Workload::DescribeKey => Op::DescribeKey,
            Workload::Envelope => Op::Envelope,
            Workload::NoopRpc => Op::NoopRpc,
            Workload::EtcdPut => Op::EtcdPut,
            Workload::Mix => Op::Encrypt,
        }),
    };
    if mix.ops().any(|o| o == Op::Envelope) && args.file.is_none() {
        return Err("the envelope workload needs --file".into());
    }
    if mix.ops().any(|o| o == Op::EtcdPut) && args.etcd_endpoints.is_empty() {
        return Err("etcd-put needs --etcd-endpoints".into());
    }
    if mix.ops().any(Op::needs_key) && args.key_ids.is_empty() && args.keys == 0 {
        return Err("--keys must be at least 1 (or give --key-id)".into());
    }
    Ok(Plan {
        mix,
        concurrency: args.concurrency,
        clients: clients.min(args.concurrency),
        limit,
    })
}

/// What the callers call.
enum Backend {
    Keyraft {
        clients: Vec<Arc<Client>>,
        keys: Vec<String>,
        blobs: Vec<Vec<u8>>,
        file: Option<PathBuf>,
    },
    Noop {
        // Kept for its lifetime: dropping it stops the server.
        _server: NoopServer,
        clients: Vec<NoopClient>,
    },
    Etcd {
        clients: Vec<EtcdClient>,
    },
}

/// Everything the callers share.
struct Shared {
    backend: Backend,
    mix: Mix,
    payload: Vec<u8>,
    context: EncryptionContext,
    keys: u64,
}

impl Shared {
    /// One call of `op` by caller `caller`, its `n`th.
    async fn execute(&self, op: Op, caller: usize, n: u64) -> Result<(), String> {
        let spread = (caller as u64).wrapping_add(n);
        match &self.backend {
            Backend::Keyraft {
                clients,
                keys,
                blobs,
                file,
            } => {
                let client = &clients[caller % clients.len()];
                let pick = |list_len: usize| (spread % list_len.max(1) as u64) as usize;
                let key = keys
                    .get(pick(keys.len()))
                    .map(String::as_str)
                    .unwrap_or_default();
                let code = |e: Error| error_code(&e);
                match op {
                    Op::Encrypt => client
                        .encrypt(key, &self.payload, &self.context)
                        .await
                        .map(|_| ())
                        .map_err(code),
                    Op::Decrypt => {
                        let blob = blobs.get(pick(blobs.len())).ok_or("NoCiphertext")?;
                        client
                            .decrypt(blob, &self.context, None)
                            .await
                            .map(|_| ())
                            .map_err(code)
                    }
                    Op::GenerateDataKey => client
                        .generate_data_key(key, "AES_256", 0, &self.context)
                        .await
                        .map(|_| ())
                        .map_err(code),
                    Op::CreateKey => client
                        .create_key("keyraft-bench")
                        .await
                        .map(|_| ())
                        .map_err(code),
                    Op::DescribeKey => client.describe_key(key).await.map(|_| ()).map_err(code),
                    Op::Envelope => {
                        let path = file.as_ref().ok_or("NoFile")?;
                        let input = tokio::fs::File::open(path)
                            .await
                            .map_err(|_| "IoError".to_string())?;
                        encrypt_stream(
                            client.as_ref(),
                            key,
                            &self.context,
                            tokio::io::BufReader::new(input),
                            tokio::io::sink(),
                            &EncryptOptions::default(),
                            None,
                        )
                        .await
                        .map(|_| ())
                        .map_err(|e| envelope_error_code(&e))
                    }
                    Op::NoopRpc | Op::EtcdPut => Err("NotAKeyraftCall".into()),
                }
            }
            Backend::Noop { clients, .. } => clients[caller % clients.len()]
                .call()
                .await
                .map_err(|s| format!("grpc:{:?}", s.code())),
            Backend::Etcd { clients } => {
                let key = format!("bench/{:08}", spread % self.keys.max(1)).into_bytes();
                clients[caller % clients.len()]
                    .put(key, self.payload.clone(), Duration::from_secs(30))
                    .await
                    .map_err(|s| etcd::error_code(&s))
            }
        }
    }
}

async fn load(conn: &Connection, args: LoadArgs) -> Result<ExitCode, String> {
    let plan = plan(&args)?;
    // A process id that cannot be read fails now, not after the run.
    if !args.cpu_pids.is_empty() {
        cpu::CpuMeter::start(&args.cpu_pids).map_err(|e| format!("--cpu-pids: {e}"))?;
    }
    let payload = vec![0x5a; args.payload_bytes];
    let (backend, target) = if plan.mix.ops().any(|o| o == Op::NoopRpc) {
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let server = NoopServer::start(workers)?;
        let mut clients = Vec::new();
        for _ in 0..plan.clients {
            clients.push(NoopClient::connect(server.addr()).await?);
        }
        let target = format!("in-process no-op server at {}", server.addr());
        (
            Backend::Noop {
                _server: server,
                clients,
            },
            target,
        )
    } else if plan.mix.ops().any(|o| o == Op::EtcdPut) {
        let clients = (0..plan.clients)
            .map(|i| EtcdClient::new(&args.etcd_endpoints[i % args.etcd_endpoints.len()]))
            .collect::<Result<Vec<_>, _>>()?;
        (
            Backend::Etcd { clients },
            format!("etcd {}", args.etcd_endpoints.join(",")),
        )
    } else {
        keyraft_backend(conn, &args, &plan, &payload).await?
    };
    let shared = Arc::new(Shared {
        backend,
        mix: plan.mix.clone(),
        payload,
        context: EncryptionContext::new(),
        keys: args.keys as u64,
    });
    let progress = args.progress || std::io::stderr().is_terminal();
    let outcome = drive(shared, &plan, args.warmup, &args.cpu_pids, progress).await;
    // A process that went away during the run (a node killed on purpose, say) costs the
    // report its CPU numbers, not the latencies.
    let cpu = match outcome.cpu {
        Ok(report) => Some(report),
        Err(e) => {
            eprintln!("keyraft bench: no CPU time per call in this report: {e}");
            None
        }
    };

    let mut operations = BTreeMap::new();
    for (op, stats) in &outcome.operations {
        operations.insert(op.to_string(), stats.summary(outcome.elapsed));
    }
    let report = Report {
        workload: Workload::to_possible_value(&args.workload)
            .map(|v| v.get_name().to_string())
            .unwrap_or_default(),
        mix: (args.workload == Workload::Mix).then(|| plan.mix.to_string()),
        target,
        concurrency: plan.concurrency,
        clients: plan.clients,
        payload_bytes: args.payload_bytes,
        key_policy: args.key_policy.as_ref().map(|p| p.display().to_string()),
        warmup_s: args.warmup.as_secs_f64(),
        duration_s: outcome.elapsed.as_secs_f64(),
        operations,
        cpu,
    };
    if let Some(path) = &args.csv {
        std::fs::write(path, stats::csv(&outcome.ticks))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    print_report(args.json, &report, || report.table())
}

/// The client settings from the connection flags and `KEYRAFT_*`, with the bench's
/// user agent.
fn client_config(conn: &Connection) -> Result<ClientConfig, String> {
    let mut config = crate::commands::client_config(conn).map_err(|e| e.to_string())?;
    config.user_agent = format!("keyraft-bench/{}", env!("CARGO_PKG_VERSION"));
    Ok(config)
}

/// Finds the target endpoints, raises the quota, creates keys and ciphertexts, and
/// makes the callers' clients.
async fn keyraft_backend(
    conn: &Connection,
    args: &LoadArgs,
    plan: &Plan,
    payload: &[u8],
) -> Result<(Backend, String), String> {
    let config = client_config(conn)?;
    // A separate client for discovery and setup: `cluster_status` teaches a client
    // every member, which the callers' clients must not learn for leader/follower.
    let setup = Arc::new(Client::new(config.clone()).map_err(|e| e.to_string())?);
    let endpoints = match &args.target {
        Target::Endpoint(u) => vec![u.clone()],
        target => {
            let status = setup
                .cluster_status()
                .await
                .map_err(|e| format!("cluster status: {e}"))?;
            let leader = status.members.iter().find(|m| m.id == status.leader);
            match target {
                Target::Leader => vec![leader
                    .ok_or("the cluster has no leader now")?
                    .endpoint
                    .clone()],
                Target::Follower => vec![status
                    .members
                    .iter()
                    .find(|m| m.id != status.leader && m.reachable)
                    .ok_or("no reachable follower")?
                    .endpoint
                    .clone()],
                _ => status.members.iter().map(|m| m.endpoint.clone()).collect(),
            }
        }
    };
    if plan.mix.ops().any(|o| o == Op::CreateKey) && !args.no_raise_quota {
        raise_quota(&setup).await;
    }
    let needs_key = plan.mix.ops().any(Op::needs_key);
    let keys = if !args.key_ids.is_empty() {
        args.key_ids.clone()
    } else if needs_key {
        let policy = match &args.key_policy {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("reading the key policy {}: {e}", path.display()))?,
            ),
            None => None,
        };
        let mut set = JoinSet::new();
        for _ in 0..args.keys {
            let setup = setup.clone();
            let policy = policy.clone();
            set.spawn(async move {
                let meta = setup
                    .create_key("keyraft-bench")
                    .await
                    .map_err(|e| format!("creating a key: {e}"))?;
                if let Some(policy) = policy {
                    setup
                        .put_key_policy(&meta.arn, &policy)
                        .await
                        .map_err(|e| format!("putting the key policy: {e}"))?;
                }
                Ok::<_, String>(meta)
            });
        }
        let mut keys = Vec::new();
        while let Some(joined) = set.join_next().await {
            let meta = joined.map_err(|e| e.to_string())??;
            keys.push(meta.arn);
        }
        keys
    } else {
        Vec::new()
    };
    let mut blobs = Vec::new();
    if plan.mix.ops().any(|o| o == Op::Decrypt) {
        for key in &keys {
            let ct = setup
                .encrypt(key, payload, &EncryptionContext::new())
                .await
                .map_err(|e| format!("encrypting the decrypt workload's ciphertext: {e}"))?;
            blobs.push(ct.ciphertext_blob);
        }
    }
    if let Some(file) = &args.file {
        std::fs::metadata(file).map_err(|e| format!("--file {}: {e}", file.display()))?;
    }
    // Over all members the callers' clients are the SDK as applications use it, with
    // discovery: mutations go to the leader (one hop), reads and cryptography to the
    // node with the fewest calls in flight. Pinned to one node, they only use that one.
    let options = match args.target {
        Target::All => ClientOptions::default(),
        _ => ClientOptions::pinned(),
    };
    let mut clients = Vec::new();
    for _ in 0..plan.clients {
        let mut c = config.clone();
        c.endpoints = endpoints.clone();
        let client = Client::with_options(c, options.clone()).map_err(|e| e.to_string())?;
        clients.push(Arc::new(client));
    }
    let target = format!("{} ({})", args.target, endpoints.join(","));
    Ok((
        Backend::Keyraft {
            clients,
            keys,
            blobs,
            file: args.file.clone(),
        },
        target,
    ))
}

/// Lifts the caller's key quota far above what a run can create, if allowed.
async fn raise_quota(client: &Client) {
    const ROOM: u64 = 10_000_000;
    match client.get_quota(None).await {
        Ok(q) if q.keys_limit >= q.keys_used.saturating_add(ROOM) => {}
        Ok(q) => {
            if let Err(e) = client
                .set_quota(None, q.keys_used.saturating_add(ROOM), 0)
                .await
            {
                eprintln!("keyraft bench: could not raise the key quota ({e}); CreateKey may hit LimitExceededException");
            }
        }
        Err(e) => eprintln!("keyraft bench: could not read the key quota ({e})"),
    }
}

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// The coordinator's signals to the callers.
struct Control {
    phase: AtomicU8,
    issued: AtomicU64,
    count: Option<u64>,
}

/// What a load run measured.
struct Outcome {
    operations: BTreeMap<&'static str, OpStats>,
    elapsed: Duration,
    ticks: Vec<Tick>,
    /// CPU per call over the measured window, or why it could not be measured.
    cpu: Result<cpu::CpuReport, String>,
}

/// Runs the callers through warm-up and measurement; ticks once a second. The CPU time
/// of this process and of `cpu_pids` is sampled as the measured window opens and after
/// its last call.
async fn drive(
    shared: Arc<Shared>,
    plan: &Plan,
    warmup: Duration,
    cpu_pids: &[u32],
    progress: bool,
) -> Outcome {
    let control = Arc::new(Control {
        phase: AtomicU8::new(WARMUP),
        issued: AtomicU64::new(0),
        count: match plan.limit {
            Limit::Count(n) => Some(n),
            Limit::Duration(_) => None,
        },
    });
    let recorders: Vec<Arc<Mutex<Recorder>>> = (0..plan.concurrency)
        .map(|_| Arc::new(Mutex::new(Recorder::default())))
        .collect();
    let mut callers = JoinSet::new();
    for (i, rec) in recorders.iter().enumerate() {
        callers.spawn(caller(i, shared.clone(), control.clone(), rec.clone()));
    }
    if !warmup.is_zero() {
        if progress {
            eprint!("\rwarming up for {:.1} s ...", warmup.as_secs_f64());
        }
        tokio::time::sleep(warmup).await;
    }
    control.phase.store(MEASURE, Ordering::SeqCst);
    let start = Instant::now();
    let meter = cpu::CpuMeter::start(cpu_pids);
    let deadline = match plan.limit {
        Limit::Duration(d) => Some(start + d),
        Limit::Count(_) => None,
    };
    let mut tick = tokio::time::interval_at(
        (start + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    let stop_at = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop_at);
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    let mut stopping = false;
    let mut ticks = Vec::new();
    let mut second = 0;
    let take_tick = |second: u64| {
        let mut h = stats::histogram();
        let mut errors = 0;
        for rec in &recorders {
            rec.lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain_interval(&mut h, &mut errors);
        }
        Tick::new(second, &h, errors)
    };
    loop {
        tokio::select! {
            _ = tick.tick() => {
                second += 1;
                let t = take_tick(second);
                if progress {
                    eprint!(
                        "\r{:>5} s {:>10.0} ops/s  p50 {:>8.2} ms  p99 {:>8.2} ms  errors {:<8}",
                        t.second, t.ops, t.p50_ms, t.p99_ms, t.errors
                    );
                }
                ticks.push(t);
            }
            _ = &mut stop_at, if !stopping => {
                stopping = true;
                control.phase.store(STOP, Ordering::SeqCst);
            }
            _ = &mut interrupt, if !stopping => {
                stopping = true;
                control.phase.store(STOP, Ordering::SeqCst);
            }
            joined = callers.join_next() => {
                if joined.is_none() {
                    break;
                }
            }
        }
    }
    let elapsed = start.elapsed();
    let last = take_tick(second + 1);
    if last.ops > 0 || last.errors > 0 {
        ticks.push(last);
    }
    if progress {
        eprintln!();
    }
    let mut operations = BTreeMap::new();
    for rec in &recorders {
        rec.lock()
            .unwrap_or_else(|p| p.into_inner())
            .merge_into(&mut operations);
    }
    let calls = operations.values().map(OpStats::calls).sum();
    let cpu = meter.and_then(|m| m.finish(calls));
    Outcome {
        operations,
        elapsed,
        ticks,
        cpu,
    }
}

/// One closed-loop caller.
async fn caller(i: usize, shared: Arc<Shared>, control: Arc<Control>, rec: Arc<Mutex<Recorder>>) {
    let mut n = 0u64;
    loop {
        let measuring = match control.phase.load(Ordering::SeqCst) {
            STOP => break,
            MEASURE => true,
            _ => false,
        };
        if measuring {
            if let Some(limit) = control.count {
                if control.issued.fetch_add(1, Ordering::SeqCst) >= limit {
                    break;
                }
            }
        }
        let op = shared.mix.draw();
        let start = Instant::now();
        let outcome = shared.execute(op, i, n).await;
        let latency = start.elapsed();
        if measuring {
            rec.lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(op.name(), latency, &outcome);
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn load_args(args: &[&str]) -> Result<LoadArgs, String> {
        let mut all = vec!["bench"];
        all.extend_from_slice(args);
        let cli = Cli::try_parse_from(all).map_err(|e| e.to_string())?;
        Ok(cli.args.load)
    }

    #[test]
    fn defaults_are_a_ten_second_encrypt_run() {
        let a = load_args(&[]).unwrap();
        let p = plan(&a).unwrap();
        assert_eq!(a.workload, Workload::Encrypt);
        assert_eq!(p.mix, Mix::single(Op::Encrypt));
        assert_eq!(p.limit, Limit::Duration(Duration::from_secs(10)));
        assert_eq!((p.concurrency, p.clients), (16, 8));
        assert_eq!(a.warmup, Duration::from_secs(2));
        assert_eq!(a.target, Target::All);
        assert_eq!(a.payload_bytes, 64);
        assert!(!a.json);
    }

    #[test]
    fn every_flag_parses() {
        let a = load_args(&[
            "--workload",
            "generate-data-key",
            "--payload-bytes",
            "200",
            "--keys",
            "3",
            "--key-id",
            "alias/a",
            "--key-id",
            "alias/b",
            "--concurrency",
            "64",
            "--clients",
            "4",
            "--duration",
            "1m",
            "--warmup",
            "500ms",
            "--target",
            "follower",
            "--json",
            "--csv",
            "out.csv",
            "--progress",
        ])
        .unwrap();
        let p = plan(&a).unwrap();
        assert_eq!(p.mix, Mix::single(Op::GenerateDataKey));
        assert_eq!(p.limit, Limit::Duration(Duration::from_secs(60)));
        assert_eq!((p.concurrency, p.clients), (64, 4));
        assert_eq!(a.key_ids, vec!["alias/a", "alias/b"]);
        assert_eq!(a.warmup, Duration::from_millis(500));
        assert_eq!(a.target, Target::Follower);
        assert!(a.json && a.progress);
        assert_eq!(a.csv, Some(PathBuf::from("out.csv")));

        let a = load_args(&[
            "--workload",
            "create-key",
            "--count",
            "50",
            "--concurrency",
            "2",
        ])
        .unwrap();
        let p = plan(&a).unwrap();
        assert_eq!(p.limit, Limit::Count(50));
        assert_eq!(p.clients, 2, "never more clients than callers");

        let a = load_args(&["--target", "http://127.0.0.1:7102"]).unwrap();
        assert_eq!(a.target, Target::Endpoint("http://127.0.0.1:7102".into()));
        let a = load_args(&[
            "--workload",
            "etcd-put",
            "--etcd-endpoints",
            "http://127.0.0.1:1,http://127.0.0.1:2",
        ])
        .unwrap();
        assert_eq!(a.etcd_endpoints.len(), 2);
        assert_eq!(plan(&a).unwrap().mix, Mix::single(Op::EtcdPut));
    }

    #[test]
    fn bad_flag_combinations_are_refused() {
        assert!(load_args(&["--duration", "1s", "--count", "5"]).is_err());
        assert!(load_args(&["--target", "somewhere"]).is_err());
        assert!(load_args(&["--workload", "nothing"]).is_err());
        assert!(load_args(&["--duration", "soon"]).is_err());
        let refused = |args: &[&str]| plan(&load_args(args).unwrap()).is_err();
        assert!(refused(&["--concurrency", "0"]));
        assert!(refused(&["--count", "0"]));
        assert!(refused(&["--workload", "envelope"]), "needs --file");
        assert!(refused(&["--workload", "etcd-put"]), "needs endpoints");
        assert!(refused(&["--mix", "encrypt=1"]), "--mix without mix");
        assert!(refused(&["--keys", "0"]));
        assert!(!refused(&["--workload", "create-key", "--keys", "0"]));
    }

    #[test]
    fn the_failover_subcommand_parses() {
        let cli = Cli::try_parse_from([
            "bench", "failover", "--system", "etcd", "--runs", "3", "--nodes", "5", "--json",
        ])
        .unwrap();
        match cli.args.command {
            Some(BenchCommand::Failover(f)) => {
                assert_eq!(f.system, failover::System::Etcd);
                assert_eq!((f.runs, f.nodes, f.concurrency), (3, 5, 4));
                assert!(f.json);
            }
            Some(BenchCommand::Growth(_)) => panic!("not failover"),
            None => panic!("no subcommand"),
        }
    }

    #[test]
    fn the_keyraft_command_line_reaches_bench() {
        let cli = crate::Cli::try_parse_from([
            "keyraft",
            "bench",
            "--workload",
            "encrypt",
            "--key-id",
            "K",
            "--concurrency",
            "64",
            "--duration",
            "10s",
            "--json",
        ])
        .unwrap();
        match cli.command {
            crate::Top::Bench { args, .. } => {
                assert_eq!(args.load.concurrency, 64);
                assert_eq!(args.load.key_ids, vec!["K"]);
            }
            _ => panic!("not bench"),
        }
    }

    #[test]
    fn mixes_parse_and_draw_in_proportion() {
        let m = parse_mix("encrypt=8, decrypt=1,create-key=1").unwrap();
        assert_eq!(m.total, 10);
        assert_eq!(m.to_string(), "encrypt=8,decrypt=1,create-key=1");
        let picks: Vec<Op> = (0..10).map(|r| m.pick(r)).collect();
        assert_eq!(picks.iter().filter(|o| **o == Op::Encrypt).count(), 8);
        assert_eq!(picks[8], Op::Decrypt);
        assert_eq!(picks[9], Op::CreateKey);
        // Zero weights drop out.
        let m = parse_mix("describe-key=0,generate-data-key=3").unwrap();
        assert_eq!(m.weights, vec![(Op::GenerateDataKey, 3)]);
        assert_eq!(m.draw(), Op::GenerateDataKey);

        for bad in [
            "",
            "encrypt",
            "encrypt=x",
            "encrypt=-1",
            "encrypt=0",
            "sign=1",
            "noop-rpc=1",
            "encrypt=1,encrypt=2",
            "encrypt=4294967295,decrypt=1",
        ] {
            assert!(parse_mix(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn the_json_report_has_the_documented_shape() {
        let mut s = OpStats::new();
        for i in 1..=100 {
            s.ok(Duration::from_micros(i * 100));
        }
        s.error("ThrottlingException");
        let report = Report {
            workload: "encrypt".into(),
            mix: None,
            target: "all".into(),
            concurrency: 64,
            clients: 8,
            payload_bytes: 64,
            key_policy: None,
            warmup_s: 2.0,
            duration_s: 10.0,
            operations: BTreeMap::from([(
                "Encrypt".to_string(),
                s.summary(Duration::from_secs(10)),
            )]),
            cpu: Some(cpu::CpuReport {
                bench_us_per_call: 48.5,
                processes_us_per_call: Some(300.0),
                per_process_us_per_call: BTreeMap::from([
                    ("101".to_string(), 160.0),
                    ("102".to_string(), 140.0),
                ]),
            }),
        };
        let v: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
        assert_eq!(v["workload"], "encrypt");
        assert_eq!(v["concurrency"], 64);
        assert_eq!(v["duration_s"], 10.0);
        assert!(v.get("mix").is_none());
        let enc = &v["operations"]["Encrypt"];
        for field in [
            "count",
            "ops_per_s",
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "p999_ms",
            "max_ms",
        ] {
            assert!(enc[field].is_number(), "{field} missing in {enc}");
        }
        assert_eq!(enc["count"], 100);
        assert_eq!(enc["ops_per_s"], 10.0);
        assert_eq!(enc["errors"]["ThrottlingException"], 1);
        assert_eq!(v["cpu"]["bench_us_per_call"], 48.5);
        assert_eq!(v["cpu"]["processes_us_per_call"], 300.0);
        assert_eq!(v["cpu"]["per_process_us_per_call"]["101"], 160.0);
        let table = report.table();
        assert!(table.contains("Encrypt"), "{table}");
        assert!(table.contains("ThrottlingException=1"), "{table}");
        assert!(
            table.contains("CPU per call: bench 48 µs; processes 300 µs (101: 160, 102: 140)"),
            "{table}"
        );
    }

    #[test]
    fn error_codes_are_aws_names_or_transport() {
        let e = Error::Service(keyraft_client::KmsError::validation("x"));
        assert_eq!(error_code(&e), "ValidationException");
        assert_eq!(
            error_code(&Error::Transport("down".into())),
            "TransportError"
        );
        assert_eq!(
            envelope_error_code(&EnvelopeError::Kms(Error::Transport("down".into()))),
            "TransportError"
        );
    }

    #[tokio::test]
    async fn a_noop_run_by_count_records_exactly_that_many_calls() {
        let a = load_args(&[
            "--workload",
            "noop-rpc",
            "--count",
            "300",
            "--concurrency",
            "8",
            "--clients",
            "2",
            "--warmup",
            "0s",
        ])
        .unwrap();
        let p = plan(&a).unwrap();
        let server = NoopServer::start(1).unwrap();
        let mut clients = Vec::new();
        for _ in 0..p.clients {
            clients.push(NoopClient::connect(server.addr()).await.unwrap());
        }
        let shared = Arc::new(Shared {
            backend: Backend::Noop {
                _server: server,
                clients,
            },
            mix: p.mix.clone(),
            payload: Vec::new(),
            context: EncryptionContext::new(),
            keys: 1,
        });
        let out = drive(shared, &p, a.warmup, &[], false).await;
        let s = out.operations["NoopRpc"].summary(out.elapsed);
        assert_eq!(s.count, 300);
        // Without --cpu-pids only the bench's own CPU time is reported.
        let cpu = out.cpu.expect("this process's CPU time is readable");
        assert!(cpu.processes_us_per_call.is_none(), "{cpu:?}");
        assert!(cpu.per_process_us_per_call.is_empty(), "{cpu:?}");
        assert!(s.errors.is_empty(), "{s:?}");
        let ticked: u64 = out.ticks.iter().map(|t| t.ops).sum();
        assert_eq!(ticked, 300, "every call is in exactly one tick");
    }
}
