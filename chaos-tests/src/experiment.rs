//! # Experiment files
//!
//! An experiment is a TOML file an SRE can read and change: the cluster, the workload,
//! the faults (a fixed schedule, a seeded random mix, or both), the steady state that
//! must hold before the first fault and after the last heal, the blast radius, the abort
//! conditions, and the checks. `keyraft-chaos run FILE --dry-run` prints the resolved
//! plan without starting anything.
//!
//! ```toml
//! name = "leader-kill"
//! description = "kill -9 the leader under load, restart it 5 s later"
//! seed = 7
//! duration = "30s"            # the workload runs this long
//! checks = ["linearizable", "no_lost_keys", "decrypt_all", "audit", "quota", "liveness", "coverage"]
//! min_ops_per_sec = 5.0
//!
//! [cluster]
//! nodes = 3
//!
//! [workload]
//! clients = 6
//!
//! [[faults]]
//! at = "8s"
//! for = "6s"
//! kind = "kill"
//! target = "leader"
//! ```

use std::path::Path;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::check::CHECKERS;
use crate::workload::{humantime_serde_compat, WorkloadSpec};

/// An experiment file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// A short name (the run directory is named after it).
    pub name: String,
    /// What the experiment shows, for the report.
    #[serde(default)]
    pub description: String,
    /// The seed of the random fault mix and of the workload.
    #[serde(default)]
    pub seed: u64,
    /// How long the workload runs (faults happen inside this window).
    #[serde(with = "humantime_serde_compat")]
    pub duration: Duration,
    /// The cluster to start.
    #[serde(default)]
    pub cluster: ClusterSpec,
    /// The workload.
    #[serde(default)]
    pub workload: WorkloadSpec,
    /// A per-account key quota for the run: the keys that exist before it plus this
    /// many (0: leave the quota alone). Small enough that creates hit it.
    #[serde(default = "default_headroom")]
    pub quota_headroom: u64,
    /// What must hold before the first fault and after the last heal.
    #[serde(default)]
    pub steady_state: SteadyState,
    /// Which nodes faults may touch at once.
    #[serde(default)]
    pub blast_radius: BlastRadius,
    /// When to stop injecting, heal and mark the run aborted.
    #[serde(default)]
    pub abort: AbortConditions,
    /// Faults at fixed times.
    #[serde(default)]
    pub faults: Vec<ScheduledFault>,
    /// A seeded random mix of faults, after (or instead of) the fixed ones.
    #[serde(default)]
    pub random: Option<RandomFaults>,
    /// The checkers to run (all of them when empty).
    #[serde(default)]
    pub checks: Vec<String>,
    /// The coverage checker's minimum rate of completed operations per second.
    #[serde(default = "default_min_rate")]
    pub min_ops_per_sec: f64,
}

fn default_headroom() -> u64 {
    40
}

fn default_min_rate() -> f64 {
    2.0
}

/// The cluster an experiment starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSpec {
    /// 3 or 5 nodes.
    pub nodes: usize,
    /// Take a snapshot after this many log entries and keep only a tenth of that behind
    /// it (small values make restarted and isolated nodes catch up by snapshot).
    pub snapshot_every: Option<u64>,
    /// Give each node's data directory a filesystem of this many MiB (needs root; see
    /// `crate::disk`). Defaults to 128 when a `disk-full` fault is planned.
    pub disk_mib: Option<u64>,
}

impl Default for ClusterSpec {
    fn default() -> ClusterSpec {
        ClusterSpec {
            nodes: 3,
            snapshot_every: None,
            disk_mib: None,
        }
    }
}

impl ClusterSpec {
    /// The default data filesystem size when a disk fault needs one.
    pub const DEFAULT_DISK_MIB: u64 = 128;
}

/// The steady state: a probe window of the workload itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SteadyState {
    /// The share of operations that must complete `ok` in the window (reads and writes
    /// together; definite refusals such as a Disabled key count as ok answers).
    pub min_ok_ratio: f64,
    /// How long each probe window is.
    #[serde(with = "humantime_serde_compat")]
    pub window: Duration,
}

