//! # `report.html`: a run at a glance
//!
//! One self-contained HTML file (inline CSS and hand-written inline SVG; no scripts,
//! fonts or anything fetched) that shows, top to bottom:
//!
//! 1. the experiment, seed, cluster size and duration, with a large verdict badge
//!    (and the reason, if the run was aborted);
//! 2. each checker's verdict and details;
//! 3. throughput: completions per one-second bucket, stacked `ok` per operation type
//!    with `fail` (red) and `info` (amber) on top;
//! 4. latency: every completed operation (sampled down to [`SCATTER_CAP`]) at its
//!    invoke time and latency on a log scale, coloured by outcome, and a table of
//!    counts and `ok` latency percentiles per operation type;
//! 5. the errors, counted by code per operation type;
//! 6. the timeline of nemesis events.
//!
//! Fault windows (a nemesis `start` paired with the next `stop` of the same fault on
//! the same nodes; a window never stopped runs to the end) are shaded behind both
//! charts, which share one time axis, and labelled above them.
//!
//! Everything taken from the history or the results is HTML-escaped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::check::{CheckResult, Verdict};
use crate::history::{History, Phase};
use crate::results::RunResults;

/// Appends formatted text to a `String` (writing to a `String` cannot fail).
macro_rules! w {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = write!($out, $($arg)*);
    }};
}

mod charts;
mod data;
mod svg;

use data::{ErrorRow, Faults, Kind, OpStats, Scatter};

/// The most points the latency scatter draws; longer runs are sampled down to this
/// (deterministically, evenly over the run, every outcome kept visible), so the page
/// stays quick to render.
pub const SCATTER_CAP: usize = 5000;

/// The most rows the error table shows.
const ERROR_ROWS: usize = 200;

/// Renders the report of a run as one self-contained HTML page.
pub fn render(results: &RunResults, history: &History) -> String {
    let ops = history.operations();
    let faults = data::faults(history);
    let span_ns = data::span_ns(history);
    let buckets = data::bucket_count(span_ns);
    let colours = charts::fault_colours(&faults);
    let layout = charts::Layout::new(buckets, &faults, &colours);
    let (op_stats, total) = data::op_stats(&ops);
    let throughput = data::throughput(&ops, buckets);
    let scatter = data::scatter(&ops, SCATTER_CAP);
    let errors = data::errors(&ops);

    let mut out = String::with_capacity(64 * 1024 + scatter.points.len() * 64);
    head(&mut out, results);
    header(&mut out, results, history, &total, &faults);
    checks(&mut out, &results.checks);

    throughput_section(&mut out, &layout, &throughput, &colours);
    latency_section(&mut out, &layout, &scatter, &colours, &op_stats, &total);
    errors_section(&mut out, &errors);
    timeline_section(&mut out, &faults, &colours);
    out.push_str("<footer>keyraft-chaos report</footer>\n</body>\n</html>\n");
    out
}

/// Renders the report into `dir/report.html` and returns that path.
pub fn write(dir: &Path, results: &RunResults, history: &History) -> std::io::Result<PathBuf> {
    let path = dir.join("report.html");
    std::fs::write(&path, render(results, history))?;
    Ok(path)
}

// ---------------------------------------------------------------------------------
// Sections
// ---------------------------------------------------------------------------------

fn head(out: &mut String, results: &RunResults) {
    w!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{} — {} — keyraft-chaos</title>\n<style>\n{CSS}</style>\n</head>\n<body>\n",
        escape(&results.experiment),
        verdict_name(results.verdict, results.aborted.is_some()),
    );
}

