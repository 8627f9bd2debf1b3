//! The two charts: throughput per second and the latency scatter. Both share one x
//! axis (seconds since the start) and the same fault bands, so they line up on the
//! page.

use std::collections::BTreeMap;

use super::data::{self, Faults, Kind, Scatter, Throughput, NS_PER_S};
use super::escape;
use super::svg::{self, BandSpec, Frame, Linear, Log, Tick};

/// The colour of `ok` in the scatter and legends.
pub(super) const OK_COLOUR: &str = "#1f77b4";
/// The colour of `fail` everywhere.
pub(super) const FAIL_COLOUR: &str = "#d62728";
/// The colour of `info` everywhere.
pub(super) const INFO_COLOUR: &str = "#ff9f1c";

/// Operation colours (blues, greens, greys: none close to the fail red or info amber),
/// indexed by [`data::OP_ORDER`].
const OP_COLOURS: &[&str] = &[
    "#1f77b4", "#aec7e8", "#2ca02c", "#98df8a", "#17becf", "#9edae5", "#393b79", "#637939",
    "#6b6ecf", "#7f7f7f", "#5f9ea0", "#c7c7c7",
];

/// Fault colours, assigned to fault names in alphabetical order.
const FAULT_COLOURS: &[&str] = &[
    "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#7b4173", "#a55194", "#843c39",
];

/// The colour of an operation type.
pub(super) fn op_colour(name: &str) -> &'static str {
    OP_COLOURS[data::op_rank(name) % OP_COLOURS.len()]
}

/// The colour of an outcome.
pub(super) fn kind_colour(kind: Kind) -> &'static str {
    match kind {
        Kind::Ok => OK_COLOUR,
        Kind::Fail => FAIL_COLOUR,
        Kind::Info => INFO_COLOUR,
    }
}

/// A colour per fault name.
pub(super) fn fault_colours(faults: &Faults) -> BTreeMap<String, &'static str> {
    let mut names: Vec<&str> = faults.windows.iter().map(|w| w.fault.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .enumerate()
        .map(|(i, n)| (n.to_string(), FAULT_COLOURS[i % FAULT_COLOURS.len()]))
        .collect()
}

/// The whole width of a chart.
const WIDTH: f64 = 960.0;
/// Room left of the plot for the y labels and title.
const LEFT: f64 = 66.0;
/// Room right of the plot.
const RIGHT: f64 = 22.0;
/// Room above the fault lanes.
const TOP_PAD: f64 = 6.0;
/// The plot's height.
const PLOT_H: f64 = 250.0;
/// Room below the plot for the x labels and title.
const BOTTOM: f64 = 46.0;

/// What both charts share: the time axis and the fault bands.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Layout {
    /// One-second buckets; the x domain is `[0, buckets]` seconds.
    pub buckets: usize,
    bands: Vec<svg::Band>,
    lanes: usize,
}

impl Layout {
    /// Lays out the time axis over `buckets` seconds and the fault bands on it (a
    /// window never healed runs to the end of the axis).
    pub(super) fn new(
        buckets: usize,
        faults: &Faults,
        colours: &BTreeMap<String, &'static str>,
    ) -> Layout {
        let mut layout = Layout {
            buckets: buckets.max(1),
            bands: Vec::new(),
            lanes: 0,
        };
        let x = layout.x();
        let axis_end_ns = (layout.buckets as u64).saturating_mul(NS_PER_S);
        let specs = faults
            .windows
            .iter()
            .map(|w| {
                let start = w.start_ns.min(axis_end_ns);
                let end = w.end_ns(axis_end_ns).min(axis_end_ns);
                let label = if w.stop_ns.is_some() {
                    w.label()
                } else {
                    format!("{} (not healed)", w.label())
                };
                let mut title = format!(
                    "{}: {} – {}",
                    w.label(),
                    super::fmt_clock(w.start_ns),
                    w.stop_ns
                        .map_or_else(|| "end (never healed)".to_string(), super::fmt_clock)
                );
                if !w.detail.is_empty() {
                    title.push('\n');
                    title.push_str(&w.detail);
                }
                BandSpec {
                    x0: x.map(start as f64 / NS_PER_S as f64),
                    x1: x.map(end as f64 / NS_PER_S as f64),
                    label,
                    title,
                    colour: colours.get(&w.fault).copied().unwrap_or(FAULT_COLOURS[0]),
                }
            })
            .collect();
        let (bands, lanes) = svg::layout_bands(specs, WIDTH);
        layout.bands = bands;
        layout.lanes = lanes;
        layout
    }

