//! `keyraft bench failover`: how long a cluster is unavailable for writes after its
//! leader is killed with SIGKILL under load.
//!
//! The bench starts a cluster of its own in a temporary directory — Keyraft nodes
//! through `keyraft-testkit`'s [`LocalCluster`] (the `keyraft` binary that is running,
//! on its default Raft timing), or etcd members through [`EtcdCluster`] — because it
//! must own the processes to kill them at a known instant. Then, `--runs` times:
//!
//! 1. `--concurrency` callers write (CreateKey through the Keyraft client; etcd puts
//!    of `--payload-bytes`) in closed loops for `--settle`;
//! 2. the leader (from `ClusterStatus`, or etcd's `Maintenance/Status`) is killed and
//!    reaped: that is *t₀*;
//! 3. from *t₀* on, a fresh probe call starts every 10 ms — each a whole logical call,
//!    with the client's retries: the Keyraft client's own backoff (25 ms doubling to
//!    1 s, with jitter), and for etcd a retry on the next member every 25 ms, as
//!    etcd's Go client does;
//! 4. the **failover time** is from *t₀* to the earliest completion of a probe that
//!    succeeded. Probes, not the load callers, decide it: a load caller is usually in
//!    the middle of a retry backoff when the new leader appears, and a call started
//!    before *t₀* could have been answered by the old leader just before it died;
//! 5. the killed node is restarted and the bench waits until the cluster is whole.
//!    The run's load figures (errors, slowest call) cover the kill up to this point,
//!    and the bench waits for every load call in flight at the kill to return first.
//!
//! The number includes failure detection (election timeout), the election, the new
//! leader's first commit and the client's retry granularity (up to 10 ms from the probe
//! schedule, plus the backoff of the probe that won). The report also gives, per run,
//! the load callers' errors and their slowest call.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde::Serialize;
use tokio::task::JoinSet;

use keyraft_client::Client;
use keyraft_testkit::LocalCluster;

use super::etcd::{put_with_retry, EtcdClient, EtcdCluster};
use super::{error_code, prepare_keyraft, print_report, BenchDir};

/// `keyraft bench failover` flags.
#[derive(Args, Debug, Clone)]
pub(crate) struct FailoverArgs {
    /// Which system to measure: keyraft (CreateKey) or etcd (puts).
    #[arg(long, value_enum, default_value_t = System::Keyraft)]
    pub(crate) system: System,
    /// Cluster size.
    #[arg(long, default_value_t = 3)]
    pub(crate) nodes: usize,
    /// How many times to kill the leader.
    #[arg(long, default_value_t = 5)]
    pub(crate) runs: usize,
    /// Callers writing in closed loops during the runs.
    #[arg(long, default_value_t = 4)]
    pub(crate) concurrency: usize,
    /// How long the load runs before each kill.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub(crate) settle: Duration,
    /// The etcd binary (`--system etcd`).
    #[arg(long, default_value = "etcd")]
    pub(crate) etcd_bin: PathBuf,
    /// Value size of the etcd puts.
    #[arg(long, default_value_t = 200)]
    pub(crate) payload_bytes: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Keep the cluster's data and node logs in this (new or empty) directory instead
    /// of a temporary one that is removed at the end.
    #[arg(long)]
    pub(crate) dir: Option<PathBuf>,
}

/// The system under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum System {
    /// A Keyraft cluster of `keyraft server` processes.
    Keyraft,
    /// An etcd cluster of `etcd` processes.
    Etcd,
}

/// One kill.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Run {
    /// 1-based.
    pub(crate) run: usize,
    /// The killed member (Keyraft node id; etcd member number).
    pub(crate) killed: u64,
    /// From the kill to the first successful probe.
    pub(crate) failover_ms: f64,
    /// Failed load calls from the kill until the cluster was whole again (after their
    /// own retries).
    pub(crate) load_errors: u64,
    /// The slowest load call in that time.
    pub(crate) load_max_ms: f64,
}