fn header(
    out: &mut String,
    results: &RunResults,
    history: &History,
    total: &OpStats,
    faults: &Faults,
) {
    let (class, _) = verdict_class(results.verdict, results.aborted.is_some());
    out.push_str("<header class=\"top\">\n<div class=\"run\">\n");
    out.push_str("<div class=\"kicker\">Keyraft chaos run</div>\n");
    w!(
        out,
        "<h1>{}</h1>\n<dl class=\"facts\">\n",
        escape(&results.experiment)
    );
    let started = if results.started_unix_ms == 0 {
        "—".to_string()
    } else {
        fmt_utc(results.started_unix_ms)
    };
    let ops = format!(
        "{} <span class=\"k-ok\">{} ok</span> · <span class=\"k-fail\">{} fail</span> · \
         <span class=\"k-info\">{} info</span>",
        total.count(),
        total.ok,
        total.fail,
        total.info
    );
    let facts = [
        ("seed", results.seed.to_string()),
        ("nodes", results.nodes.to_string()),
        ("started", escape(&started)),
        ("duration", escape(&fmt_duration_ms(results.duration_ms))),
        ("operations", ops),
        ("fault windows", faults.windows.len().to_string()),
        ("history events", history.events.len().to_string()),
    ];
    for (name, value) in facts {
        w!(out, "<div><dt>{name}</dt><dd>{value}</dd></div>\n");
    }
    out.push_str("</dl>\n</div>\n");

    let mut tally: BTreeMap<Verdict, usize> = BTreeMap::new();
    for c in &results.checks {
        *tally.entry(c.verdict).or_insert(0) += 1;
    }
    let tally: Vec<String> = tally
        .iter()
        .map(|(v, n)| format!("{n} {}", verdict_name(*v, false).to_lowercase()))
        .collect();
    w!(
        out,
        "<div class=\"badge {class}\"><div class=\"word\">{}</div><div class=\"sub\">{} \
         checker{}{}{}</div></div>\n</header>\n",
        verdict_name(results.verdict, results.aborted.is_some()),
        results.checks.len(),
        if results.checks.len() == 1 { "" } else { "s" },
        if tally.is_empty() { "" } else { ": " },
        tally.join(", ")
    );
    if let Some(reason) = &results.aborted {
        w!(
            out,
            "<div class=\"aborted\"><strong>Aborted:</strong> {}</div>\n",
            escape(reason)
        );
    }
    out.push_str(
        "<nav><a href=\"#checks\">Checkers</a><a href=\"#throughput\">Throughput</a>\
         <a href=\"#latency\">Latency</a><a href=\"#errors\">Errors</a>\
         <a href=\"#faults\">Faults</a></nav>\n",
    );
}

