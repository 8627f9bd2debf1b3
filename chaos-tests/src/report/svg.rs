//! Hand-written SVG pieces: scales, ticks, axes and fault bands.
//!
//! Pixel coordinates grow rightwards and downwards, so a y scale maps its domain onto
//! `(bottom, top)` of the plot: larger values are drawn higher.

use super::escape;

/// A linear map from a domain onto a pixel range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Linear {
    d0: f64,
    d1: f64,
    r0: f64,
    r1: f64,
}

impl Linear {
    /// Maps `domain.0` to `range.0` and `domain.1` to `range.1`.
    pub(super) fn new(domain: (f64, f64), range: (f64, f64)) -> Linear {
        Linear {
            d0: domain.0,
            d1: domain.1,
            r0: range.0,
            r1: range.1,
        }
    }

    /// The pixel position of `v`.
    pub(super) fn map(&self, v: f64) -> f64 {
        let width = self.d1 - self.d0;
        if width.abs() < f64::EPSILON {
            return self.r0;
        }
        self.r0 + (v - self.d0) / width * (self.r1 - self.r0)
    }
}

/// A base-10 logarithmic map from `[lo, hi]` (both > 0) onto a pixel range; values
/// outside the domain are clamped to its ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Log {
    lo: f64,
    hi: f64,
    r0: f64,
    r1: f64,
}

impl Log {
    /// A scale whose domain is whole decades around `[min, max]` (values below
    /// `floor` count as `floor`).
    pub(super) fn decades(min: f64, max: f64, floor: f64, range: (f64, f64)) -> Log {
        let min = min.max(floor);
        let max = max.max(min);
        let e0 = min.log10().floor();
        let mut e1 = max.log10().ceil();
        if e1 <= e0 {
            e1 = e0 + 1.0;
        }
        Log {
            lo: 10f64.powf(e0),
            hi: 10f64.powf(e1),
            r0: range.0,
            r1: range.1,
        }
    }

    /// The pixel position of `v`.
    pub(super) fn map(&self, v: f64) -> f64 {
        let v = v.clamp(self.lo, self.hi);
        let frac = (v.ln() - self.lo.ln()) / (self.hi.ln() - self.lo.ln());
        self.r0 + frac * (self.r1 - self.r0)
    }

    /// A tick on every decade, labelled; within a span of at most two decades the
    /// 2× and 5× values are labelled too, otherwise they only get a faint grid line.
    pub(super) fn ticks(&self, label: impl Fn(f64, i32) -> String) -> Vec<Tick> {
        let e0 = self.lo.log10().round() as i32;
        let e1 = self.hi.log10().round() as i32;
        let label_minor = e1 - e0 <= 2;
        let mut ticks = Vec::new();
        for e in e0..=e1 {
            for m in [1u8, 2, 5] {
                let v = f64::from(m) * 10f64.powi(e);
                if v > self.hi * (1.0 + 1e-9) {
                    break;
                }
                let major = m == 1;
                ticks.push(Tick {
                    pos: self.map(v),
                    label: (major || label_minor).then(|| label(f64::from(m), e)),
                    major,
                });
            }
        }
        ticks
    }
}

/// A tick on an axis.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Tick {
    /// Pixel position along the axis.
    pub pos: f64,
    /// The label (none: a grid line only).
    pub label: Option<String>,
    /// A major tick gets a stronger grid line.
    pub major: bool,
}

/// A "nice" step (1, 2 or 5 × 10ⁿ) at least as large as `raw`.
pub(super) fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    let f = raw / magnitude;
    let m = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * magnitude
}

/// A count axis from 0: the domain's top (a whole number of steps at or above `max`)
/// and the tick values (about five, whole numbers).
pub(super) fn count_ticks(max: f64) -> (f64, Vec<f64>) {
    let step = nice_step(max / 5.0).max(1.0);
    let steps = (max / step).ceil().max(1.0) as usize;
    let ticks = (0..=steps).map(|i| i as f64 * step).collect();
    (steps as f64 * step, ticks)
}

