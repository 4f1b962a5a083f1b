//! The timeline as SVG, written here rather than in the template: one row
//! per host grouped by wave, each span a bar from its start to its end in
//! its result's colour (as a `fill` attribute, so the colour is in the
//! document itself, not only in a style sheet), wave starts as dashed
//! lines, soaks as shaded bands, times on an axis. Hovering a bar shows its
//! `<title>`; each bar links to its evidence in the hosts section (`#sN`),
//! which the page's script opens in a panel.
//!
//! Every text that came from the inventory, the configuration or a host
//! goes through [`esc`]: this is the one place where HTML is written by
//! hand. Sizes: a host is one 16 px row; at 500 hosts with eight gates
//! each the SVG is about 4,000 bars (see README for the file's size and
//! Chromium's render time).

use std::fmt::Write as _;

use crate::report::timeline::{SpanKind, SpanResult, Timeline};

/// Escape text for HTML and SVG text and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// The colour of each result (the legend uses the same).
pub fn colour(r: SpanResult) -> &'static str {
    match r {
        SpanResult::Passed => "#2da44e",
        SpanResult::Failed => "#cf222e",
        SpanResult::RolledBack => "#bf8700",
        SpanResult::Deferred => "#0969da",
        SpanResult::NotStarted => "#afb8c1",
        SpanResult::Unfinished => "#8250df",
    }
}

const WIDTH: f64 = 1200.0;
const LABEL: f64 = 230.0;
const PLOT: f64 = WIDTH - LABEL - 16.0;
const AXIS: f64 = 30.0;
const ROW: f64 = 16.0;
const BAR: f64 = 10.0;
const WAVE_HEAD: f64 = 22.0;
const NAME_CHARS: usize = 30;

/// A time axis step that gives about eight ticks, in milliseconds.
fn tick_step(span_ms: u64) -> u64 {
    const STEPS: [u64; 16] = [
        1_000, 2_000, 5_000, 10_000, 15_000, 30_000, 60_000, 120_000, 300_000, 600_000, 900_000,
        1_800_000, 3_600_000, 7_200_000, 21_600_000, 43_200_000,
    ];
    STEPS
        .into_iter()
        .find(|s| span_ms / s <= 8)
        .unwrap_or(86_400_000)
}

/// `+1m30s`, `+45s`, `+2h`.
pub fn offset(ms: u64) -> String {
    let s = ms / 1000;
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, s) => format!("+{s}s"),
        (0, m, 0) => format!("+{m}m"),
        (0, m, s) => format!("+{m}m{s:02}s"),
        (h, 0, _) => format!("+{h}h"),
        (h, m, _) => format!("+{h}h{m:02}m"),
    }
}

struct Plot {
    start: u64,
    span: u64,
}

impl Plot {
    fn x(&self, ms: u64) -> f64 {
        LABEL + ms.saturating_sub(self.start) as f64 / self.span as f64 * PLOT
    }
}

fn short_name(host: &str) -> String {
    if host.chars().count() <= NAME_CHARS {
        host.to_owned()
    } else {
        let mut s: String = host.chars().take(NAME_CHARS - 1).collect();
        s.push('…');
        s
    }
}

/// The SVG of `t`. `span_id(row, span)` names each span's evidence anchor.
pub fn timeline(t: &Timeline, span_id: impl Fn(usize, usize) -> String) -> String {
    let rows = t.rows.len() as f64;
    let waves = t
        .waves
        .iter()
        .filter(|w| t.rows_of(&w.name).next().is_some())
        .count() as f64;
    let height = AXIS + waves * WAVE_HEAD + rows * ROW + 8.0;
    let plot = Plot {
        start: t.start_ms,
        span: t.end_ms.saturating_sub(t.start_ms).max(1000),
    };
    let mut out = String::with_capacity(300 + t.rows.len() * 1200);
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="timeline of the run, one row per host">"#
    );
    axis(&mut out, &plot, height);
    soaks(&mut out, t, &plot, height);
    let mut y = AXIS;
    for w in &t.waves {
        let mut rows = t
            .rows
            .iter()
            .enumerate()
            .filter(|(_, r)| r.wave == w.name)
            .peekable();
        if rows.peek().is_none() {
            continue;
        }
        wave_head(&mut out, w, &plot, y, height);
        y += WAVE_HEAD;
        for (i, r) in rows {
            row(&mut out, r, i, &plot, y, &span_id);
            y += ROW;
        }
    }
    out.push_str("</svg>");
    out
}

fn axis(out: &mut String, plot: &Plot, height: f64) {
    let step = tick_step(plot.span);
    let mut at = 0;
    while at <= plot.span {
        let x = plot.x(plot.start + at);
        let _ = write!(
            out,
            r##"<line class="grid" x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{height}" stroke="#d0d7de" stroke-width="0.5"/><text class="tick" x="{x:.1}" y="{}" text-anchor="middle" font-size="11">{}</text>"##,
            AXIS - 6.0,
            AXIS - 10.0,
            offset(at)
        );
        at += step;
    }
}

