//! Latency histograms, error counts and the reports built from them.
//!
//! Every caller owns a [`Recorder`]: one histogram and one error table per operation,
//! plus an *interval* histogram that the once-a-second ticker swaps out for the
//! progress line and the CSV. Nothing is shared between callers while they run, so
//! recording costs a histogram increment and an uncontended lock; the coordinator
//! merges the recorders at the end.
//!
//! Latencies are kept in microseconds in HdrHistograms with 3 significant digits, so
//! every percentile is exact to within 0.1% of its value, from 1 µs to one hour
//! (longer samples are clamped to an hour). Only successful calls enter the latency
//! histograms; failures are counted by error code and reported beside them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The largest latency a histogram holds: one hour, in microseconds.
pub(crate) const MAX_MICROS: u64 = 3_600_000_000;

/// An empty latency histogram (microseconds, 1 µs ..= 1 h, 3 significant digits).
pub(crate) fn histogram() -> Histogram<u64> {
    // Constant, valid bounds: this cannot fail.
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("constant histogram bounds are valid")
}

/// Adds `from` into `into`. Both come from [`histogram`], so they have the same bounds
/// and the addition cannot fail.
pub(crate) fn merge(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    let _ = into.add(from);
}

fn micros(d: Duration) -> u64 {
    (d.as_micros().min(MAX_MICROS as u128) as u64).max(1)
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// One operation's samples: latencies of the calls that succeeded, and the failures by
/// error code.
#[derive(Clone)]
pub(crate) struct OpStats {
    latency: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

impl OpStats {
    /// Nothing recorded yet.
    pub(crate) fn new() -> OpStats {
        OpStats {
            latency: histogram(),
            errors: BTreeMap::new(),
        }
    }

    /// Calls recorded, successful or not.
    pub(crate) fn calls(&self) -> u64 {
        self.latency.len() + self.errors.values().sum::<u64>()
    }

    /// Records a successful call.
    pub(crate) fn ok(&mut self, latency: Duration) {
        self.latency.saturating_record(micros(latency));
    }

    /// Records a failed call by its error code.
    pub(crate) fn error(&mut self, code: &str) {
        *self.errors.entry(code.to_string()).or_default() += 1;
    }

    /// Adds another caller's samples.
    pub(crate) fn merge(&mut self, other: &OpStats) {
        merge(&mut self.latency, &other.latency);
        for (code, n) in &other.errors {
            *self.errors.entry(code.clone()).or_default() += n;
        }
    }

    /// The summary over a measurement window of `elapsed`.
    pub(crate) fn summary(&self, elapsed: Duration) -> OpSummary {
        let h = &self.latency;
        let count = h.len();
        let secs = elapsed.as_secs_f64();
        let at = |q: f64| {
            if count == 0 {
                0.0
            } else {
                ms(h.value_at_quantile(q))
            }
        };
        OpSummary {
            count,
            ops_per_s: if secs > 0.0 { count as f64 / secs } else { 0.0 },
            mean_ms: if count == 0 { 0.0 } else { h.mean() / 1000.0 },
            p50_ms: at(0.5),
            p90_ms: at(0.9),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: if count == 0 { 0.0 } else { ms(h.max()) },
            errors: self.errors.clone(),
        }
    }
}

/// What one caller recorded.
pub(crate) struct Recorder {
    ops: BTreeMap<&'static str, OpStats>,
    interval: Histogram<u64>,
    interval_errors: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            ops: BTreeMap::new(),
            interval: histogram(),
            interval_errors: 0,
        }
    }
}

impl Recorder {
    /// Records one call of `op` that took `latency`; `outcome` is its error code if it
    /// failed.
    pub(crate) fn record(
        &mut self,
        op: &'static str,
        latency: Duration,
        outcome: &Result<(), String>,
    ) {
        let stats = self.ops.entry(op).or_insert_with(OpStats::new);
        match outcome {
            Ok(()) => {
                stats.ok(latency);
                self.interval.saturating_record(micros(latency));
            }
            Err(code) => {
                stats.error(code);
                self.interval_errors += 1;
            }
        }
    }