fn checks(out: &mut String, checks: &[CheckResult]) {
    out.push_str("<section id=\"checks\">\n<h2>Checkers</h2>\n");
    if checks.is_empty() {
        out.push_str("<p class=\"none\">No checker ran.</p>\n</section>\n");
        return;
    }
    out.push_str(
        "<table class=\"checks\">\n<thead><tr><th>Checker</th><th>Verdict</th>\
         <th>Details</th></tr></thead>\n<tbody>\n",
    );
    for c in checks {
        let (class, word) = verdict_class(c.verdict, false);
        w!(
            out,
            "<tr class=\"{class}\"><td><code>{}</code></td>\
             <td><span class=\"pill {class}\">{word}</span></td><td>",
            escape(&c.checker)
        );
        if c.details.is_empty() {
            out.push_str("<span class=\"none\">—</span>");
        } else {
            out.push_str("<ul class=\"details\">");
            for line in &c.details {
                w!(out, "<li>{}</li>", escape(line));
            }
            out.push_str("</ul>");
        }
        out.push_str("</td></tr>\n");
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
}

fn throughput_section(
    out: &mut String,
    layout: &charts::Layout,
    throughput: &data::Throughput,
    colours: &BTreeMap<String, &'static str>,
) {
    out.push_str("<section id=\"throughput\">\n<h2>Throughput</h2>\n");
    out.push_str(
        "<p class=\"note\">Completions per second (by completion time), stacked: \
         <code>ok</code> per operation type, then <code>fail</code> and <code>info</code> \
         on top. Shaded bands are fault windows.</p>\n",
    );
    let mut legend: Vec<(&str, String)> = throughput
        .ok
        .iter()
        .map(|(name, _)| (charts::op_colour(name), (*name).to_string()))
        .collect();
    legend.push((charts::FAIL_COLOUR, "fail".into()));
    legend.push((charts::INFO_COLOUR, "info".into()));
    legend_html(out, &legend, colours);
    charts::throughput(out, layout, throughput);
    out.push_str("</section>\n");
}

fn latency_section(
    out: &mut String,
    layout: &charts::Layout,
    scatter: &Scatter,
    colours: &BTreeMap<String, &'static str>,
    stats: &[OpStats],
    total: &OpStats,
) {
    out.push_str("<section id=\"latency\">\n<h2>Latency</h2>\n");
    let shown = if scatter.points.len() < scatter.total {
        format!(
            " Showing {} of {} completed operations, sampled evenly over the run; \
             rare outcomes may be over-represented so that they stay visible (the \
             legend has the true counts).",
            scatter.points.len(),
            scatter.total
        )
    } else {
        String::new()
    };
    w!(
        out,
        "<p class=\"note\">Each completed operation at its invoke time and its latency \
         (log scale), coloured by outcome.{shown}</p>\n"
    );
    let legend: Vec<(&str, String)> = [Kind::Ok, Kind::Fail, Kind::Info]
        .into_iter()
        .map(|k| {
            let n = scatter.per_kind.get(&k).copied().unwrap_or(0);
            (charts::kind_colour(k), format!("{} ({n})", k.name()))
        })
        .collect();
    legend_html(out, &legend, colours);
    charts::latency(out, layout, scatter);

    out.push_str(
        "<h3>Per operation</h3>\n<p class=\"note\">Latency percentiles are over \
         <code>ok</code> completions; <code>info</code> includes operations never \
         completed.</p>\n<table class=\"num\">\n<thead><tr><th>Operation</th><th>count</th>\
         <th>ok</th><th>fail</th><th>info</th><th>p50</th><th>p90</th><th>p99</th>\
         <th>max</th></tr></thead>\n<tbody>\n",
    );
    for s in stats {
        op_row(out, s, Some(charts::op_colour(s.name)));
    }
    if stats.is_empty() {
        out.push_str("<tr><td colspan=\"9\" class=\"none\">No operations.</td></tr>\n");
    }
    out.push_str("</tbody>\n<tfoot>\n");
    op_row(out, total, None);
    out.push_str("</tfoot>\n</table>\n</section>\n");
}

fn op_row(out: &mut String, s: &OpStats, colour: Option<&str>) {
    let swatch = colour.map_or_else(String::new, |c| {
        format!("<span class=\"sw\" style=\"background:{c}\"></span>")
    });
    let p = |q: f64| s.percentile(q).map_or_else(|| "—".to_string(), fmt_ms);
    w!(
        out,
        "<tr><td>{swatch}{}</td><td>{}</td><td>{}</td><td{}>{}</td><td{}>{}</td>\
         <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
        escape(s.name),
        s.count(),
        s.ok,
        if s.fail > 0 { " class=\"k-fail\"" } else { "" },
        s.fail,
        if s.info > 0 { " class=\"k-info\"" } else { "" },
        s.info,
        p(50.0),
        p(90.0),
        p(99.0),
        p(100.0),
    );
}

fn errors_section(out: &mut String, rows: &[ErrorRow]) {
    out.push_str("<section id=\"errors\">\n<h2>Errors</h2>\n");
    if rows.is_empty() {
        out.push_str("<p class=\"none\">No operation failed or ended unknown.</p>\n</section>\n");
        return;
    }
    out.push_str(
        "<p class=\"note\"><code>fail</code> by error code; <code>info</code> by error \
         (digits masked as <code>#</code>), per operation.</p>\n\
         <table class=\"errors\">\n<thead><tr><th>Outcome</th><th>Code / error</th>\
         <th>Operation</th><th>Count</th><th>Example message</th></tr></thead>\n<tbody>\n",
    );
    for r in rows.iter().take(ERROR_ROWS) {
        w!(
            out,
            "<tr><td><span class=\"pill {k}\">{k}</span></td><td><code>{}</code></td>\
             <td>{}</td><td class=\"n\">{}</td><td class=\"msg\">{}</td></tr>\n",
            escape(&r.code),
            escape(r.op),
            r.count,
            escape(&truncate(r.example, 300)),
            k = r.kind.name()
        );
    }
    out.push_str("</tbody>\n</table>\n");
    if rows.len() > ERROR_ROWS {
        w!(
            out,
            "<p class=\"note\">{} rarer rows not shown.</p>\n",
            rows.len() - ERROR_ROWS
        );
    }
    out.push_str("</section>\n");
}

fn timeline_section(out: &mut String, faults: &Faults, colours: &BTreeMap<String, &'static str>) {
    out.push_str("<section id=\"faults\">\n<h2>Fault timeline</h2>\n");
    if faults.events.is_empty() {
        out.push_str("<p class=\"none\">No nemesis events.</p>\n</section>\n");
        return;
    }
    out.push_str(
        "<table class=\"timeline\">\n<thead><tr><th>Time</th><th>Event</th><th>Fault</th>\
         <th>Nodes</th><th>Window</th><th>Detail</th></tr></thead>\n<tbody>\n",
    );
    for e in &faults.events {
        let window = e.window.and_then(|i| faults.windows.get(i));
        let (phase, note) = match (e.phase, window) {
            (Phase::Start, Some(w)) => (
                "start",
                match w.stop_ns {
                    Some(stop) => format!(
                        "healed at {} (after {})",
                        fmt_clock(stop),
                        fmt_span(stop.saturating_sub(w.start_ns))
                    ),
                    None => "never healed: runs to the end".to_string(),
                },
            ),
            (Phase::Stop, Some(w)) => (
                "stop",
                format!("after {}", fmt_span(e.time_ns.saturating_sub(w.start_ns))),
            ),
            (Phase::Start, None) => ("start", String::new()),
            (Phase::Stop, None) => ("stop", "no matching start".to_string()),
        };
        let colour = colours.get(e.fault).copied().unwrap_or("#999");
        let nodes = data::nodes_suffix(e.nodes);
        w!(
            out,
            "<tr class=\"{phase}\"><td class=\"n\">{}</td><td>{phase}</td>\
             <td><span class=\"sw\" style=\"background:{colour}\"></span>{}</td>\
             <td>{}</td><td>{}</td><td class=\"msg\">{}</td></tr>\n",
            fmt_clock(e.time_ns),
            escape(e.fault),
            escape(nodes.trim()),
            escape(&note),
            escape(e.detail)
        );
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
}

/// A row of colour swatches and names, then the fault colours.
fn legend_html(
    out: &mut String,
    items: &[(&str, String)],
    faults: &BTreeMap<String, &'static str>,
) {
    out.push_str("<div class=\"legend\">");
    for (colour, name) in items {
        w!(
            out,
            "<span><span class=\"sw\" style=\"background:{colour}\"></span>{}</span>",
            escape(name)
        );
    }
    for (fault, colour) in faults {
        w!(
            out,
            "<span class=\"fault\"><span class=\"sw band\" style=\"background:{colour}\">\
             </span>{} (fault)</span>",
            escape(fault)
        );
    }
    out.push_str("</div>\n");
}

// ---------------------------------------------------------------------------------
// Text
// ---------------------------------------------------------------------------------

/// Escapes text for HTML (element content and quoted attribute values alike).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// At most `max` characters of `text`, with `…` if cut.
fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// `(class, word)` of a verdict; an aborted run without a violation shows as unknown.
fn verdict_class(verdict: Verdict, aborted: bool) -> (&'static str, &'static str) {
    match (verdict, aborted) {
        (Verdict::Violation, _) => ("violation", "violation"),
        (_, true) => ("unknown", "aborted"),
        (Verdict::Pass, _) => ("pass", "pass"),
        (Verdict::Unknown, _) => ("unknown", "unknown"),
    }
}

/// The verdict as the badge shows it.
fn verdict_name(verdict: Verdict, aborted: bool) -> &'static str {
    match (verdict, aborted) {
        (Verdict::Violation, _) => "VIOLATION",
        (_, true) => "ABORTED",
        (Verdict::Pass, _) => "PASS",
        (Verdict::Unknown, _) => "UNKNOWN",
    }
}

/// A point in the run: `12.345 s`, or `1:02.345` from a minute on.
fn fmt_clock(ns: u64) -> String {
    let ms = ns / 1_000_000;
    if ms < 60_000 {
        format!("{}.{:03} s", ms / 1000, ms % 1000)
    } else {
        let s = ms / 1000;
        format!("{}:{:02}.{:03}", s / 60, s % 60, ms % 1000)
    }
}

/// A length of time in the run: `850 ms`, `4.2 s`, `3m 05s`.
fn fmt_span(ns: u64) -> String {
    let ms = ns / 1_000_000;
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        fmt_duration_ms(ms)
    }
}