    /// The plot area (below the fault lanes).
    fn frame(&self) -> Frame {
        let lanes = self.lanes as f64 * svg::LANE_H;
        Frame {
            left: LEFT,
            top: TOP_PAD + lanes + if self.lanes > 0 { 4.0 } else { 0.0 },
            width: WIDTH - LEFT - RIGHT,
            height: PLOT_H,
        }
    }

    /// The chart's total height.
    fn height(&self) -> f64 {
        self.frame().bottom() + BOTTOM
    }

    /// Seconds since the start → x.
    fn x(&self) -> Linear {
        Linear::new((0.0, self.buckets as f64), (LEFT, WIDTH - RIGHT))
    }

    /// The time ticks and the x axis title.
    fn x_ticks(&self) -> (Vec<Tick>, &'static str) {
        let x = self.x();
        let (ticks, title) = svg::time_ticks(self.buckets as f64);
        let ticks = ticks
            .into_iter()
            .map(|(t, label)| Tick {
                pos: x.map(t),
                label: Some(label),
                major: true,
            })
            .collect();
        (ticks, title)
    }

    /// Opens the chart and draws what lies behind the data: the fault shading, the
    /// label lanes and the grid.
    fn begin(&self, out: &mut String, aria: &str, y_ticks: &[Tick]) {
        let frame = self.frame();
        svg::open(out, WIDTH, self.height(), aria);
        svg::band_shading(out, &frame, &self.bands);
        svg::band_labels(out, TOP_PAD, &self.bands);
        svg::grid(out, &frame, &self.x_ticks().0, y_ticks);
    }

    /// Draws what lies over the data: the axes.
    fn axes(&self, out: &mut String, y_ticks: &[Tick], y_title: &str) {
        let (x_ticks, x_title) = self.x_ticks();
        svg::axes(out, &self.frame(), &x_ticks, y_ticks, (x_title, y_title));
    }
}

/// One layer of the throughput stack.
struct Layer<'a> {
    name: String,
    colour: &'static str,
    counts: &'a [u32],
}

/// Throughput: completions per second, stacked: `ok` per operation type at the
/// bottom, then `fail` (red) and `info` (amber) on top, so the height of the stack is
/// every completion in that second.
pub(super) fn throughput(out: &mut String, layout: &Layout, tp: &Throughput) {
    let n = layout.buckets;
    let mut layers: Vec<Layer> = tp
        .ok
        .iter()
        .map(|(name, counts)| Layer {
            name: format!("{name} ok"),
            colour: op_colour(name),
            counts,
        })
        .collect();
    layers.push(Layer {
        name: "fail".into(),
        colour: FAIL_COLOUR,
        counts: &tp.fail,
    });
    layers.push(Layer {
        name: "info".into(),
        colour: INFO_COLOUR,
        counts: &tp.info,
    });

    // The top of each layer, cumulatively.
    let mut tops: Vec<Vec<u64>> = Vec::with_capacity(layers.len());
    let mut below = vec![0u64; n];
    for layer in &layers {
        let top: Vec<u64> = (0..n)
            .map(|b| below[b] + u64::from(layer.counts.get(b).copied().unwrap_or(0)))
            .collect();
        below.clone_from(&top);
        tops.push(top);
    }
    let max = below.iter().copied().max().unwrap_or(0);

    let frame = layout.frame();
    let x = layout.x();
    let (y_max, y_values) = svg::count_ticks(max as f64);
    let y = Linear::new((0.0, y_max), (frame.bottom(), frame.top));
    let y_ticks: Vec<Tick> = y_values
        .iter()
        .map(|v| Tick {
            pos: y.map(*v),
            label: Some(format!("{v:.0}")),
            major: true,
        })
        .collect();

    layout.begin(out, "completions per second", &y_ticks);
    out.push_str("<g class=\"series\">\n");
    let zero = vec![0u64; n];
    for (i, layer) in layers.iter().enumerate() {
        if layer.counts.iter().all(|c| *c == 0) {
            continue;
        }
        let lower = if i == 0 { &zero } else { &tops[i - 1] };
        let path = step_area(&tops[i], lower, |b| x.map(b as f64), |v| y.map(v as f64));
        w!(
            out,
            "<path d=\"{path}\" fill=\"{}\" fill-opacity=\"0.85\"><title>{}</title></path>\n",
            layer.colour,
            escape(&layer.name)
        );
    }
    out.push_str("</g>\n");
    if max == 0 {
        svg::note(out, &frame, "no completed operations");
    }
    layout.axes(out, &y_ticks, "completions / s");
    hover_buckets(out, layout, tp);
    svg::close(out);
}

