//! The dashboard's charts: inline SVG drawn here from the per-minute series and the duration
//! histogram, so the page needs no script and no external asset to show them. Pure functions
//! of their inputs; floats only for geometry (counts and durations stay integers until drawn).

use std::fmt::Write;

use crate::html::{esc, iso_time};
use crate::projection::human_ms;
use crate::stats::{Histogram, Minute, MINUTE_MS};

/// Chart width and height in SVG user units (the page scales it to its column).
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 190.0;
/// Room for the axis labels: left, right, top, bottom.
const MARGIN: (f64, f64, f64, f64) = (56.0, 12.0, 24.0, 22.0);

/// Colours of the outcomes and percentiles (the same as the state names on the dashboard).
const COMPLETED: &str = "#17663a";
const REJECTED: &str = "#c08a00";
const COMPENSATED: &str = "#1b4f8a";
const P50: &str = "#17663a";
const P95: &str = "#c08a00";
const P99: &str = "#a33";

fn plot_w() -> f64 {
    WIDTH - MARGIN.0 - MARGIN.1
}

fn plot_h() -> f64 {
    HEIGHT - MARGIN.2 - MARGIN.3
}

/// The y of `v` on a scale of 0..=`max`.
fn y_of(v: f64, max: f64) -> f64 {
    MARGIN.2 + plot_h() * (1.0 - if max > 0.0 { v / max } else { 0.0 })
}

/// The SVG element, its title, axes, the y labels (bottom and top) and a legend.
fn frame(id: &str, title: &str, y_top: &str, legend: &[(&str, &str)], body: &str) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg id=\"{id}\" class=\"chart\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" \
aria-label=\"{t}\" xmlns=\"http://www.w3.org/2000/svg\"><title>{t}</title>\
<text x=\"{MARGIN0}\" y=\"14\" class=\"ct\">{t}</text>",
        t = esc(title),
        MARGIN0 = MARGIN.0,
    );
    let mut x = WIDTH - MARGIN.1;
    for (label, colour) in legend.iter().rev() {
        x -= 8.0 + 7.0 * label.len() as f64;
        let _ = write!(
            s,
            "<rect x=\"{x:.1}\" y=\"6\" width=\"9\" height=\"9\" fill=\"{colour}\"/>\
<text x=\"{:.1}\" y=\"14\" class=\"cl\">{}</text>",
            x + 12.0,
            esc(label)
        );
        x -= 6.0;
    }
    let (l, b) = (MARGIN.0, HEIGHT - MARGIN.3);
    let _ = write!(
        s,
        "<line x1=\"{l}\" y1=\"{top}\" x2=\"{l}\" y2=\"{b}\" class=\"ax\"/>\
<line x1=\"{l}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" class=\"ax\"/>\
<text x=\"{lx}\" y=\"{b}\" class=\"cy\">0</text><text x=\"{lx}\" y=\"{ty}\" class=\"cy\">{}</text>",
        esc(y_top),
        top = MARGIN.2,
        r = WIDTH - MARGIN.1,
        lx = l - 4.0,
        ty = MARGIN.2 + 8.0,
    );
    s.push_str(body);
    s.push_str("</svg>");
    s
}

/// Labels under a time axis of `n` minutes: the first, the middle and the last minute (UTC).
fn minute_labels(minutes: &[(u64, Minute)]) -> String {
    let mut s = String::new();
    let n = minutes.len();
    for (i, anchor) in [
        (0, "start"),
        (n / 2, "middle"),
        (n.saturating_sub(1), "end"),
    ] {
        if let Some((m, _)) = minutes.get(i) {
            let t = iso_time(m * MINUTE_MS);
            let _ = write!(
                s,
                "<text x=\"{:.1}\" y=\"{}\" class=\"cx\" text-anchor=\"{anchor}\">{} UTC</text>",
                slot_x(i, n) + slot_w(n) / 2.0,
                HEIGHT - 6.0,
                &t[11..16]
            );
        }
    }
    s
}

fn slot_w(n: usize) -> f64 {
    plot_w() / n.max(1) as f64
}

fn slot_x(i: usize, n: usize) -> f64 {
    MARGIN.0 + slot_w(n) * i as f64
}