/// What `--json` prints.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FailoverReport {
    /// keyraft or etcd.
    pub(crate) system: System,
    /// Cluster size.
    pub(crate) nodes: usize,
    /// Load callers.
    pub(crate) concurrency: usize,
    /// Each kill.
    pub(crate) runs: Vec<Run>,
    /// Median failover time.
    pub(crate) median_ms: f64,
    /// Fastest.
    pub(crate) min_ms: f64,
    /// Slowest.
    pub(crate) max_ms: f64,
}

impl FailoverReport {
    /// A report of `runs`, with their median and extremes.
    pub(crate) fn new(system: System, nodes: usize, concurrency: usize, runs: Vec<Run>) -> Self {
        let times: Vec<f64> = runs.iter().map(|r| r.failover_ms).collect();
        FailoverReport {
            system,
            nodes,
            concurrency,
            median_ms: median(&times),
            min_ms: times.iter().copied().reduce(f64::min).unwrap_or(0.0),
            max_ms: times.iter().copied().reduce(f64::max).unwrap_or(0.0),
            runs,
        }
    }

    /// The table printed without `--json`.
    pub(crate) fn table(&self) -> String {
        let system = match self.system {
            System::Keyraft => "keyraft",
            System::Etcd => "etcd",
        };
        let mut out = format!(
            "failover of {system} ({} nodes, {} writers; SIGKILL of the leader, time to the first successful write after it)\n",
            self.nodes, self.concurrency
        );
        out.push_str("run  killed  failover ms  load errors  load max ms\n");
        for r in &self.runs {
            out.push_str(&format!(
                "{:<4} {:<7} {:>11.1} {:>12} {:>12.1}\n",
                r.run, r.killed, r.failover_ms, r.load_errors, r.load_max_ms
            ));
        }
        out.push_str(&format!(
            "median {:.1} ms (min {:.1}, max {:.1})\n",
            self.median_ms, self.min_ms, self.max_ms
        ));
        out
    }
}

/// The median of `values` (the mean of the middle two for an even count; 0 if empty).
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs the measurement and prints the report.
pub(crate) async fn run(args: FailoverArgs) -> Result<ExitCode, String> {
    if args.nodes < 3 {
        return Err("failover needs at least 3 nodes".into());
    }
    if args.runs == 0 || args.concurrency == 0 {
        return Err("--runs and --concurrency must be at least 1".into());
    }
    let dir = BenchDir::new(args.dir.as_deref(), "keyraft-bench-failover-")?;
    let mut cluster = match args.system {
        System::Keyraft => Cluster::Keyraft(Box::new(prepare_keyraft(dir.path(), args.nodes)?)),
        System::Etcd => Cluster::Etcd(EtcdCluster::prepare(
            dir.path(),
            &args.etcd_bin,
            args.nodes,
        )?),
    };
    eprintln!(
        "keyraft bench failover: starting {} {} nodes ...",
        args.nodes,
        match args.system {
            System::Keyraft => "Keyraft",
            System::Etcd => "etcd",
        }
    );
    cluster.start_all()?;
    cluster.wait_ready().await?;
    let writer = cluster.writer(args.payload_bytes).await?;

    let watch = Arc::new(Watch::new(args.concurrency));
    let mut load = JoinSet::new();
    for i in 0..args.concurrency {
        let (writer, watch) = (writer.clone(), watch.clone());
        load.spawn(async move {
            let mut n = 0u64;
            while !watch.stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                let outcome = writer.write(i, n).await;
                let us = start.elapsed().as_micros() as u64;
                watch.load_max_us.fetch_max(us, Ordering::Relaxed);
                if outcome.is_err() {
                    watch.load_errors.fetch_add(1, Ordering::Relaxed);
                }
                watch.completed[i].fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        });
    }

    let mut runs = Vec::new();
    let outcome = async {
        for run in 1..=args.runs {
            tokio::time::sleep(args.settle).await;
            let leader = cluster.leader().await?;
            watch.reset();
            let killed_at = Instant::now();
            cluster.kill(leader)?;
            let in_flight = watch.completed_counts();
            let probes = spawn_probes(writer.clone(), watch.clone(), killed_at);
            let first_ok = wait_first_ok(&watch, Duration::from_secs(60)).await;
            probes.abort();
            let first_ok = first_ok.ok_or("no write succeeded within 60 s of the kill")?;
            let failover_ms = first_ok.duration_since(killed_at).as_secs_f64() * 1000.0;
            eprintln!(
                "run {run}: killed {}, first write after {failover_ms:.1} ms",
                cluster.display_id(leader)
            );
            cluster.start(leader)?;
            cluster.wait_ready().await?;
            // Count the load calls the kill stalled: wait until every caller has
            // finished the call it had in flight at the kill (each ends within its 30 s
            // deadline).
            watch
                .wait_completed_since(&in_flight, Duration::from_secs(40))
                .await;
            runs.push(Run {
                run,
                killed: cluster.display_id(leader),
                failover_ms,
                load_errors: watch.load_errors.load(Ordering::Relaxed),
                load_max_ms: watch.load_max_us.load(Ordering::Relaxed) as f64 / 1000.0,
            });
        }
        Ok::<(), String>(())
    }
    .await;
    watch.stop.store(true, Ordering::Relaxed);
    // Load calls end within their own deadline; do not wait for stragglers.
    load.abort_all();
    drop(cluster);
    outcome?;

    let report = FailoverReport::new(args.system, args.nodes, args.concurrency, runs);
    print_report(args.json, &report, || report.table())
}