/// Time ticks over `[0, span_s]` seconds: about ten, at steps people count in
/// (seconds, then minutes); labels in seconds for short runs and `m:ss` otherwise.
/// Returns the ticks (values in seconds) and the axis title.
pub(super) fn time_ticks(span_s: f64) -> (Vec<(f64, String)>, &'static str) {
    const STEPS: &[f64] = &[
        0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0,
        3600.0, 7200.0,
    ];
    let step = STEPS
        .iter()
        .copied()
        .find(|s| span_s / s <= 10.0)
        .unwrap_or_else(|| nice_step(span_s / 10.0));
    let clock = span_s >= 120.0;
    let count = (span_s / step + 1e-9).floor() as usize;
    let ticks = (0..=count)
        .map(|i| {
            let t = i as f64 * step;
            let label = if clock {
                clock_label(t)
            } else if step < 1.0 {
                format!("{t:.1}")
            } else {
                format!("{t:.0}")
            };
            (t, label)
        })
        .collect();
    let title = if clock {
        "time since start (m:ss)"
    } else {
        "time since start (s)"
    };
    (ticks, title)
}

/// `m:ss` (or `h:mm:ss`) for whole seconds.
fn clock_label(t: f64) -> String {
    let total = t.round() as u64;
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

/// The plot area of a chart, in pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Frame {
    /// Left edge.
    pub left: f64,
    /// Top edge.
    pub top: f64,
    /// Width.
    pub width: f64,
    /// Height.
    pub height: f64,
}

impl Frame {
    /// Right edge.
    pub(super) fn right(&self) -> f64 {
        self.left + self.width
    }

    /// Bottom edge.
    pub(super) fn bottom(&self) -> f64 {
        self.top + self.height
    }
}

/// Opens an `<svg>` element that scales to the page width.
pub(super) fn open(out: &mut String, width: f64, height: f64, label: &str) {
    w!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {width:.0} {height:.0}\" \
         role=\"img\" aria-label=\"{}\">\n",
        escape(label)
    );
}

/// Closes the `<svg>` element.
pub(super) fn close(out: &mut String) {
    out.push_str("</svg>\n");
}

/// Grid lines for both axes (drawn behind the data).
pub(super) fn grid(out: &mut String, frame: &Frame, x: &[Tick], y: &[Tick]) {
    out.push_str("<g class=\"grid\">\n");
    for t in x {
        w!(
            out,
            "<line x1=\"{p:.1}\" y1=\"{:.1}\" x2=\"{p:.1}\" y2=\"{:.1}\"{}/>\n",
            frame.top,
            frame.bottom(),
            if t.major { "" } else { " class=\"minor\"" },
            p = t.pos
        );
    }
    for t in y {
        w!(
            out,
            "<line x1=\"{:.1}\" y1=\"{p:.1}\" x2=\"{:.1}\" y2=\"{p:.1}\"{}/>\n",
            frame.left,
            frame.right(),
            if t.major { "" } else { " class=\"minor\"" },
            p = t.pos
        );
    }
    out.push_str("</g>\n");
}

/// The axis lines, tick marks, tick labels and titles (drawn over the data).
pub(super) fn axes(out: &mut String, frame: &Frame, x: &[Tick], y: &[Tick], titles: (&str, &str)) {
    let (left, bottom) = (frame.left, frame.bottom());
    out.push_str("<g class=\"axis\">\n");
    w!(
        out,
        "<line x1=\"{left:.1}\" y1=\"{bottom:.1}\" x2=\"{:.1}\" y2=\"{bottom:.1}\"/>\n",
        frame.right()
    );
    w!(
        out,
        "<line x1=\"{left:.1}\" y1=\"{:.1}\" x2=\"{left:.1}\" y2=\"{bottom:.1}\"/>\n",
        frame.top
    );
    for t in x.iter().filter(|t| t.label.is_some()) {
        w!(
            out,
            "<line x1=\"{p:.1}\" y1=\"{bottom:.1}\" x2=\"{p:.1}\" y2=\"{:.1}\"/>\n",
            bottom + 4.0,
            p = t.pos
        );
    }
    for t in y.iter().filter(|t| t.label.is_some()) {
        w!(
            out,
            "<line x1=\"{:.1}\" y1=\"{p:.1}\" x2=\"{left:.1}\" y2=\"{p:.1}\"/>\n",
            left - 4.0,
            p = t.pos
        );
    }
    out.push_str("</g>\n<g class=\"labels\">\n");
    for t in x {
        if let Some(label) = &t.label {
            w!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
                t.pos,
                bottom + 17.0,
                escape(label)
            );
        }
    }
    for t in y {
        if let Some(label) = &t.label {
            w!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
                left - 7.0,
                t.pos + 4.0,
                escape(label)
            );
        }
    }
    let (x_title, y_title) = titles;
    w!(
        out,
        "<text class=\"title\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
        frame.left + frame.width / 2.0,
        bottom + 36.0,
        escape(x_title)
    );
    let (ty_x, ty_y) = (14.0, frame.top + frame.height / 2.0);
    w!(
        out,
        "<text class=\"title\" x=\"{ty_x:.1}\" y=\"{ty_y:.1}\" text-anchor=\"middle\" \
         transform=\"rotate(-90 {ty_x:.1} {ty_y:.1})\">{}</text>\n",
        escape(y_title)
    );
    out.push_str("</g>\n");
}