    /// Moves the interval samples (all operations) into `into` and `errors`, and starts
    /// a new interval.
    pub(crate) fn drain_interval(&mut self, into: &mut Histogram<u64>, errors: &mut u64) {
        merge(into, &self.interval);
        self.interval.reset();
        *errors += self.interval_errors;
        self.interval_errors = 0;
    }

    /// Adds this caller's per-operation samples into `into`.
    pub(crate) fn merge_into(&self, into: &mut BTreeMap<&'static str, OpStats>) {
        for (op, stats) in &self.ops {
            into.entry(op).or_insert_with(OpStats::new).merge(stats);
        }
    }
}

/// One operation's line of the report (the `--json` field names).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct OpSummary {
    /// Successful calls in the measurement window.
    pub(crate) count: u64,
    /// Successful calls per second.
    pub(crate) ops_per_s: f64,
    /// Mean latency of the successful calls.
    pub(crate) mean_ms: f64,
    /// Latency percentiles of the successful calls.
    pub(crate) p50_ms: f64,
    /// 90th percentile.
    pub(crate) p90_ms: f64,
    /// 99th percentile.
    pub(crate) p99_ms: f64,
    /// 99.9th percentile.
    pub(crate) p999_ms: f64,
    /// The slowest successful call.
    pub(crate) max_ms: f64,
    /// Failed calls by error code (AWS name, `TransportError`, ...).
    pub(crate) errors: BTreeMap<String, u64>,
}

/// One second of the run (a CSV row; the progress line).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Tick {
    /// Seconds since the measurement started (the last row may cover less).
    pub(crate) second: u64,
    /// Successful calls in that second.
    pub(crate) ops: u64,
    /// Median latency in that second.
    pub(crate) p50_ms: f64,
    /// 99th percentile in that second.
    pub(crate) p99_ms: f64,
    /// Failed calls in that second.
    pub(crate) errors: u64,
}

impl Tick {
    /// The tick of second `second` from its merged interval histogram.
    pub(crate) fn new(second: u64, h: &Histogram<u64>, errors: u64) -> Tick {
        let at = |q: f64| {
            if h.is_empty() {
                0.0
            } else {
                ms(h.value_at_quantile(q))
            }
        };
        Tick {
            second,
            ops: h.len(),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            errors,
        }
    }
}

/// The per-second rows as CSV, with a header.
pub(crate) fn csv(ticks: &[Tick]) -> String {
    let mut out = String::from("second,ops,p50_ms,p99_ms,errors\n");
    for t in ticks {
        let _ = writeln!(
            out,
            "{},{},{:.3},{:.3},{}",
            t.second, t.ops, t.p50_ms, t.p99_ms, t.errors
        );
    }
    out
}

/// Everything `--json` prints.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    /// The workload's name as given on the command line.
    pub(crate) workload: String,
    /// The mix, when the workload is `mix`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) mix: Option<String>,
    /// What the callers talked to.
    pub(crate) target: String,
    /// Concurrent callers.
    pub(crate) concurrency: usize,
    /// Separate clients (connections) the callers share.
    pub(crate) clients: usize,
    /// Plaintext (or value) bytes per call.
    pub(crate) payload_bytes: usize,
    /// The key policy file put on the keys the run created (`--key-policy`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) key_policy: Option<String>,
    /// Warm-up before measuring, in seconds.
    pub(crate) warmup_s: f64,
    /// The measured window, in seconds.
    pub(crate) duration_s: f64,
    /// Per operation.
    pub(crate) operations: BTreeMap<String, OpSummary>,
    /// CPU time per call of this process and of the `--cpu-pids` processes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cpu: Option<super::cpu::CpuReport>,
}