impl Default for SteadyState {
    fn default() -> SteadyState {
        SteadyState {
            min_ok_ratio: 0.9,
            window: Duration::from_secs(2),
        }
    }
}

/// Which nodes faults may touch at once.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlastRadius {
    /// At most this many nodes faulty at once; 0 means "a minority" (the default).
    pub max_faulty: usize,
    /// Nodes no fault may target.
    pub protect: Vec<u64>,
}

impl BlastRadius {
    /// The most nodes that may be faulty at once in a cluster of `nodes`.
    pub fn limit(&self, nodes: usize) -> usize {
        if self.max_faulty == 0 {
            nodes.saturating_sub(1) / 2
        } else {
            self.max_faulty.min(nodes)
        }
    }
}

/// Conditions that stop a run early: faults are healed and the verdict is `unknown`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AbortConditions {
    /// Abort when the share of `ok` completions over `window` drops below this while
    /// faults are active (0: never).
    pub ok_ratio_below: f64,
    /// The window of that ratio.
    #[serde(with = "humantime_serde_compat")]
    pub window: Duration,
    /// Abort when nodes exit on their own (not killed by the nemesis) this many times.
    pub max_crashes: u32,
}

impl Default for AbortConditions {
    fn default() -> AbortConditions {
        AbortConditions {
            ok_ratio_below: 0.0,
            window: Duration::from_secs(20),
            max_crashes: 3,
        }
    }
}

/// A fault at a fixed time (unknown fields are refused by [`Fault`], which takes every
/// field but `at` and `for`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduledFault {
    /// When it starts, from the start of the workload.
    #[serde(with = "humantime_serde_compat")]
    pub at: Duration,
    /// How long it lasts before it is healed.
    #[serde(rename = "for", with = "humantime_serde_compat")]
    pub lasts: Duration,
    /// The fault.
    #[serde(flatten)]
    pub fault: Fault,
}

/// A seeded random mix of faults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomFaults {
    /// The first random fault starts this long into the workload.
    #[serde(default, with = "humantime_serde_compat")]
    pub start: Duration,
    /// Quiet time between a heal and the next fault: "2s..6s".
    pub interval: String,
    /// How long each fault lasts: "3s..8s".
    pub lasts: String,
    /// The faults to pick from (uniformly).
    pub faults: Vec<Fault>,
}

/// A node a fault acts on, resolved when the fault starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// The current leader.
    Leader,
    /// A follower, picked at random.
    Follower,
    /// Any node, picked at random.
    Random,
    /// This node.
    #[serde(untagged)]
    Node(u64),
}

/// A partition's shape (see `crate::net` for what each blocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shape {
    /// The target cannot talk to anyone, nor anyone to it.
    Isolate,
    /// Messages from the target to every other node are dropped; the other way works.
    OneWayFrom,
    /// Messages to the target from every other node are dropped; the other way works.
    OneWayTo,
    /// The leader and up to one other node are cut off from the majority.
    LeaderMinority,
    /// Two halves (the larger one is a majority).
    Halves,
    /// Two halves joined only through one bridging node.
    Bridge,
    /// Every node sees a different majority (5 nodes).
    MajoritiesRing,
}