/// Invisible hover targets, one per second with completions, saying what the second
/// held (drawn last, so they are on top).
fn hover_buckets(out: &mut String, layout: &Layout, tp: &Throughput) {
    let frame = layout.frame();
    let x = layout.x();
    out.push_str("<g class=\"hover\" fill=\"#000\" fill-opacity=\"0\">\n");
    for b in 0..layout.buckets {
        let count = |v: &[u32]| u64::from(v.get(b).copied().unwrap_or(0));
        let ok: u64 = tp.ok.iter().map(|(_, v)| count(v)).sum();
        let (fail, info) = (count(&tp.fail), count(&tp.info));
        if ok + fail + info == 0 {
            continue;
        }
        let (x0, x1) = (x.map(b as f64), x.map(b as f64 + 1.0));
        w!(
            out,
            "<rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\">\
             <title>{b}–{} s: {ok} ok, {fail} fail, {info} info</title></rect>\n",
            frame.top,
            x1 - x0,
            frame.height,
            b + 1
        );
    }
    out.push_str("</g>\n");
}

/// The latency scatter: one dot per completed operation (sampled), at its invoke
/// time and its latency on a log scale, coloured by outcome.
pub(super) fn latency(out: &mut String, layout: &Layout, scatter: &Scatter) {
    let frame = layout.frame();
    let x = layout.x();
    let (min, max) = scatter.range_ms.unwrap_or((1.0, 1000.0));
    let y = Log::decades(min, max, 0.01, (frame.bottom(), frame.top));
    let y_ticks = y.ticks(ms_label);
    let x_end = layout.buckets as f64;

    layout.begin(out, "latency of each operation", &y_ticks);
    let mut kind: Option<Kind> = None;
    for p in &scatter.points {
        if kind != Some(p.kind) {
            if kind.is_some() {
                out.push_str("</g>\n");
            }
            w!(
                out,
                "<g class=\"dots {}\" fill=\"{}\" fill-opacity=\"{}\">\n",
                p.kind.name(),
                kind_colour(p.kind),
                if p.kind == Kind::Ok { "0.45" } else { "0.8" }
            );
            kind = Some(p.kind);
        }
        let (cx, cy) = (x.map(p.t_s.min(x_end)), y.map(p.latency_ms));
        if p.kind == Kind::Ok {
            w!(out, "<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"2\"/>\n");
        } else {
            w!(
                out,
                "<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"2.5\"><title>{} {} at {:.3} s \
                 after {}: {}</title></circle>\n",
                p.op,
                p.kind.name(),
                p.t_s,
                super::fmt_ms(p.latency_ms),
                escape(p.error)
            );
        }
    }
    if kind.is_some() {
        out.push_str("</g>\n");
    }
    if scatter.points.is_empty() {
        svg::note(out, &frame, "no completed operations");
    }
    layout.axes(out, &y_ticks, "latency");
    svg::close(out);
}

/// A log tick label: `m`×10^`e` ms, as ms below a second and as s above.
fn ms_label(m: f64, e: i32) -> String {
    if e >= 3 {
        format!("{:.0} s", m * 10f64.powi(e - 3))
    } else if e >= 0 {
        format!("{:.0} ms", m * 10f64.powi(e))
    } else {
        let decimals = usize::try_from(-e).unwrap_or(0);
        format!("{:.*} ms", decimals, m * 10f64.powi(e))
    }
}

/// An area between two step functions (one value per bucket): along the top from left
/// to right, then back along the bottom; consecutive equal values make one segment.
fn step_area(
    upper: &[u64],
    lower: &[u64],
    x: impl Fn(usize) -> f64,
    y: impl Fn(u64) -> f64,
) -> String {
    let n = upper.len().min(lower.len());
    if n == 0 {
        return String::new();
    }
    let mut d = String::new();
    w!(d, "M{:.1},{:.1}", x(0), y(upper[0]));
    for b in 1..n {
        if upper[b] != upper[b - 1] {
            w!(d, "H{:.1}V{:.1}", x(b), y(upper[b]));
        }
    }
    w!(d, "H{:.1}V{:.1}", x(n), y(lower[n - 1]));
    for b in (1..n).rev() {
        if lower[b - 1] != lower[b] {
            w!(d, "H{:.1}V{:.1}", x(b), y(lower[b - 1]));
        }
    }
    w!(d, "H{:.1}Z", x(0));
    d
}