/// A duration given in ms: `12.3 s`, `4m 05s`, `1h 02m 03s`.
fn fmt_duration_ms(ms: u64) -> String {
    let s = ms / 1000;
    if s < 60 {
        format!("{}.{} s", s, ms % 1000 / 100)
    } else if s < 3600 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{}h {:02}m {:02}s", s / 3600, s / 60 % 60, s % 60)
    }
}

/// A latency in ms with sensible precision: `0.42 ms`, `12.3 ms`, `840 ms`, `12.50 s`.
fn fmt_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 100.0 {
        format!("{ms:.1} ms")
    } else if ms < 10_000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

/// A Unix time in ms as `YYYY-MM-DD HH:MM:SS UTC`.
fn fmt_utc(unix_ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix_ms / 1000);
    // "2026-11-23T12:00:00Z" -> "2026-11-23 12:00:00 UTC"
    let text = humantime::format_rfc3339_seconds(t).to_string();
    format!("{} UTC", text.trim_end_matches('Z').replacen('T', " ", 1))
}

const CSS: &str = r#"
:root { --ok:#1f77b4; --fail:#d62728; --info:#ff9f1c; --pass:#1a7f37; --violation:#cf222e;
  --unknown:#b7791f; --ink:#1f2328; --muted:#59636e; --line:#d1d9e0; --bg:#f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1100px; padding: 24px 28px 48px; color: var(--ink);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  sans-serif; background: #fff; }
code { font: 12.5px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
h1 { margin: 2px 0 10px; font-size: 26px; word-break: break-word; }
h2 { margin: 36px 0 8px; font-size: 19px; border-bottom: 1px solid var(--line);
  padding-bottom: 4px; }
h3 { margin: 22px 0 6px; font-size: 15px; }
.top { display: flex; gap: 24px; align-items: flex-start; justify-content: space-between; }
.run { flex: 1; min-width: 0; }
.kicker { color: var(--muted); text-transform: uppercase; letter-spacing: .06em;
  font-size: 12px; }
.facts { display: flex; flex-wrap: wrap; gap: 6px 26px; margin: 0; }
.facts div { display: flex; flex-direction: column; }
.facts dt { color: var(--muted); font-size: 12px; }
.facts dd { margin: 0; font-weight: 600; font-variant-numeric: tabular-nums; }
.badge { min-width: 220px; padding: 16px 22px; border-radius: 12px; color: #fff;
  text-align: center; }
.badge .word { font-size: 34px; font-weight: 800; letter-spacing: .04em; }
.badge .sub { font-size: 13px; opacity: .92; }
.badge.pass { background: var(--pass); }
.badge.violation { background: var(--violation); }
.badge.unknown { background: var(--unknown); }
.aborted { margin: 14px 0 0; padding: 10px 14px; border-radius: 8px; background: #fff8c5;
  border: 1px solid #d4a72c; white-space: pre-wrap; word-break: break-word; }
nav { margin: 18px 0 0; display: flex; gap: 18px; font-size: 13px; }
nav a { color: var(--ok); text-decoration: none; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 5px 10px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { background: var(--bg); font-weight: 600; font-size: 13px; }
tbody tr:nth-child(even) { background: #fbfcfd; }
tfoot td { font-weight: 700; border-top: 2px solid var(--line); }
table.num td:not(:first-child), table.num th:not(:first-child), td.n { text-align: right; }
td.msg { word-break: break-word; white-space: pre-wrap; color: var(--muted); }
tr.violation td:first-child { border-left: 4px solid var(--violation); }
tr.unknown td:first-child { border-left: 4px solid var(--unknown); }
tr.pass td:first-child { border-left: 4px solid var(--pass); }
ul.details { margin: 0; padding-left: 18px; white-space: pre-wrap; word-break: break-word; }
.pill { display: inline-block; padding: 0 9px; border-radius: 10px; color: #fff;
  font-size: 12px; font-weight: 600; }
.pill.pass { background: var(--pass); }
.pill.violation { background: var(--violation); }
.pill.unknown { background: var(--unknown); }
.pill.fail { background: var(--fail); }
.pill.info { background: var(--info); color: #3d2a00; }
.k-ok { color: var(--ok); } .k-fail { color: var(--fail); } .k-info { color: #b86e00; }
.none, .note { color: var(--muted); }
.note { margin: 4px 0 8px; font-size: 13px; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 16px; font-size: 12.5px; margin: 6px 0; }
.legend .fault { color: var(--muted); }
.sw { display: inline-block; width: 11px; height: 11px; border-radius: 2px;
  margin-right: 5px; vertical-align: -1px; }
.sw.band { opacity: .55; }
tr.stop td { color: var(--muted); }
svg { display: block; width: 100%; height: auto; margin: 4px 0 8px;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif;
  font-size: 11px; }
svg .grid line { stroke: #e4e8ec; stroke-width: 1; }
svg .grid line.minor { stroke: #f0f2f4; }
svg .axis line { stroke: #6e7781; stroke-width: 1; }
svg .labels text { fill: #424a53; }
svg .labels text.title { fill: var(--ink); font-size: 12px; font-weight: 600; }
svg .band-labels text { fill: #1f2328; font-size: 10px; }
svg text.empty { fill: var(--muted); font-size: 14px; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::CheckResult;
    use crate::history::{Event, EventKind, Op, Value};

    const MS: u64 = 1_000_000;

    /// A history builder with the clock in ms.
    #[derive(Default)]
    struct Builder {
        events: Vec<Event>,
        next_tag: u64,
    }

    impl Builder {
        fn push(&mut self, ms: u64, kind: EventKind) {
            let index = self.events.len() as u64;
            self.events.push(Event {
                index,
                time_ns: ms * MS,
                kind,
            });
        }

        fn invoke(&mut self, ms: u64, process: u64, encrypt: bool) {
            self.next_tag += 1;
            let tag = format!("t{}", self.next_tag);
            let op = if encrypt {
                Op::Encrypt {
                    tag,
                    key_id: "k1".into(),
                    plaintext_sha256: "00".into(),
                }
            } else {
                Op::DescribeKey {
                    tag,
                    key_id: "k1".into(),
                }
            };
            self.push(
                ms,
                EventKind::Invoke {
                    process,
                    node: 0,
                    op,
                },
            );
        }

        fn ok(&mut self, ms: u64, process: u64) {
            self.push(
                ms,
                EventKind::Ok {
                    process,
                    value: Value::Done,
                },
            );
        }

        fn fail(&mut self, ms: u64, process: u64, code: &str, message: &str) {
            self.push(
                ms,
                EventKind::Fail {
                    process,
                    code: code.into(),
                    message: message.into(),
                },
            );
        }

        fn info(&mut self, ms: u64, process: u64, error: &str) {
            self.push(
                ms,
                EventKind::Info {
                    process,
                    error: error.into(),
                },
            );
        }

        fn nemesis(&mut self, ms: u64, phase: Phase, fault: &str, nodes: &[u64]) {
            self.push(
                ms,
                EventKind::Nemesis {
                    phase,
                    fault: fault.into(),
                    nodes: nodes.to_vec(),
                    detail: format!("{fault} <detail>"),
                },
            );
        }

        fn build(self) -> History {
            History {
                events: self.events,
            }
        }
    }

    /// Ten seconds of traffic with a closed kill window, a closed partition window, an
    /// unclosed pause window, a fail whose message holds a script tag and an info.
    fn sample_history() -> History {
        let mut b = Builder::default();
        b.nemesis(2_000, Phase::Start, "kill", &[2]);
        b.nemesis(3_000, Phase::Start, "partition", &[1, 3]);
        let mut process = 1;
        for i in 0..200u64 {
            let t = i * 50;
            b.invoke(t, process, i % 2 == 0);
            match i {
                50 => b.fail(
                    t + 7,
                    process,
                    "DisabledException",
                    "<script>alert(1)</script>",
                ),
                80 => {
                    b.info(t + 40, process, "timed out after 5000ms");
                    process += 1;
                }
                _ => b.ok(t + 1 + i % 13, process),
            }
        }
        b.nemesis(4_500, Phase::Stop, "kill", &[2]);
        b.nemesis(6_000, Phase::Stop, "partition", &[3, 1]);
        b.nemesis(8_000, Phase::Start, "pause", &[1]);
        let mut events = b.events;
        events.sort_by_key(|e| e.time_ns);
        for (i, e) in events.iter_mut().enumerate() {
            e.index = i as u64;
        }
        History { events }
    }

    fn results(verdict: Verdict) -> RunResults {
        RunResults {
            experiment: "partition-<majority>".into(),
            seed: 42,
            nodes: 3,
            started_unix_ms: 1_700_000_000_000,
            duration_ms: 10_000,
            verdict,
            aborted: None,
            checks: vec![
                CheckResult {
                    checker: "linearizable".into(),
                    verdict: Verdict::Pass,
                    details: vec![],
                },
                CheckResult {
                    checker: "no_lost_keys".into(),
                    verdict: Verdict::Violation,
                    details: vec!["key <k1> lost & gone".into()],
                },
                CheckResult {
                    checker: "coverage".into(),
                    verdict: Verdict::Unknown,
                    details: vec!["fault pause never stopped".into()],
                },
            ],
        }
    }

    fn count(haystack: &str, needle: &str) -> usize {
        haystack.matches(needle).count()
    }

    /// Tags open and close in order and never nest wrongly, for the tags that matter.
    fn assert_balanced(html: &str) {
        for tag in ["svg", "table", "section", "g", "tr", "ul"] {
            let open = count(html, &format!("<{tag}>")) + count(html, &format!("<{tag} "));
            let close = count(html, &format!("</{tag}>"));
            assert_eq!(open, close, "<{tag}> opened {open} times, closed {close}");
        }
        let mut depth = 0i64;
        for (i, _) in html.match_indices("svg") {
            if html[..i].ends_with('<') {
                depth += 1;
                assert_eq!(depth, 1, "nested <svg>");
            } else if html[..i].ends_with("</") {
                depth -= 1;
                assert_eq!(depth, 0, "</svg> without <svg>");
            }
        }
        assert_eq!(depth, 0);
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.trim_end().ends_with("</html>"));
    }

    #[test]
    fn renders_a_whole_run() {
        let history = sample_history();
        let html = render(&results(Verdict::Violation), &history);
        assert_balanced(&html);
        assert_eq!(count(&html, "<svg"), 2, "a throughput and a latency chart");
        for name in ["linearizable", "no_lost_keys", "coverage"] {
            assert!(html.contains(&format!("<code>{name}</code>")), "{name}");
        }
        for verdict in ["pass", "violation", "unknown"] {
            assert!(
                html.contains(&format!("<span class=\"pill {verdict}\">{verdict}</span>")),
                "{verdict}"
            );
        }
        assert!(html.contains("class=\"badge violation\"><div class=\"word\">VIOLATION"));
        assert!(html.contains("key &lt;k1&gt; lost &amp; gone"));
        assert!(html.contains("partition-&lt;majority&gt;"));
        assert!(html.contains("2023-11-14 22:13:20 UTC"));
        // Both operation types, and the error table.
        assert!(html.contains("Encrypt") && html.contains("DescribeKey"));
        assert!(html.contains("<code>DisabledException</code>"));
        assert!(html.contains("<code>timed out after #ms</code>"));
    }

    #[test]
    fn a_band_per_fault_window_in_each_chart() {
        let history = sample_history();
        let html = render(&results(Verdict::Pass), &history);
        // kill, partition (stopped with its nodes in another order), pause (unclosed).
        assert_eq!(count(&html, "class=\"band\""), 3 * 2);
        assert!(html.contains("kill n2"));
        assert!(html.contains("partition n1,n3"));
        assert!(html.contains("pause n1 (not healed)"));
        assert!(html.contains("never healed: runs to the end"));
        assert!(!html.contains("no matching start"));
        // The unclosed pause runs from 8 s to the end of the history (9.955 s).
        let faults = data::faults(&history);
        let pause = &faults.windows[2];
        assert_eq!(pause.stop_ns, None);
        assert_eq!(pause.end_ns(data::span_ns(&history)), 9_955 * MS);
        // Bands are drawn before (behind) the data.
        let svg_start = html.find("<svg").unwrap_or(0);
        let band = html[svg_start..].find("class=\"band\"");
        let series = html[svg_start..].find("class=\"series\"");
        assert!(band.is_some() && band < series);
    }

    #[test]
    fn history_text_is_escaped() {
        let mut history = sample_history();
        history.events.push(Event {
            index: history.events.len() as u64,
            time_ns: 9_990 * MS,
            kind: EventKind::Nemesis {
                phase: Phase::Stop,
                fault: "<b>odd</b>".into(),
                nodes: vec![],
                detail: "\"quoted\" & <i>".into(),
            },
        });
        let html = render(&results(Verdict::Pass), &history);
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!html.contains("<b>odd</b>") && !html.contains("<i>"));
        assert!(html.contains("&quot;quoted&quot; &amp; &lt;i&gt;"));
        assert!(html.contains("no matching start"));
        assert!(!html.contains("<detail>"));
        assert_balanced(&html);
    }

    #[test]
    fn an_empty_history_renders() {
        let mut results = results(Verdict::Unknown);
        results.checks.clear();
        results.aborted = Some("node 2 crash-looped: <panic>".into());
        let html = render(&results, &History::default());
        assert_balanced(&html);
        assert_eq!(count(&html, "<svg"), 2);
        assert!(html.contains("no completed operations"));
        assert!(html.contains("No checker ran."));
        assert!(html.contains("No nemesis events."));
        assert!(html.contains("class=\"badge unknown\"><div class=\"word\">ABORTED"));
        assert!(html.contains("node 2 crash-looped: &lt;panic&gt;"));
        assert!(!html.contains("NaN") && !html.contains("inf\""));
    }

    #[test]
    fn only_an_unclosed_window() {
        let mut b = Builder::default();
        b.nemesis(0, Phase::Start, "failpoint", &[]);
        let html = render(&results(Verdict::Pass), &b.build());
        assert_balanced(&html);
        assert_eq!(count(&html, "class=\"band\""), 2);
        assert!(html.contains("failpoint (not healed)"));
        // It shades the whole plot: from x(0) to the right edge.
        let band = html
            .find("<rect class=\"band\"")
            .and_then(|i| html.get(i..));
        let expected =
            "<rect class=\"band\" x=\"66.0\" y=\"25.0\" width=\"872.0\" height=\"250.0\"";
        assert!(band.is_some_and(|b| b.starts_with(expected)), "{band:?}");
        assert!(!html.contains("NaN"));
    }

    #[test]
    fn the_scatter_is_sampled_down() {
        let mut b = Builder::default();
        let n = 3 * SCATTER_CAP as u64;
        for i in 0..n {
            b.invoke(i, i + 1, true);
            if i % 1000 == 0 {
                b.fail(i, i + 1, "KMSInternalException", "boom");
            } else {
                b.ok(i, i + 1);
            }
        }
        let history = b.build();
        let html = render(&results(Verdict::Pass), &history);
        assert_balanced(&html);
        let dots = count(&html, "<circle");
        assert!(
            (SCATTER_CAP - 10..=SCATTER_CAP).contains(&dots),
            "{dots} dots"
        );
        // Every fail is kept; the sample is spread over the whole run.
        assert_eq!(count(&html, "Encrypt fail at"), (n / 1000) as usize);
        assert!(html.contains(&format!("Showing {dots} of {n} completed operations")));
        let ops = history.operations();
        let a = data::scatter(&ops, SCATTER_CAP);
        let b2 = data::scatter(&ops, SCATTER_CAP);
        assert_eq!(a.points, b2.points, "deterministic");
        let last = a.points.iter().map(|p| p.t_s).fold(0.0, f64::max);
        assert!(last > (n as f64 / 1000.0) * 0.99, "covers the run: {last}");
    }

    #[test]
    fn sampling_shares_the_budget() {
        let point = |kind| data::Point {
            t_s: 0.0,
            latency_ms: 1.0,
            kind,
            op: "Encrypt",
            error: "",
        };
        let mut points: Vec<data::Point> = (0..10_000).map(|_| point(Kind::Ok)).collect();
        points.extend((0..30).map(|_| point(Kind::Fail)));
        points.extend((0..4_000).map(|_| point(Kind::Info)));
        let sampled = data::sample(points, 100);
        let of = |k| sampled.iter().filter(|p| p.kind == k).count();
        // 10 each up front; the other 70 in proportion to the rest (9990 : 20 : 3990).
        assert_eq!((of(Kind::Ok), of(Kind::Fail), of(Kind::Info)), (59, 10, 29));
        // Drawn in the order ok, info, fail.
        assert_eq!(sampled[0].kind, Kind::Ok);
        assert_eq!(sampled[sampled.len() - 1].kind, Kind::Fail);
        // Small enough: everything is kept.
        let few: Vec<data::Point> = (0..50).map(|_| point(Kind::Info)).collect();
        assert_eq!(data::sample(few, 100).len(), 50);
    }

    #[test]
    fn throughput_and_percentiles() {
        let history = sample_history();
        let ops = history.operations();
        let buckets = data::bucket_count(data::span_ns(&history));
        assert_eq!(buckets, 10);
        let tp = data::throughput(&ops, buckets);
        let ok: u32 = tp.ok.iter().flat_map(|(_, v)| v).sum();
        assert_eq!(ok, 198);
        assert_eq!(tp.fail.iter().sum::<u32>(), 1);
        assert_eq!(tp.fail[2], 1);
        assert_eq!(tp.info[4], 1);
        let (stats, total) = data::op_stats(&ops);
        assert_eq!(stats.len(), 2);
        assert_eq!(
            (total.count(), total.ok, total.fail, total.info),
            (200, 198, 1, 1)
        );
        assert_eq!(data::percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), Some(2.0));
        assert_eq!(data::percentile(&[1.0, 2.0, 3.0, 4.0], 99.0), Some(4.0));
        assert_eq!(data::percentile(&[], 50.0), None);
        assert_eq!(total.percentile(100.0), Some(13.0));
    }

    #[test]
    fn band_labels_take_free_lanes() {
        let spec = |x0: f64, x1: f64, label: &str| svg::BandSpec {
            x0,
            x1,
            label: label.into(),
            title: String::new(),
            colour: "#000",
        };
        let (bands, lanes) = svg::layout_bands(
            vec![
                spec(100.0, 300.0, "partition n1"),
                spec(150.0, 160.0, "kill n2"),
                spec(400.0, 500.0, "kill n3"),
                spec(955.0, 960.0, "pause n1"),
            ],
            960.0,
        );
        assert_eq!(lanes, 2);
        let lane: Vec<usize> = bands.iter().map(|b| b.lane).collect();
        assert_eq!(lane, vec![0, 1, 0, 0]);
        // A label near the right edge is moved left to stay inside the chart.
        assert!(bands[3].text_x + 8.0 * 6.0 <= 958.0);
    }

    #[test]
    fn scales_and_ticks() {
        // y grows upwards: larger values nearer the top.
        let y = svg::Linear::new((0.0, 10.0), (300.0, 50.0));
        assert_eq!(y.map(0.0), 300.0);
        assert_eq!(y.map(10.0), 50.0);
        let log = svg::Log::decades(0.7, 450.0, 0.01, (300.0, 0.0));
        assert_eq!(log.map(0.1), 300.0);
        assert_eq!(log.map(1000.0), 0.0);
        assert!((log.map(10.0) - 150.0).abs() < 1e-9);
        assert_eq!(svg::nice_step(7.0), 10.0);
        assert_eq!(svg::nice_step(0.3), 0.5);
        assert_eq!(
            svg::count_ticks(37.0),
            (40.0, vec![0.0, 10.0, 20.0, 30.0, 40.0])
        );
        assert_eq!(svg::count_ticks(0.0).0, 1.0);
        let (ticks, _) = svg::time_ticks(61.0);
        assert_eq!(ticks.len(), 7);
        let (ticks, title) = svg::time_ticks(600.0);
        assert_eq!(ticks[1].1, "1:00");
        assert!(title.contains("m:ss"));
        assert_eq!(fmt_clock(61_234 * MS), "1:01.234");
        assert_eq!(fmt_duration_ms(3_723_000), "1h 02m 03s");
        assert_eq!(data::mask_numbers("127.0.0.1:7000 x"), "#.#.#.#:# x");
    }

    #[test]
    fn writes_report_html() {
        let dir = tempfile::tempdir().map_err(|e| e.to_string());
        let dir = match dir {
            Ok(dir) => dir,
            Err(e) => panic!("tempdir: {e}"),
        };
        let path = write(dir.path(), &results(Verdict::Pass), &sample_history());
        let path = path.map_err(|e| e.to_string());
        assert_eq!(
            path.as_deref(),
            Ok(dir.path().join("report.html").as_path())
        );
        let text = std::fs::read_to_string(dir.path().join("report.html")).unwrap_or_default();
        assert!(text.contains("<svg"));
    }
}