fn soaks(out: &mut String, t: &Timeline, plot: &Plot, height: f64) {
    for w in &t.waves {
        if let Some((from, to)) = w.soak {
            let (x1, x2) = (plot.x(from), plot.x(to.min(t.end_ms.max(from))));
            let _ = write!(
                out,
                r##"<rect class="soak" x="{x1:.1}" y="{}" width="{:.1}" height="{:.1}" fill="#fff8c5" stroke="#d4a72c" stroke-dasharray="3 2"><title>soak of wave {}: {} s</title></rect>"##,
                AXIS,
                (x2 - x1).max(1.0),
                height - AXIS,
                esc(&w.name),
                (to - from) / 1000
            );
        }
    }
}

fn wave_head(
    out: &mut String,
    w: &crate::report::timeline::Wave,
    plot: &Plot,
    y: f64,
    height: f64,
) {
    let _ = write!(
        out,
        r##"<g class="wave" data-wave="{}"><text x="4" y="{:.1}" font-size="12" font-weight="bold">wave {} ({} host(s){})</text>"##,
        esc(&w.name),
        y + 15.0,
        esc(&short_name(&w.name)),
        w.hosts.len(),
        if w.stopped_run {
            ", stopped the run"
        } else {
            ""
        }
    );
    if let Some(start) = w.started_ms {
        let x = plot.x(start);
        let _ = write!(
            out,
            r##"<line class="wave-start" x1="{x:.1}" y1="{y:.1}" x2="{x:.1}" y2="{height}" stroke="#57606a" stroke-dasharray="4 3"><title>wave {} started at {}</title></line>"##,
            esc(&w.name),
            offset(start.saturating_sub(plot.start))
        );
    }
    if let (Some(a), Some(b)) = (w.started_ms, w.finished_ms) {
        let _ = write!(
            out,
            r##"<rect class="wave-span" x="{:.1}" y="{:.1}" width="{:.1}" height="4" fill="#57606a"/>"##,
            plot.x(a),
            y + 16.0,
            (plot.x(b) - plot.x(a)).max(1.0)
        );
    }
    out.push_str("</g>");
}

fn row(
    out: &mut String,
    r: &crate::report::timeline::Row,
    index: usize,
    plot: &Plot,
    y: f64,
    span_id: &impl Fn(usize, usize) -> String,
) {
    let host = esc(&r.host);
    let _ = write!(
        out,
        r##"<g class="row" data-host="{host}" data-wave="{}"><a href="#host{index}"><text class="host" x="{}" y="{:.1}" font-size="11" text-anchor="end">{}<title>{host}</title></text></a>"##,
        esc(&r.wave),
        LABEL - 8.0,
        y + 11.5,
        esc(&short_name(&r.host)),
    );
    for (j, s) in r.spans.iter().enumerate() {
        let mut x = plot.x(s.start_ms);
        // A host never started gets a bar wide enough to see at the run's end.
        let min = if s.kind == SpanKind::NotStarted {
            24.0
        } else {
            2.0
        };
        let w = (plot.x(s.end_ms) - x).max(min);
        x = x.min(LABEL + PLOT - w);
        let _ = write!(
            out,
            r##"<a class="span" href="#{id}"><rect class="bar {class}" x="{x:.1}" y="{:.1}" width="{w:.1}" height="{BAR}" fill="{fill}" data-gate="{gate}" data-result="{class}"><title>{host}: {gate} {words}, {secs:.1} s{inferred}</title></rect></a>"##,
            y + (ROW - BAR) / 2.0,
            id = span_id(index, j),
            class = s.result.class(),
            fill = colour(s.result),
            gate = s.kind.label(),
            words = s.result.words(),
            secs = s.seconds(),
            inferred = if s.start_inferred {
                " (start inferred)"
            } else {
                ""
            },
        );
    }
    out.push_str("</g>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_offsets_read_well() {
        assert_eq!(
            esc("<script>\"a\"&'b'</script>\u{7}"),
            "&lt;script&gt;&quot;a&quot;&amp;&#39;b&#39;&lt;/script&gt;\u{fffd}"
        );
        assert_eq!(offset(0), "+0s");
        assert_eq!(offset(45_000), "+45s");
        assert_eq!(offset(90_000), "+1m30s");
        assert_eq!(offset(3_600_000), "+1h");
        assert_eq!(offset(3_720_000), "+1h02m");
        assert_eq!(tick_step(25_000), 5_000);
        assert_eq!(tick_step(3_600_000), 600_000);
    }
}