/// What the callers and probes report to the coordinator.
struct Watch {
    stop: AtomicBool,
    load_errors: AtomicU64,
    load_max_us: AtomicU64,
    /// Calls each load caller has finished.
    completed: Vec<AtomicU64>,
    first_ok: Mutex<Option<Instant>>,
}

impl Watch {
    fn new(callers: usize) -> Watch {
        Watch {
            stop: AtomicBool::new(false),
            load_errors: AtomicU64::new(0),
            load_max_us: AtomicU64::new(0),
            completed: (0..callers).map(|_| AtomicU64::new(0)).collect(),
            first_ok: Mutex::new(None),
        }
    }

    fn completed_counts(&self) -> Vec<u64> {
        self.completed
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// Waits (at most `timeout`) until every caller has finished a call since `before`.
    async fn wait_completed_since(&self, before: &[u64], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let now = self.completed_counts();
            if now.iter().zip(before).all(|(n, b)| n > b) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn reset(&self) {
        self.load_errors.store(0, Ordering::Relaxed);
        self.load_max_us.store(0, Ordering::Relaxed);
        *self.first_ok.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn success(&self, at: Instant) {
        let mut first = self.first_ok.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none_or(|f| at < f) {
            *first = Some(at);
        }
    }

    fn first_ok(&self) -> Option<Instant> {
        *self.first_ok.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// From `from` on, one fresh write every 10 ms; each success reports its completion.
fn spawn_probes(writer: Writer, watch: Arc<Watch>, from: Instant) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut probes = JoinSet::new();
        let mut tick = tokio::time::interval_at(from.into(), Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let (writer, watch) = (writer.clone(), watch.clone());
                    n += 1;
                    probes.spawn(async move {
                        if writer.write(usize::MAX, n).await.is_ok() {
                            watch.success(Instant::now());
                        }
                    });
                }
                Some(_) = probes.join_next() => {}
            }
        }
    })
}

