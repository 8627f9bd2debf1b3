//! What the report draws, computed from the history: fault windows, per-second
//! counts, latency statistics, error groups and the sampled latency scatter.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::history::{EventKind, History, Operation, Outcome, Phase};

/// Nanoseconds in a second.
pub(super) const NS_PER_S: u64 = 1_000_000_000;

/// Every operation name in a fixed order, so that an operation keeps its place (and
/// its colour) from one report to the next.
pub(super) const OP_ORDER: &[&str] = &[
    "CreateKey",
    "DescribeKey",
    "EnableKey",
    "DisableKey",
    "UpdateKeyDescription",
    "ScheduleKeyDeletion",
    "CancelKeyDeletion",
    "Encrypt",
    "Decrypt",
    "GenerateDataKey",
    "ListKeys",
];

/// The position of an operation name in [`OP_ORDER`] (unknown names sort last).
pub(super) fn op_rank(name: &str) -> usize {
    OP_ORDER
        .iter()
        .position(|n| *n == name)
        .unwrap_or(OP_ORDER.len())
}

/// How an operation ended, for counting and colouring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Kind {
    /// It happened.
    Ok,
    /// It definitely did not happen.
    Fail,
    /// Unknown outcome (including operations still open at the end).
    Info,
}

impl Kind {
    /// The kind of an outcome.
    pub(super) fn of(outcome: &Outcome) -> Kind {
        match outcome {
            Outcome::Ok(_) => Kind::Ok,
            Outcome::Fail { .. } => Kind::Fail,
            Outcome::Unknown { .. } => Kind::Info,
        }
    }

    /// The kind as the history spells it.
    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::Ok => "ok",
            Kind::Fail => "fail",
            Kind::Info => "info",
        }
    }
}

/// When the history ends: the time of its last event (0 for an empty history).
pub(super) fn span_ns(history: &History) -> u64 {
    history.events.iter().map(|e| e.time_ns).max().unwrap_or(0)
}

/// The most one-second buckets a chart has (about 28 hours); anything later (only a
/// corrupt clock would put it there) is counted in the last one.
const MAX_BUCKETS: u64 = 100_000;

/// How many one-second buckets cover `[0, span_ns]` (at least one).
pub(super) fn bucket_count(span_ns: u64) -> usize {
    let buckets = (span_ns / NS_PER_S).saturating_add(1).min(MAX_BUCKETS);
    usize::try_from(buckets).unwrap_or(1)
}

// ---------------------------------------------------------------------------------
// Fault windows
// ---------------------------------------------------------------------------------

/// A fault window: a nemesis `start` and the `stop` that healed it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Window {
    /// The fault's name.
    pub fault: String,
    /// The nodes it acted on.
    pub nodes: Vec<u64>,
    /// The start event's detail.
    pub detail: String,
    /// When it started.
    pub start_ns: u64,
    /// When it was healed; `None` if it never was (it runs to the end).
    pub stop_ns: Option<u64>,
}

impl Window {
    /// When the window ends, given the end of the history.
    pub(super) fn end_ns(&self, span_ns: u64) -> u64 {
        self.stop_ns.unwrap_or(span_ns).max(self.start_ns)
    }

    /// A short label: the fault and its nodes (`kill n2`, `partition n1,n3`).
    pub(super) fn label(&self) -> String {
        format!("{}{}", self.fault, nodes_suffix(&self.nodes))
    }
}

/// ` n1,n3` for nodes 1 and 3; empty for no nodes.
pub(super) fn nodes_suffix(nodes: &[u64]) -> String {
    if nodes.is_empty() {
        return String::new();
    }
    let names: Vec<String> = nodes.iter().map(|n| format!("n{n}")).collect();
    format!(" {}", names.join(","))
}

/// One nemesis event, for the timeline.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct FaultEvent<'a> {
    /// When it happened.
    pub time_ns: u64,
    /// Start or stop.
    pub phase: Phase,
    /// The fault's name.
    pub fault: &'a str,
    /// The nodes it acts on.
    pub nodes: &'a [u64],
    /// The event's detail.
    pub detail: &'a str,
    /// The window it opens or closes (`None`: a stop without a matching start).
    pub window: Option<usize>,
}