/// A fault. The nemesis injects it at its start and heals it at its end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Fault {
    /// `kill -9`; healed by restarting the node.
    Kill {
        /// The node.
        target: Target,
    },
    /// SIGSTOP; healed by SIGCONT.
    Pause {
        /// The node.
        target: Target,
    },
    /// SIGTERM then start again at once (a rolling restart).
    Restart {
        /// The node.
        target: Target,
    },
    /// A network partition of node-to-node links.
    Partition {
        /// The shape.
        shape: Shape,
        /// The node the shape is built around (isolate, one-way); ignored by shapes
        /// that pick their own.
        #[serde(default = "leader")]
        target: Target,
    },
    /// Delay on every node-to-node link to and from the target.
    Delay {
        /// The node.
        target: Target,
        /// Added latency, ms.
        ms: u64,
        /// Uniform jitter on top, ms.
        #[serde(default)]
        jitter_ms: u64,
    },
    /// Packet loss on links to and from the target (TCP turns loss into retransmission
    /// delay; the proxy emulates that).
    Loss {
        /// The node.
        target: Target,
        /// Percent of chunks that are "lost" once.
        percent: u8,
    },
    /// Reset every node-to-node connection of the target (repeatedly while active).
    Reset {
        /// The node.
        target: Target,
    },
    /// Arms a server fail point (the binary must be built with `failpoints`).
    Failpoint {
        /// The node.
        target: Target,
        /// The fail point's name.
        name: String,
        /// Actions in fail's syntax: `return`, `50%return`, `1*panic`.
        actions: String,
    },
    /// Replaces the node: membership remove, kill, wipe its data; a new node with a
    /// fresh id and empty data joins in its place (catching up by snapshot). Nothing
    /// to heal: the window is the replacement itself.
    Replace {
        /// The node.
        target: Target,
    },
    /// Fills the node's data filesystem until it refuses more (`ENOSPC`); healed by
    /// deleting the ballast (and restarting the node if it stopped).
    DiskFull {
        /// The node.
        target: Target,
    },
    /// Moves one node's service clock forward (it never goes back: healing only ends
    /// the window; the replicated tick must not let one fast clock expire anything
    /// early).
    ClockSkew {
        /// The node.
        target: Target,
        /// How far forward.
        #[serde(with = "humantime_serde_compat")]
        offset: Duration,
    },
}

fn leader() -> Target {
    Target::Leader
}

impl Fault {
    /// The fault's name in the history and the coverage checker.
    pub fn name(&self) -> &'static str {
        match self {
            Fault::Kill { .. } => "kill",
            Fault::Pause { .. } => "pause",
            Fault::Restart { .. } => "restart",
            Fault::Partition { .. } => "partition",
            Fault::Delay { .. } => "delay",
            Fault::Loss { .. } => "loss",
            Fault::Reset { .. } => "reset",
            Fault::Failpoint { .. } => "failpoint",
            Fault::Replace { .. } => "replace",
            Fault::DiskFull { .. } => "disk-full",
            Fault::ClockSkew { .. } => "clock-skew",
        }
    }

    /// The node the fault is aimed at.
    pub fn target(&self) -> &Target {
        match self {
            Fault::Kill { target }
            | Fault::Pause { target }
            | Fault::Restart { target }
            | Fault::Partition { target, .. }
            | Fault::Delay { target, .. }
            | Fault::Loss { target, .. }
            | Fault::Reset { target }
            | Fault::Failpoint { target, .. }
            | Fault::Replace { target }
            | Fault::DiskFull { target }
            | Fault::ClockSkew { target, .. } => target,
        }
    }
}

/// A fault with its resolved start and length: the plan a run follows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedFault {
    /// When it starts, from the start of the workload.
    #[serde(with = "humantime_serde_compat")]
    pub at: Duration,
    /// How long it lasts.
    #[serde(with = "humantime_serde_compat")]
    pub lasts: Duration,
    /// The fault.
    pub fault: Fault,
}

/// What is wrong with an experiment file.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    /// The file could not be read.
    #[error("{0}: {1}")]
    Read(String, std::io::Error),
    /// The file is not a valid experiment.
    #[error("{0}: {1}")]
    Parse(String, String),
    /// The experiment is inconsistent.
    #[error("{0}: {1}")]
    Invalid(String, String),
}