/// Sagas finished per minute, stacked by outcome (COMPLETED, REJECTED, COMPENSATED).
pub fn outcomes_per_minute(minutes: &[(u64, Minute)]) -> String {
    let n = minutes.len();
    let max = minutes.iter().map(|(_, m)| m.total()).max().unwrap_or(0);
    let mut body = String::new();
    let colours = [COMPLETED, REJECTED, COMPENSATED];
    for (i, (minute, m)) in minutes.iter().enumerate() {
        if m.total() == 0 {
            continue;
        }
        let x = slot_x(i, n) + 0.5;
        let w = (slot_w(n) - 1.0).max(0.5);
        let mut below = 0u64;
        let _ = write!(
            body,
            "<g class=\"bar\"><title>{} UTC: {} completed, {} rejected, {} compensated</title>",
            &iso_time(minute * MINUTE_MS)[11..16],
            m.outcomes[0],
            m.outcomes[1],
            m.outcomes[2]
        );
        for (count, colour) in m.outcomes.iter().zip(colours) {
            if *count == 0 {
                continue;
            }
            let y_top = y_of((below + count) as f64, max as f64);
            let y_bottom = y_of(below as f64, max as f64);
            let _ = write!(
                body,
                "<rect x=\"{x:.1}\" y=\"{y_top:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{colour}\"/>",
                y_bottom - y_top
            );
            below += count;
        }
        body.push_str("</g>");
    }
    body.push_str(&minute_labels(minutes));
    frame(
        "chart-outcomes",
        "Sagas per minute by outcome, last hour",
        &max.to_string(),
        &[
            ("COMPLETED", COMPLETED),
            ("REJECTED", REJECTED),
            ("COMPENSATED", COMPENSATED),
        ],
        &body,
    )
}

/// Polylines through the points of the minutes that have a value, broken where one has none
/// (a lone point is drawn as a dot).
fn series(values: &[Option<f64>], max: f64, colour: &str, class: &str) -> String {
    let n = values.len();
    let mut s = String::new();
    let mut run: Vec<(f64, f64)> = Vec::new();
    let flush = |run: &mut Vec<(f64, f64)>, s: &mut String| {
        match run.len() {
            0 => {}
            1 => {
                let _ = write!(
                    s,
                    "<circle class=\"{class}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{colour}\"/>",
                    run[0].0, run[0].1
                );
            }
            _ => {
                let points: Vec<String> =
                    run.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
                let _ = write!(
                    s,
                    "<polyline class=\"{class}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
                    points.join(" ")
                );
            }
        }
        run.clear();
    };
    for (i, v) in values.iter().enumerate() {
        match v {
            Some(v) => run.push((slot_x(i, n) + slot_w(n) / 2.0, y_of(*v, max))),
            None => flush(&mut run, &mut s),
        }
    }
    flush(&mut run, &mut s);
    s
}

/// p50, p95 and p99 of the durations of the sagas that finished in each minute.
pub fn duration_percentiles(minutes: &[(u64, Minute)]) -> String {
    let q = |p: f64| -> Vec<Option<f64>> {
        minutes
            .iter()
            .map(|(_, m)| m.durations.quantile(p).map(|v| v as f64))
            .collect()
    };
    let (p50, p95, p99) = (q(0.50), q(0.95), q(0.99));
    let max = p99.iter().flatten().fold(0.0f64, |a, b| a.max(*b));
    let mut body = series(&p50, max, P50, "p50");
    body.push_str(&series(&p95, max, P95, "p95"));
    body.push_str(&series(&p99, max, P99, "p99"));
    body.push_str(&minute_labels(minutes));
    frame(
        "chart-percentiles",
        "Saga duration per minute: p50, p95, p99",
        &human_ms(max as u64),
        &[("p50", P50), ("p95", P95), ("p99", P99)],
        &body,
    )
}