/// The fault windows and the nemesis events they were paired from.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Faults<'a> {
    /// The windows, in order of their start.
    pub windows: Vec<Window>,
    /// Every nemesis event, in history order.
    pub events: Vec<FaultEvent<'a>>,
}

/// Pairs nemesis starts with stops of the same fault on the same nodes (the earliest
/// open window first). A window never stopped stays open to the end of the history.
pub(super) fn faults(history: &History) -> Faults<'_> {
    let mut out = Faults::default();
    let mut open: HashMap<(&str, Vec<u64>), VecDeque<usize>> = HashMap::new();
    for e in &history.events {
        let EventKind::Nemesis {
            phase,
            fault,
            nodes,
            detail,
        } = &e.kind
        else {
            continue;
        };
        let mut key_nodes = nodes.clone();
        key_nodes.sort_unstable();
        let key = (fault.as_str(), key_nodes);
        let window = match phase {
            Phase::Start => {
                let index = out.windows.len();
                out.windows.push(Window {
                    fault: fault.clone(),
                    nodes: nodes.clone(),
                    detail: detail.clone(),
                    start_ns: e.time_ns,
                    stop_ns: None,
                });
                open.entry(key).or_default().push_back(index);
                Some(index)
            }
            Phase::Stop => {
                let index = open.get_mut(&key).and_then(VecDeque::pop_front);
                if let Some(w) = index.and_then(|i| out.windows.get_mut(i)) {
                    w.stop_ns = Some(e.time_ns);
                }
                index
            }
        };
        out.events.push(FaultEvent {
            time_ns: e.time_ns,
            phase: *phase,
            fault,
            nodes,
            detail,
            window,
        });
    }
    out
}

// ---------------------------------------------------------------------------------
// Throughput
// ---------------------------------------------------------------------------------

/// Completions per one-second bucket (by completion time).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Throughput {
    /// `ok` completions per bucket, per operation, in [`OP_ORDER`].
    pub ok: Vec<(&'static str, Vec<u32>)>,
    /// `fail` completions per bucket (all operations).
    pub fail: Vec<u32>,
    /// `info` completions per bucket (all operations).
    pub info: Vec<u32>,
}

/// Counts completions into `buckets` one-second buckets.
pub(super) fn throughput(ops: &[Operation], buckets: usize) -> Throughput {
    let buckets = buckets.max(1);
    let mut ok: BTreeMap<(usize, &'static str), Vec<u32>> = BTreeMap::new();
    let mut fail = vec![0u32; buckets];
    let mut info = vec![0u32; buckets];
    for op in ops {
        let Some(done) = op.complete_ns else {
            continue;
        };
        let b = usize::try_from(done / NS_PER_S)
            .unwrap_or(usize::MAX)
            .min(buckets - 1);
        let slot = match Kind::of(&op.outcome) {
            Kind::Ok => {
                let name = op.op.event_name();
                &mut ok
                    .entry((op_rank(name), name))
                    .or_insert_with(|| vec![0; buckets])[b]
            }
            Kind::Fail => &mut fail[b],
            Kind::Info => &mut info[b],
        };
        *slot = slot.saturating_add(1);
    }
    Throughput {
        ok: ok.into_iter().map(|((_, name), v)| (name, v)).collect(),
        fail,
        info,
    }
}

// ---------------------------------------------------------------------------------
// Per-operation statistics
// ---------------------------------------------------------------------------------

/// Counts and `ok` latencies of one operation type (or of all of them).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct OpStats {
    /// The operation's name (`all` for the total).
    pub name: &'static str,
    /// `ok` completions.
    pub ok: u64,
    /// `fail` completions.
    pub fail: u64,
    /// Unknown outcomes, including operations never completed.
    pub info: u64,
    /// The latencies of the `ok` completions, ms, sorted.
    pub ok_latencies_ms: Vec<f64>,
}