/// A text in the middle of the plot (e.g. "no operations").
pub(super) fn note(out: &mut String, frame: &Frame, text: &str) {
    w!(
        out,
        "<text class=\"empty\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
        frame.left + frame.width / 2.0,
        frame.top + frame.height / 2.0,
        escape(text)
    );
}

// ---------------------------------------------------------------------------------
// Fault bands
// ---------------------------------------------------------------------------------

/// Height of one lane of fault labels above a plot.
pub(super) const LANE_H: f64 = 15.0;
/// At most this many lanes; further labels share the least crowded lane.
const MAX_LANES: usize = 8;
/// Rough width of one character of a band label (10px font).
const CHAR_W: f64 = 6.0;

/// A fault window placed on the x axis.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Band {
    /// Left edge, px.
    pub x0: f64,
    /// Right edge, px (at least 2px right of `x0`, so an instant fault shows).
    pub x1: f64,
    /// Where the label text starts, px.
    pub text_x: f64,
    /// The lane of its label.
    pub lane: usize,
    /// The label (`kill n2`).
    pub label: String,
    /// The hover text (times and detail).
    pub title: String,
    /// Its colour.
    pub colour: &'static str,
}

/// A band before its label lane is chosen.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct BandSpec {
    /// Left edge, px.
    pub x0: f64,
    /// Right edge, px.
    pub x1: f64,
    /// The label.
    pub label: String,
    /// The hover text.
    pub title: String,
    /// Its colour.
    pub colour: &'static str,
}

/// Places each band's label in the first lane where it overlaps no earlier label or
/// band (labels are kept inside `[0, max_x]`). Returns the bands and the lane count.
pub(super) fn layout_bands(specs: Vec<BandSpec>, max_x: f64) -> (Vec<Band>, usize) {
    let mut lane_ends: Vec<f64> = Vec::new();
    let mut bands = Vec::with_capacity(specs.len());
    for s in specs {
        let x1 = s.x1.max(s.x0 + 2.0);
        let text_w = s.label.chars().count() as f64 * CHAR_W;
        let text_x = (s.x0 + 3.0).min(max_x - 2.0 - text_w).max(0.0);
        let (lo, hi) = (s.x0.min(text_x), x1.max(text_x + text_w));
        let lane = match lane_ends.iter().position(|end| *end + 4.0 <= lo) {
            Some(lane) => lane,
            None if lane_ends.len() < MAX_LANES => {
                lane_ends.push(f64::NEG_INFINITY);
                lane_ends.len() - 1
            }
            None => lane_ends
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i),
        };
        lane_ends[lane] = lane_ends[lane].max(hi);
        bands.push(Band {
            x0: s.x0,
            x1,
            text_x,
            lane,
            label: s.label,
            title: s.title,
            colour: s.colour,
        });
    }
    (bands, lane_ends.len())
}

/// The translucent shading of every band across the plot (drawn behind the data).
pub(super) fn band_shading(out: &mut String, frame: &Frame, bands: &[Band]) {
    out.push_str("<g class=\"bands\">\n");
    for b in bands {
        w!(
            out,
            "<rect class=\"band\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" \
             fill=\"{c}\" fill-opacity=\"0.16\"><title>{}</title></rect>\n\
             <line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"{c}\" \
             stroke-opacity=\"0.7\"/>\n",
            b.x0,
            frame.top,
            b.x1 - b.x0,
            frame.height,
            escape(&b.title),
            frame.top,
            frame.bottom(),
            c = b.colour,
            x = b.x0
        );
    }
    out.push_str("</g>\n");
}

/// The band labels, in lanes above the plot: a bar as wide as the window with the
/// label beside it.
pub(super) fn band_labels(out: &mut String, top: f64, bands: &[Band]) {
    out.push_str("<g class=\"band-labels\">\n");
    for b in bands {
        let y = top + b.lane as f64 * LANE_H;
        w!(
            out,
            "<g><title>{}</title><rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" \
             fill=\"{}\" fill-opacity=\"0.55\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text></g>\n",
            escape(&b.title),
            b.x0,
            y + 1.0,
            b.x1 - b.x0,
            LANE_H - 3.0,
            b.colour,
            b.text_x,
            y + LANE_H - 4.5,
            escape(&b.label)
        );
    }
    out.push_str("</g>\n");
}
