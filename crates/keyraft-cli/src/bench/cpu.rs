//! CPU time per call: how much processor time the bench itself and the servers it loads
//! (`--cpu-pids`) spent over the measured window, divided by the calls made in it.
//!
//! On a machine where the callers and every node share the cores, throughput is bounded
//! by the CPU each call costs more than by any one resource, so this is the number that
//! says whether a change made a call cheaper; a rate alone moves with the host's speed.
//!
//! The time is a process's user and system time (`utime` + `stime` of `/proc/<pid>/stat`,
//! every thread, including those that exited), sampled when the measured window opens
//! and when it closes. Linux only.

use std::collections::BTreeMap;
use std::time::Duration;

/// A process's CPU time (user and system) so far.
fn process_cpu(pid: u32) -> Result<Duration, String> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let ticks = parse_cpu_ticks(&text).ok_or_else(|| format!("{path}: unexpected format"))?;
    Ok(ticks_to_duration(ticks, clock_ticks_per_second()?))
}

/// `utime + stime` of a `/proc/<pid>/stat` line, in clock ticks. The command name (the
/// second field, in parentheses) may itself hold spaces and parentheses, so the fields
/// are counted from the last `)`: after it come `state` (field 3) and so on, `utime`
/// being field 14 and `stime` field 15.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn ticks_to_duration(ticks: u64, per_second: u64) -> Duration {
    Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / per_second.max(1))
}

/// The unit of `/proc/<pid>/stat` times (`USER_HZ`, 100 on common Linux builds).
fn clock_ticks_per_second() -> Result<u64, String> {
    use nix::unistd::{sysconf, SysconfVar};
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(n)) if n > 0 => Ok(n as u64),
        other => Err(format!("cannot read the clock tick rate: {other:?}")),
    }
}

/// CPU times taken when the measured window opened.
pub(crate) struct CpuMeter {
    /// This process and its CPU time then.
    own: Duration,
    /// Each watched process and its CPU time then.
    watched: Vec<(u32, Duration)>,
}

impl CpuMeter {
    /// Samples this process and `pids` now; an error names a process that cannot be read
    /// (gone, another user's, or not Linux).
    pub(crate) fn start(pids: &[u32]) -> Result<CpuMeter, String> {
        let own = process_cpu(std::process::id())?;
        let watched = pids
            .iter()
            .map(|&pid| Ok((pid, process_cpu(pid)?)))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(CpuMeter { own, watched })
    }

    /// Samples again and divides what each process spent since [`CpuMeter::start`] by
    /// `calls`. A watched process that is gone by now (a node killed mid-run) makes the
    /// whole report an error rather than a number that leaves it out.
    pub(crate) fn finish(&self, calls: u64) -> Result<CpuReport, String> {
        let per_call = |spent: Duration| spent.as_secs_f64() * 1e6 / calls.max(1) as f64;
        let own = process_cpu(std::process::id())?.saturating_sub(self.own);
        let mut processes = BTreeMap::new();
        for &(pid, before) in &self.watched {
            let spent = process_cpu(pid)?.saturating_sub(before);
            processes.insert(pid.to_string(), per_call(spent));
        }
        Ok(CpuReport {
            bench_us_per_call: per_call(own),
            processes_us_per_call: (!processes.is_empty()).then(|| processes.values().sum::<f64>()),
            per_process_us_per_call: processes,
        })
    }
}

/// CPU time per call over the measured window, in microseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct CpuReport {
    /// This bench process: the callers, and for `noop-rpc` the in-process server too.
    pub(crate) bench_us_per_call: f64,
    /// The `--cpu-pids` processes together; absent without `--cpu-pids`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) processes_us_per_call: Option<f64>,
    /// Each `--cpu-pids` process, by process id.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) per_process_us_per_call: BTreeMap<String, f64>,
}

impl CpuReport {
    /// The report's line in the table.
    pub(crate) fn line(&self) -> String {
        let mut line = format!("CPU per call: bench {:.0} µs", self.bench_us_per_call);
        if let Some(total) = self.processes_us_per_call {
            let each = self
                .per_process_us_per_call
                .iter()
                .map(|(pid, us)| format!("{pid}: {us:.0}"))
                .collect::<Vec<_>>()
                .join(", ");
            line.push_str(&format!("; processes {total:.0} µs ({each})"));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_system_time_are_read_past_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (tokio (rt) worker) S 1 4242 4242 0 -1 4194560 1700 0 0 0 \
                    250 75 0 0 20 0 9 0 12345 812345678 12000 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("4242 (cut short) S 1 2 3"), None);
        assert_eq!(parse_cpu_ticks("no parenthesis at all"), None);
        assert_eq!(ticks_to_duration(325, 100), Duration::from_millis(3_250));
    }

    /// This process's user and system time by `getrusage`, a clock independent of
    /// `/proc`.
    fn rusage_self() -> Duration {
        use nix::sys::resource::{getrusage, UsageWho};
        let usage = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage of this process");
        let us = |t: nix::sys::time::TimeVal| {
            Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
        };
        us(usage.user_time()) + us(usage.system_time())
    }

    #[test]
    fn the_bench_process_is_charged_for_the_work_it_does_in_the_window() {
        let meter = CpuMeter::start(&[std::process::id()]).expect("this process is readable");
        // Burn 300 ms of CPU as getrusage counts it, however long that takes on a busy
        // machine: the counters have a resolution of 10 ms.
        let before = rusage_self();
        let mut x = 0u64;
        while rusage_self() - before < Duration::from_millis(300) {
            for _ in 0..10_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
        }
        std::hint::black_box(x);
        let report = meter.finish(100).expect("still readable");
        // 100 calls over at least 300 ms (other test threads may add to it): 3000 µs
        // each, less the counters' resolution.
        assert!(report.bench_us_per_call >= 2_800.0, "{report:?}");
        let own = report.per_process_us_per_call[&std::process::id().to_string()];
        assert!(own >= 2_800.0, "{report:?}");
        assert_eq!(report.processes_us_per_call, Some(own));
        assert!(report.line().starts_with("CPU per call: bench "));
    }

    #[test]
    fn a_process_that_cannot_be_read_is_an_error_not_a_zero() {
        // Process ids are below 2^22 on Linux; this one cannot exist.
        let err = CpuMeter::start(&[u32::MAX]).err().expect("no such process");
        assert!(err.contains("/proc/4294967295/stat"), "{err}");
    }
}