impl OpStats {
    fn new(name: &'static str) -> OpStats {
        OpStats {
            name,
            ok: 0,
            fail: 0,
            info: 0,
            ok_latencies_ms: Vec::new(),
        }
    }

    /// Every invocation.
    pub(super) fn count(&self) -> u64 {
        self.ok + self.fail + self.info
    }

    /// The `p`th percentile (nearest rank) of the `ok` latencies.
    pub(super) fn percentile(&self, p: f64) -> Option<f64> {
        percentile(&self.ok_latencies_ms, p)
    }
}

/// The `p`th percentile (0–100, nearest rank) of sorted values.
pub(super) fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// An operation's latency in ms, if it completed.
pub(super) fn latency_ms(op: &Operation) -> Option<f64> {
    op.complete_ns
        .map(|done| done.saturating_sub(op.invoke_ns) as f64 / 1e6)
}

/// Per-operation statistics in [`OP_ORDER`], and the total over all operations.
pub(super) fn op_stats(ops: &[Operation]) -> (Vec<OpStats>, OpStats) {
    let mut by_op: BTreeMap<(usize, &'static str), OpStats> = BTreeMap::new();
    let mut total = OpStats::new("all");
    for op in ops {
        let name = op.op.event_name();
        let stats = by_op
            .entry((op_rank(name), name))
            .or_insert_with(|| OpStats::new(name));
        for s in [&mut *stats, &mut total] {
            match Kind::of(&op.outcome) {
                Kind::Ok => {
                    s.ok += 1;
                    s.ok_latencies_ms.extend(latency_ms(op));
                }
                Kind::Fail => s.fail += 1,
                Kind::Info => s.info += 1,
            }
        }
    }
    let mut stats: Vec<OpStats> = by_op.into_values().collect();
    for s in stats.iter_mut().chain([&mut total]) {
        s.ok_latencies_ms.sort_by(f64::total_cmp);
    }
    (stats, total)
}

// ---------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------

/// How often one error ended one operation type.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ErrorRow<'a> {
    /// `fail` or `info`.
    pub kind: Kind,
    /// The error code (`fail`), or the error with its numbers masked (`info`).
    pub code: String,
    /// The operation.
    pub op: &'static str,
    /// How many times.
    pub count: u64,
    /// The first message seen.
    pub example: &'a str,
}

/// Groups `fail`s by error code and `info`s by their error (numbers masked, so that
/// `timed out after 5012ms` and `timed out after 5003ms` count together), per
/// operation; the most frequent first.
pub(super) fn errors(ops: &[Operation]) -> Vec<ErrorRow<'_>> {
    let mut groups: BTreeMap<(Kind, String, usize, &'static str), (u64, &str)> = BTreeMap::new();
    for op in ops {
        let (kind, code, message) = match &op.outcome {
            Outcome::Ok(_) => continue,
            Outcome::Fail { code, message } => (Kind::Fail, code.clone(), message.as_str()),
            Outcome::Unknown { error } => (Kind::Info, mask_numbers(error), error.as_str()),
        };
        let name = op.op.event_name();
        groups
            .entry((kind, code, op_rank(name), name))
            .or_insert((0, message))
            .0 += 1;
    }
    let mut rows: Vec<ErrorRow> = groups
        .into_iter()
        .map(|((kind, code, _, op), (count, example))| ErrorRow {
            kind,
            code,
            op,
            count,
            example,
        })
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.count));
    rows
}

/// The text with every run of digits replaced by `#`, cut to 80 characters.
pub(super) fn mask_numbers(text: &str) -> String {
    let mut out = String::new();
    let mut in_digits = false;
    for c in text.chars().take(80) {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

// ---------------------------------------------------------------------------------
// Latency scatter
// ---------------------------------------------------------------------------------

/// One completed operation in the latency scatter.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Point<'a> {
    /// When it was invoked, seconds since the start.
    pub t_s: f64,
    /// How long it took, ms.
    pub latency_ms: f64,
    /// How it ended.
    pub kind: Kind,
    /// The operation.
    pub op: &'static str,
    /// The error code (`fail`) or error (`info`); empty for `ok`.
    pub error: &'a str,
}

/// The scatter's points (sampled) and what they were sampled from.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Scatter<'a> {
    /// The points drawn.
    pub points: Vec<Point<'a>>,
    /// How many completed operations there were.
    pub total: usize,
    /// Completed operations per kind (before sampling).
    pub per_kind: BTreeMap<Kind, usize>,
    /// The smallest and largest latency of all completed operations, ms.
    pub range_ms: Option<(f64, f64)>,
}