impl Experiment {
    /// Reads and validates an experiment file.
    pub fn load(path: &Path) -> Result<Experiment, ExperimentError> {
        let name = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| ExperimentError::Read(name.clone(), e))?;
        Experiment::parse(&text).map_err(|e| match e {
            ExperimentError::Parse(_, m) => ExperimentError::Parse(name.clone(), m),
            ExperimentError::Invalid(_, m) => ExperimentError::Invalid(name.clone(), m),
            other => other,
        })
    }

    /// Parses and validates an experiment from TOML text.
    pub fn parse(text: &str) -> Result<Experiment, ExperimentError> {
        let e: Experiment = toml::from_str(text)
            .map_err(|err| ExperimentError::Parse("experiment".into(), err.to_string()))?;
        e.validate()
            .map_err(|m| ExperimentError::Invalid(e.name.clone(), m))?;
        Ok(e)
    }

    fn validate(&self) -> Result<(), String> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err("name must be letters, digits, '-' or '_'".into());
        }
        if !(3..=7).contains(&self.cluster.nodes) {
            return Err(format!(
                "cluster.nodes is {}; 3 to 7 are supported",
                self.cluster.nodes
            ));
        }
        if self.duration.is_zero() {
            return Err("duration must be positive".into());
        }
        if self.workload.clients == 0 || self.workload.mix.total() == 0 {
            return Err("the workload needs clients and a non-empty mix".into());
        }
        for name in &self.checks {
            if !CHECKERS.contains(&name.as_str()) {
                return Err(format!(
                    "unknown check '{name}'; the checks are {}",
                    CHECKERS.join(", ")
                ));
            }
        }
        for f in &self.faults {
            if f.at + f.lasts > self.duration {
                return Err(format!(
                    "the {} fault at {:?} lasting {:?} ends after the workload ({:?})",
                    f.fault.name(),
                    f.at,
                    f.lasts,
                    self.duration
                ));
            }
            self.validate_fault(&f.fault)?;
        }
        if let Some(r) = &self.random {
            parse_range(&r.interval).map_err(|m| format!("random.interval: {m}"))?;
            parse_range(&r.lasts).map_err(|m| format!("random.lasts: {m}"))?;
            if r.faults.is_empty() {
                return Err("random.faults is empty".into());
            }
            for f in &r.faults {
                self.validate_fault(f)?;
            }
        }
        if let Some(mib) = self.cluster.disk_mib {
            if !(16..=4096).contains(&mib) {
                return Err(format!(
                    "cluster.disk_mib is {mib}; 16 to 4096 are supported"
                ));
            }
        }
        if self.faults.is_empty() && self.random.is_none() {
            return Err("no faults: add [[faults]] or [random]".into());
        }
        Ok(())
    }

    fn validate_fault(&self, f: &Fault) -> Result<(), String> {
        if let Target::Node(n) = f.target() {
            if *n == 0 || *n as usize > self.cluster.nodes {
                return Err(format!(
                    "{} targets node {n}, which does not exist",
                    f.name()
                ));
            }
            if self.blast_radius.protect.contains(n) {
                return Err(format!("{} targets protected node {n}", f.name()));
            }
        }
        if let Fault::Partition {
            shape: Shape::MajoritiesRing,
            ..
        } = f
        {
            if self.cluster.nodes < 5 {
                return Err("a majorities ring needs 5 nodes".into());
            }
        }
        if let Fault::Loss { percent, .. } = f {
            if *percent > 100 {
                return Err("loss percent must be 0..=100".into());
            }
        }
        Ok(())
    }

    /// Whether this experiment can run against an attached cluster with members `ids`:
    /// its faults must act on processes or through the API (no proxies, no data
    /// filesystems, no membership changes there), its node targets must exist, and it
    /// must not ask for cluster settings only a cluster the harness starts can have.
    pub fn check_attached(&self, ids: &[u64]) -> Result<(), String> {
        if self.cluster.snapshot_every.is_some() || self.cluster.disk_mib.is_some() {
            return Err(
                "cluster.snapshot_every and cluster.disk_mib configure a cluster the \
                        harness starts; an attached cluster keeps its own settings"
                    .into(),
            );
        }
        for fault in self.faults() {
            if matches!(
                fault,
                Fault::Partition { .. }
                    | Fault::Delay { .. }
                    | Fault::Loss { .. }
                    | Fault::Reset { .. }
                    | Fault::DiskFull { .. }
                    | Fault::Replace { .. }
            ) {
                return Err(format!(
                    "the {} fault needs a cluster the harness starts (its proxies, data \
                     filesystems or node layout); attached clusters take kill, pause, \
                     restart, failpoint and clock-skew",
                    fault.name()
                ));
            }
            if let Target::Node(n) = fault.target() {
                if !ids.contains(n) {
                    return Err(format!(
                        "{} targets node {n}, which the attach file does not list",
                        fault.name()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every fault the experiment may inject (the schedule's and the random mix's).
    pub fn faults(&self) -> impl Iterator<Item = &Fault> {
        self.faults
            .iter()
            .map(|f| &f.fault)
            .chain(self.random.iter().flat_map(|r| r.faults.iter()))
    }

    /// The size in bytes of each node's data filesystem: as set, or the default when a
    /// disk fault needs one; `None` leaves the data directories as they are.
    pub fn data_fs_bytes(&self) -> Option<u64> {
        let needed = self.faults().any(|f| matches!(f, Fault::DiskFull { .. }));
        self.cluster
            .disk_mib
            .or(needed.then_some(ClusterSpec::DEFAULT_DISK_MIB))
            .map(|mib| mib << 20)
    }

    /// The checkers this experiment runs.
    pub fn checkers(&self) -> Vec<String> {
        if self.checks.is_empty() {
            CHECKERS.iter().map(|s| s.to_string()).collect()
        } else {
            self.checks.clone()
        }
    }

    /// The faults in the order they start: the fixed schedule (whose faults may overlap,
    /// e.g. a fail point armed during a partition), then the random mix drawn from the
    /// seed until the workload's end, which never overlaps anything. The blast radius is
    /// checked for each fault as it starts.
    pub fn plan(&self) -> Vec<PlannedFault> {
        let mut plan: Vec<PlannedFault> = self
            .faults
            .iter()
            .map(|f| PlannedFault {
                at: f.at,
                lasts: f.lasts,
                fault: f.fault.clone(),
            })
            .collect();
        plan.sort_by_key(|p| p.at);
        if let Some(r) = &self.random {
            let (Ok(interval), Ok(lasts)) = (parse_range(&r.interval), parse_range(&r.lasts))
            else {
                return plan;
            };
            let mut rng = StdRng::seed_from_u64(self.seed ^ 0x0063_6861_6f73);
            let mut t = plan
                .iter()
                .map(|p| p.at + p.lasts)
                .max()
                .unwrap_or_default()
                .max(r.start);
            loop {
                let at = t + pick(&mut rng, interval);
                let len = pick(&mut rng, lasts);
                // Leave a quiet tail for the steady-state probe after the last heal.
                if at + len + interval.0 > self.duration {
                    break;
                }
                let fault = r.faults[rng.gen_range(0..r.faults.len())].clone();
                plan.push(PlannedFault {
                    at,
                    lasts: len,
                    fault,
                });
                t = at + len;
            }
        }
        plan
    }
}

fn pick(rng: &mut StdRng, (lo, hi): (Duration, Duration)) -> Duration {
    if hi <= lo {
        return lo;
    }
    let span = (hi - lo).as_millis() as u64;
    lo + Duration::from_millis(rng.gen_range(0..=span))
}

/// Parses "2s..6s" (or a single "3s").
pub fn parse_range(text: &str) -> Result<(Duration, Duration), String> {
    let (lo, hi) = match text.split_once("..") {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (text.trim(), text.trim()),
    };
    let lo = humantime::parse_duration(lo).map_err(|e| format!("'{lo}': {e}"))?;
    let hi = humantime::parse_duration(hi).map_err(|e| format!("'{hi}': {e}"))?;
    if hi < lo {
        return Err(format!("'{text}' ends before it starts"));
    }
    Ok((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        name = "leader-kill"
        seed = 3
        duration = "20s"
        [[faults]]
        at = "5s"
        for = "4s"
        kind = "kill"
        target = "leader"
    "#;

    #[test]
    fn a_minimal_file_gets_the_defaults() {
        let e = Experiment::parse(MINIMAL).unwrap();
        assert_eq!(e.cluster.nodes, 3);
        assert_eq!(e.checkers().len(), CHECKERS.len());
        assert_eq!(e.plan().len(), 1);
        assert_eq!(e.blast_radius.limit(3), 1);
        assert_eq!(e.blast_radius.limit(5), 2);
    }

    #[test]
    fn mistakes_are_named() {
        let bad = |text: &str, needle: &str| {
            let err = Experiment::parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{err} lacks {needle}");
        };
        bad(&MINIMAL.replace("kill\"", "explode\""), "unknown variant");
        bad(
            &MINIMAL.replace("\"4s\"", "\"40s\""),
            "ends after the workload",
        );
        bad(&MINIMAL.replace("\"leader\"", "9"), "node 9");
        bad(
            &MINIMAL.replace("seed = 3", "seed = 3\nchecks = [\"vibes\"]"),
            "unknown check",
        );
        bad(&MINIMAL.replace("seed = 3", "sed = 3"), "unknown field");
    }

    #[test]
    fn the_random_plan_is_a_function_of_the_seed_and_never_overlaps() {
        let text = r#"
            name = "mix"
            seed = 11
            duration = "60s"
            [random]
            interval = "1s..3s"
            lasts = "2s..4s"
            faults = [{kind = "kill", target = "random"}, {kind = "pause", target = "follower"}]
        "#;
        let a = Experiment::parse(text).unwrap().plan();
        let b = Experiment::parse(text).unwrap().plan();
        assert_eq!(a, b);
        assert!(a.len() >= 5);
        for w in a.windows(2) {
            assert!(w[0].at + w[0].lasts <= w[1].at);
        }
        let c = Experiment::parse(&text.replace("seed = 11", "seed = 12"))
            .unwrap()
            .plan();
        assert_ne!(a, c);
    }

    #[test]
    fn a_disk_fault_gets_a_data_filesystem_and_attached_runs_refuse_it() {
        let plain = Experiment::parse(MINIMAL).unwrap();
        assert_eq!(plain.data_fs_bytes(), None);
        plain.check_attached(&[1, 2, 3]).unwrap();

        let full = Experiment::parse(&MINIMAL.replace("\"kill\"", "\"disk-full\"")).unwrap();
        assert_eq!(
            full.data_fs_bytes(),
            Some(ClusterSpec::DEFAULT_DISK_MIB << 20)
        );
        assert!(full
            .check_attached(&[1, 2, 3])
            .unwrap_err()
            .contains("disk-full"));
        let sized = |mib: u64| {
            MINIMAL.replace(
                "duration = \"20s\"",
                &format!("duration = \"20s\"\n[cluster]\ndisk_mib = {mib}"),
            )
        };
        let e = Experiment::parse(&sized(64)).unwrap();
        assert_eq!(e.data_fs_bytes(), Some(64 << 20));
        assert!(e
            .check_attached(&[1, 2, 3])
            .unwrap_err()
            .contains("disk_mib"));
        let err = Experiment::parse(&sized(2)).unwrap_err().to_string();
        assert!(err.contains("disk_mib"), "{err}");

        let replace = Experiment::parse(&MINIMAL.replace("\"kill\"", "\"replace\"")).unwrap();
        assert!(replace
            .check_attached(&[1, 2, 3])
            .unwrap_err()
            .contains("replace"));
    }

    #[test]
    fn every_shipped_experiment_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let e = Experiment::load(&path).unwrap();
                assert!(!e.plan().is_empty(), "{} plans no fault", path.display());
                n += 1;
            }
        }
        assert!(n >= 12, "only {n} experiments");
    }
}