/// COMPENSATED / finished, per minute (minutes where nothing finished are gaps).
pub fn compensation_rate(minutes: &[(u64, Minute)]) -> String {
    let rates: Vec<Option<f64>> = minutes
        .iter()
        .map(|(_, m)| (m.total() > 0).then(|| m.compensation_rate() * 100.0))
        .collect();
    let max = rates.iter().flatten().fold(0.0f64, |a, b| a.max(*b));
    // The scale ends at the next 10% above the highest rate, so a low rate is still visible.
    let top = ((max / 10.0).ceil() * 10.0).clamp(10.0, 100.0);
    let mut body = series(&rates, top, COMPENSATED, "rate");
    body.push_str(&minute_labels(minutes));
    frame(
        "chart-compensation",
        "Compensation rate per minute",
        &format!("{top:.0}%"),
        &[("COMPENSATED / finished", COMPENSATED)],
        &body,
    )
}

/// How many finished sagas took how long, every saga the tracker has seen: one bar per
/// doubling of the duration (1 ms, 2 ms, 4 ms, ...).
pub fn duration_histogram(durations: &Histogram) -> String {
    let mut bins: Vec<u64> = Vec::new();
    for (value, count) in durations.buckets() {
        let bin = (64 - value.max(1).leading_zeros() - 1) as usize; // floor(log2)
        if bins.len() <= bin {
            bins.resize(bin + 1, 0);
        }
        bins[bin] += count;
    }
    let first = bins.iter().position(|c| *c > 0).unwrap_or(0);
    let bins = &bins[first.min(bins.len())..];
    let n = bins.len();
    let max = bins.iter().copied().max().unwrap_or(0);
    let mut body = String::new();
    for (i, count) in bins.iter().enumerate() {
        let lower = 1u64 << (first + i);
        if *count > 0 {
            let y = y_of(*count as f64, max as f64);
            let _ = write!(
                body,
                "<rect class=\"bin\" x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{COMPENSATED}\">\
<title>{} to {}: {count}</title></rect>",
                slot_x(i, n) + 1.0,
                (slot_w(n) - 2.0).max(0.5),
                HEIGHT - MARGIN.3 - y,
                human_ms(lower),
                human_ms(lower * 2),
            );
        }
        if i == 0 || i + 1 == n || i == n / 2 {
            let _ = write!(
                body,
                "<text x=\"{:.1}\" y=\"{}\" class=\"cx\" text-anchor=\"middle\">{}</text>",
                slot_x(i, n) + slot_w(n) / 2.0,
                HEIGHT - 6.0,
                human_ms(lower)
            );
        }
    }
    frame(
        "chart-durations",
        "Saga durations, every finished saga (bars double in width)",
        &max.to_string(),
        &[],
        &body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projection::SagaState;
    use crate::stats::Minutes;

    #[test]
    fn the_charts_draw_what_the_minutes_hold() {
        let mut m = Minutes::default();
        let now = 30_000 * MINUTE_MS;
        for (state, at, d) in [
            (SagaState::Completed, now - 2 * MINUTE_MS, 120),
            (SagaState::Completed, now - 2 * MINUTE_MS, 240),
            (SagaState::Compensated, now - 2 * MINUTE_MS, 5_000),
            (SagaState::Rejected, now, 30),
        ] {
            m.add(state, at, d);
        }
        let hour = m.last_hour(now);
        let svg = outcomes_per_minute(&hour);
        assert_eq!(svg.matches("<g class=\"bar\">").count(), 2, "{svg}");
        assert!(svg.contains("2 completed, 0 rejected, 1 compensated"));
        let svg = duration_percentiles(&hour);
        // Two minutes with values, not adjacent: dots, no lines.
        assert_eq!(svg.matches("<circle class=\"p99\"").count(), 2, "{svg}");
        let svg = compensation_rate(&hour);
        assert!(
            svg.contains(">40%<"),
            "1 of 3 is 33%: the scale ends at 40%: {svg}"
        );
        let mut h = Histogram::default();
        for d in [1, 3, 3, 1_000] {
            h.add(d);
        }
        let svg = duration_histogram(&h);
        // Bins from 1 ms to 512 ms..1 s: ten bars' room, three bars drawn.
        assert_eq!(svg.matches("<rect class=\"bin\"").count(), 3, "{svg}");
        assert!(svg.contains("2ms to 4ms: 2"), "{svg}");
        assert!(duration_histogram(&Histogram::default()).contains("chart-durations"));
    }
}