/// Every completed operation as a point, sampled down to at most `cap`.
pub(super) fn scatter(ops: &[Operation], cap: usize) -> Scatter<'_> {
    let mut points = Vec::new();
    let mut range: Option<(f64, f64)> = None;
    let mut per_kind = BTreeMap::new();
    for op in ops {
        let Some(latency_ms) = latency_ms(op) else {
            continue;
        };
        let kind = Kind::of(&op.outcome);
        let error = match &op.outcome {
            Outcome::Ok(_) => "",
            Outcome::Fail { code, .. } => code.as_str(),
            Outcome::Unknown { error } => error.as_str(),
        };
        range = Some(match range {
            None => (latency_ms, latency_ms),
            Some((lo, hi)) => (lo.min(latency_ms), hi.max(latency_ms)),
        });
        *per_kind.entry(kind).or_insert(0) += 1;
        points.push(Point {
            t_s: op.invoke_ns as f64 / NS_PER_S as f64,
            latency_ms,
            kind,
            op: op.op.event_name(),
            error,
        });
    }
    let total = points.len();
    Scatter {
        points: sample(points, cap),
        total,
        per_kind,
        range_ms: range,
    }
}

/// Deterministically keeps at most `cap` points. Each kind first keeps up to a tenth
/// of the budget (so rare fails and infos stay visible, if over-represented), and the
/// rest of the budget is shared in proportion to what is left of each kind; within a
/// kind, points are taken at an even stride so the whole run stays covered. The
/// result is ordered ok, info, fail (the order they are drawn in, rarest on top).
pub(super) fn sample(points: Vec<Point<'_>>, cap: usize) -> Vec<Point<'_>> {
    let mut groups: BTreeMap<Kind, Vec<Point>> = BTreeMap::new();
    for p in points {
        groups.entry(p.kind).or_default().push(p);
    }
    let reserve_of = |len: usize| len.min(cap / 10);
    let reserved: usize = groups.values().map(|v| reserve_of(v.len())).sum();
    let budget = cap.saturating_sub(reserved);
    let left: usize = groups.values().map(|v| v.len() - reserve_of(v.len())).sum();
    let mut kinds: Vec<Kind> = groups.keys().copied().collect();
    kinds.sort_by_key(|k| draw_rank(*k));
    let mut out = Vec::with_capacity(cap.min(reserved + left));
    for kind in kinds {
        let group = groups.remove(&kind).unwrap_or_default();
        let reserve = reserve_of(group.len());
        let rest = group.len() - reserve;
        let extra = if left <= budget {
            rest
        } else {
            // In u128: `budget * rest` may not fit a usize.
            usize::try_from(budget as u128 * rest as u128 / left as u128).unwrap_or(rest)
        };
        out.extend(stride(group, reserve + extra));
    }
    out
}

/// `take` items at an even stride (all of them if there are no more than `take`).
fn stride<T>(items: Vec<T>, take: usize) -> Vec<T> {
    let len = items.len();
    if take >= len {
        return items;
    }
    if take == 0 {
        return Vec::new();
    }
    let mut next = 0usize;
    let mut k = 0usize;
    items
        .into_iter()
        .enumerate()
        .filter_map(|(i, item)| {
            if k < take && i == next {
                k += 1;
                next = k * len / take;
                Some(item)
            } else {
                None
            }
        })
        .collect()
}

/// The order kinds are drawn in: the rarer on top.
fn draw_rank(kind: Kind) -> u8 {
    match kind {
        Kind::Ok => 0,
        Kind::Info => 1,
        Kind::Fail => 2,
    }
}