impl Report {
    /// The table printed without `--json`.
    pub(crate) fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "workload {}{}, {} callers on {} clients, target {}, {} bytes{}, {:.1} s measured after {:.1} s warm-up",
            self.workload,
            self.mix.as_ref().map(|m| format!(" ({m})")).unwrap_or_default(),
            self.concurrency,
            self.clients,
            self.target,
            self.payload_bytes,
            self.key_policy
                .as_ref()
                .map(|p| format!(", key policy {p}"))
                .unwrap_or_default(),
            self.duration_s,
            self.warmup_s
        );
        let _ = writeln!(
            out,
            "{:<16} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}  errors",
            "operation", "count", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
        );
        for (name, s) in &self.operations {
            let errors = if s.errors.is_empty() {
                "-".to_string()
            } else {
                s.errors
                    .iter()
                    .map(|(c, n)| format!("{c}={n}"))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let _ = writeln!(
                out,
                "{:<16} {:>9} {:>10.1} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}  {}",
                name,
                s.count,
                s.ops_per_s,
                s.p50_ms,
                s.p90_ms,
                s.p99_ms,
                s.p999_ms,
                s.max_ms,
                errors
            );
        }
        if let Some(cpu) = &self.cpu {
            let _ = writeln!(out, "{}", cpu.line());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= b * 0.002 + 1e-9
    }

    #[test]
    fn percentiles_of_one_to_a_thousand_milliseconds() {
        let mut s = OpStats::new();
        for i in 1..=1000u64 {
            s.ok(Duration::from_millis(i));
        }
        s.error("ThrottlingException");
        s.error("ThrottlingException");
        s.error("TransportError");
        let sum = s.summary(Duration::from_secs(4));
        assert_eq!(sum.count, 1000);
        assert!(close(sum.ops_per_s, 250.0), "{sum:?}");
        assert!(close(sum.p50_ms, 500.0), "{sum:?}");
        assert!(close(sum.p90_ms, 900.0), "{sum:?}");
        assert!(close(sum.p99_ms, 990.0), "{sum:?}");
        assert!(close(sum.p999_ms, 999.0), "{sum:?}");
        assert!(close(sum.max_ms, 1000.0), "{sum:?}");
        assert!(close(sum.mean_ms, 500.5), "{sum:?}");
        assert_eq!(sum.errors["ThrottlingException"], 2);
        assert_eq!(sum.errors["TransportError"], 1);
    }

    #[test]
    fn an_empty_operation_summarises_to_zeros_and_extremes_are_clamped() {
        let sum = OpStats::new().summary(Duration::ZERO);
        assert_eq!(sum.count, 0);
        assert_eq!(sum.ops_per_s, 0.0);
        assert_eq!(sum.max_ms, 0.0);
        let mut s = OpStats::new();
        s.ok(Duration::ZERO);
        s.ok(Duration::from_secs(10 * 3600));
        let sum = s.summary(Duration::from_secs(1));
        assert_eq!(sum.count, 2);
        assert!(sum.p50_ms <= 0.002, "{sum:?}");
        assert!(close(sum.max_ms, 3_600_000.0), "{sum:?}");
    }

    #[test]
    fn recorders_merge_and_intervals_reset() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        for i in 0..10 {
            a.record("Encrypt", Duration::from_millis(1 + i), &Ok(()));
            b.record("Encrypt", Duration::from_millis(100), &Ok(()));
        }
        b.record(
            "CreateKey",
            Duration::from_millis(5),
            &Err("NotFoundException".into()),
        );
        let mut interval = histogram();
        let mut errors = 0;
        a.drain_interval(&mut interval, &mut errors);
        b.drain_interval(&mut interval, &mut errors);
        let tick = Tick::new(1, &interval, errors);
        assert_eq!((tick.second, tick.ops, tick.errors), (1, 20, 1));
        assert!(close(tick.p99_ms, 100.0), "{tick:?}");
        // A second drain finds nothing new.
        let mut again = histogram();
        let mut errors = 0;
        a.drain_interval(&mut again, &mut errors);
        assert_eq!((again.len(), errors), (0, 0));

        let mut all = BTreeMap::new();
        a.merge_into(&mut all);
        b.merge_into(&mut all);
        let enc = all["Encrypt"].summary(Duration::from_secs(2));
        assert_eq!(enc.count, 20);
        assert!(close(enc.ops_per_s, 10.0));
        let ck = all["CreateKey"].summary(Duration::from_secs(2));
        assert_eq!(ck.count, 0);
        assert_eq!(ck.errors["NotFoundException"], 1);

        let text = csv(&[tick]);
        assert_eq!(text.lines().next(), Some("second,ops,p50_ms,p99_ms,errors"));
        assert!(text.lines().nth(1).is_some_and(|l| l.starts_with("1,20,")));
    }
}