async fn wait_first_ok(watch: &Watch, timeout: Duration) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(t) = watch.first_ok() {
            return Some(t);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

enum Cluster {
    Keyraft(Box<LocalCluster>),
    Etcd(EtcdCluster),
}

impl Cluster {
    fn ids(&self) -> Vec<u64> {
        match self {
            Cluster::Keyraft(c) => c.nodes().iter().map(|n| n.id).collect(),
            Cluster::Etcd(c) => (0..c.len() as u64).collect(),
        }
    }

    fn display_id(&self, id: u64) -> u64 {
        match self {
            Cluster::Keyraft(_) => id,
            Cluster::Etcd(_) => id + 1,
        }
    }

    fn start_all(&mut self) -> Result<(), String> {
        for id in self.ids() {
            self.start(id)?;
        }
        Ok(())
    }

    fn start(&mut self, id: u64) -> Result<(), String> {
        match self {
            Cluster::Keyraft(c) => c.start(id).map_err(|e| e.to_string()),
            Cluster::Etcd(c) => c.start(id as usize),
        }
    }

    fn kill(&mut self, id: u64) -> Result<(), String> {
        match self {
            Cluster::Keyraft(c) => c.kill(id).map_err(|e| e.to_string()),
            Cluster::Etcd(c) => c.kill(id as usize),
        }
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let ids = self.ids();
        match self {
            Cluster::Keyraft(c) => c
                .wait_ready(&ids, Duration::from_secs(60))
                .await
                .map_err(|e| e.to_string()),
            Cluster::Etcd(c) => c.wait_ready(Duration::from_secs(60)).await,
        }
    }

    async fn leader(&self) -> Result<u64, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = match self {
                Cluster::Keyraft(c) => {
                    let client = c.client().map_err(|e| e.to_string())?;
                    client
                        .cluster_status()
                        .await
                        .ok()
                        .map(|s| s.leader)
                        .filter(|l| *l != 0)
                }
                Cluster::Etcd(c) => c.leader().await.map(|i| i as u64),
            };
            match found {
                Some(l) => return Ok(l),
                None if Instant::now() > deadline => return Err("no leader found".into()),
                None => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// What the callers use; for Keyraft, also lifts the key quota so that creating
    /// keys for minutes does not run into it.
    async fn writer(&self, payload_bytes: usize) -> Result<Writer, String> {
        match self {
            Cluster::Keyraft(c) => {
                let client = c.client().map_err(|e| e.to_string())?;
                client
                    .set_quota(None, 100_000_000, 0)
                    .await
                    .map_err(|e| format!("raising the key quota: {e}"))?;
                Ok(Writer::Keyraft(Arc::new(client)))
            }
            Cluster::Etcd(c) => {
                let clients = c
                    .endpoints()
                    .iter()
                    .map(|e| EtcdClient::new(e))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Writer::Etcd(Arc::new(clients), vec![b'x'; payload_bytes]))
            }
        }
    }
}

/// One write of the system under test, with the client's retries.
#[derive(Clone)]
enum Writer {
    Keyraft(Arc<Client>),
    Etcd(Arc<Vec<EtcdClient>>, Vec<u8>),
}

impl Writer {
    async fn write(&self, caller: usize, n: u64) -> Result<(), String> {
        match self {
            Writer::Keyraft(c) => c
                .create_key("keyraft-bench failover")
                .await
                .map(|_| ())
                .map_err(|e| error_code(&e)),
            Writer::Etcd(clients, value) => {
                let key = format!("bench/failover/{caller}/{}", n % 1000).into_bytes();
                let deadline = Instant::now() + Duration::from_secs(30);
                put_with_retry(
                    clients,
                    caller.wrapping_add(n as usize),
                    key,
                    value.clone(),
                    deadline,
                )
                .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn report_summarises_the_runs() {
        let run = |run, ms| Run {
            run,
            killed: 1,
            failover_ms: ms,
            load_errors: 0,
            load_max_ms: ms,
        };
        let r = FailoverReport::new(
            System::Etcd,
            3,
            4,
            vec![run(1, 900.0), run(2, 1500.0), run(3, 1100.0)],
        );
        assert_eq!((r.median_ms, r.min_ms, r.max_ms), (1100.0, 900.0, 1500.0));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["system"], "etcd");
        assert_eq!(v["runs"].as_array().unwrap().len(), 3);
        assert_eq!(v["runs"][1]["failover_ms"], 1500.0);
        assert!(r.table().contains("median 1100.0 ms"));
    }
}
