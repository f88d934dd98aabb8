//! Hand-written SVG charts: the `sizes` line chart (two panels, Mpps and
//! Gbit/s on the wire, against frame size, one line per tool), and the
//! `congestion` CDF of queueing delay per level on a log time axis.
use std::fmt::Write;

/// One line of the chart: a label, a colour and one y value per x label.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub color: &'static str,
    pub dashed: bool,
    pub values: Vec<f64>,
}

/// One panel: its title, y-axis label and series over shared x labels.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

const PANEL_W: f64 = 440.0;
const PANEL_H: f64 = 300.0;
const LEFT: f64 = 58.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 48.0;

/// A "nice" axis maximum and tick step for data up to `max`.
pub fn nice_axis(max: f64) -> (f64, f64) {
    if !(max.is_finite() && max > 0.0) {
        return (1.0, 0.2);
    }
    let raw_step = max / 5.0;
    let mag = 10f64.powf(raw_step.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw_step)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The legend (one line per series, from `top` down), the caption and the
/// closing tag: the end of every chart.
fn finish<'a>(
    out: &mut String,
    top: f64,
    items: impl Iterator<Item = (&'a str, &'a str, bool)>,
    height: f64,
    caption: &str,
) {
    for (i, (label, color, dashed)) in items.enumerate() {
        let y = top + 8.0 + 22.0 * i as f64;
        let dash = if dashed {
            r#" stroke-dasharray="5,4""#
        } else {
            ""
        };
        let _ = writeln!(
            out,
            r#"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
            LEFT + 28.0,
            color,
            LEFT + 36.0,
            y + 4.0,
            esc(label)
        );
    }
    let _ = writeln!(
        out,
        r##"<text x="{LEFT}" y="{:.1}" fill="#555">{}</text>"##,
        height - 10.0,
        esc(caption)
    );
    out.push_str("</svg>\n");
}

fn panel(out: &mut String, x0: f64, x_labels: &[String], p: &Panel) {
    let plot_w = PANEL_W - LEFT - RIGHT;
    let plot_h = PANEL_H - TOP - BOTTOM;
    let max = p
        .series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let (ymax, step) = nice_axis(max);
    let n = x_labels.len().max(1);
    let x_at = |i: usize| x0 + LEFT + plot_w * (i as f64 + 0.5) / n as f64;
    let y_at = |v: f64| TOP + plot_h * (1.0 - v / ymax);

    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="20" text-anchor="middle" font-weight="bold">{}</text>"#,
        x0 + LEFT + plot_w / 2.0,
        esc(&p.title)
    );
    let mut tick = 0.0;
    while tick <= ymax + step / 2.0 {
        let y = y_at(tick);
        let _ = writeln!(
            out,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            x0 + LEFT,
            x0 + LEFT + plot_w,
            x0 + LEFT - 6.0,
            y + 4.0,
            if step < 1.0 {
                format!("{tick:.1}")
            } else {
                format!("{tick:.0}")
            }
        );
        tick += step;
    }
    let _ = writeln!(
        out,
        r##"<rect x="{:.1}" y="{TOP}" width="{plot_w:.1}" height="{plot_h:.1}" fill="none" stroke="#444"/>"##,
        x0 + LEFT
    );
    for (i, l) in x_labels.iter().enumerate() {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x_at(i),
            TOP + plot_h + 16.0,
            esc(l)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">frame size (bytes)</text>"#,
        x0 + LEFT + plot_w / 2.0,
        TOP + plot_h + 36.0
    );
    let _ = writeln!(
        out,
        r#"<text transform="translate({:.1},{:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        x0 + 16.0,
        TOP + plot_h / 2.0,
        esc(&p.y_label)
    );
    for s in &p.series {
        let pts: Vec<String> = s
            .values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(i, v)| format!("{:.1},{:.1}", x_at(i), y_at(*v)))
            .collect();
        let dash = if s.dashed {
            r#" stroke-dasharray="5,4""#
        } else {
            ""
        };
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
            pts.join(" "),
            s.color
        );
        if !s.dashed {
            for p in &pts {
                let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
                let _ = writeln!(
                    out,
                    r#"<circle cx="{x}" cy="{y}" r="3" fill="{}"/>"#,
                    s.color
                );
            }
        }
    }
}

/// The whole chart: panels side by side, a shared legend, and a caption.
pub fn chart(x_labels: &[String], panels: &[Panel], caption: &str) -> String {
    let width = PANEL_W * panels.len() as f64;
    let legend: Vec<&Series> =
        panels
            .iter()
            .flat_map(|p| p.series.iter())
            .fold(Vec::new(), |mut acc: Vec<&Series>, s| {
                if !acc.iter().any(|a| a.label == s.label) {
                    acc.push(s);
                }
                acc
            });
    let height = PANEL_H + 22.0 * legend.len() as f64 + 30.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (i, p) in panels.iter().enumerate() {
        panel(&mut out, PANEL_W * i as f64, x_labels, p);
    }
    let items = legend.iter().map(|s| (s.label.as_str(), s.color, s.dashed));
    finish(&mut out, PANEL_H, items, height, caption);
    out
}

/// One curve of a CDF chart: `(x, fraction ≤ x)` points by increasing x.
#[derive(Debug, Clone)]
pub struct CdfSeries {
    pub label: String,
    pub color: &'static str,
    pub points: Vec<(f64, f64)>,
}

/// The decades a log axis spans to show `lo..=hi` (both > 0).
pub fn log_decades(lo: f64, hi: f64) -> (i32, i32) {
    if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && hi >= lo) {
        return (0, 1);
    }
    let a = lo.log10().floor() as i32;
    let b = (hi.log10().ceil() as i32).max(a + 1);
    (a, b)
}

/// A tick label for 10^e of the x unit (µs).
fn decade_label(e: i32) -> String {
    match e {
        e if e < 0 => format!("{}", 10f64.powi(e)),
        e if e < 3 => format!("{}", 10u64.pow(e as u32)),
        e if e < 6 => format!("{} ms", 10u64.pow(e as u32 - 3)),
        e => format!("{} s", 10u64.pow((e - 6) as u32)),
    }
}

/// A CDF chart: x on a log axis (µs), y the fraction of packets from 0 to
/// 1, one step curve per series, dashed vertical `markers` (x, label) for
/// targets, a dotted line at 0.99, a legend and a caption.
pub fn cdf_chart(
    title: &str,
    x_label: &str,
    series: &[CdfSeries],
    markers: &[(f64, String)],
    caption: &str,
) -> String {
    let (w, h) = (720.0, 380.0);
    let plot_w = w - LEFT - RIGHT - 10.0;
    let plot_h = h - TOP - BOTTOM;
    let xs = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .chain(markers.iter().map(|m| m.0))
        .filter(|x| x.is_finite() && *x > 0.0);
    let (lo, hi) = xs.fold((f64::INFINITY, 0.0f64), |(a, b), x| (a.min(x), b.max(x)));
    let (d0, d1) = log_decades(lo, hi);
    let x_at = |x: f64| {
        let x = x.max(10f64.powi(d0));
        LEFT + plot_w * (x.log10() - f64::from(d0)) / f64::from(d1 - d0)
    };
    let y_at = |f: f64| TOP + plot_h * (1.0 - f.clamp(0.0, 1.0));
    let height = h + 22.0 * series.len() as f64 + 30.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{height:.0}" viewBox="0 0 {w:.0} {height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="20" text-anchor="middle" font-weight="bold">{}</text>"#,
        LEFT + plot_w / 2.0,
        esc(title)
    );
    for f in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let y = y_at(f);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{f}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0
        );
    }
    let y99 = y_at(0.99);
    let _ = writeln!(
        out,
        r##"<line x1="{LEFT}" y1="{y99:.1}" x2="{:.1}" y2="{y99:.1}" stroke="#999" stroke-dasharray="2,3"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#777">0.99</text>"##,
        LEFT + plot_w,
        LEFT + plot_w - 2.0,
        y99 + 12.0
    );
    for e in d0..=d1 {
        let x = x_at(10f64.powi(e));
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 16.0,
            esc(&decade_label(e))
        );
    }
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w:.1}" height="{plot_h:.1}" fill="none" stroke="#444"/>"##
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        TOP + plot_h + 36.0,
        esc(x_label)
    );
    let _ = writeln!(
        out,
        r#"<text transform="translate(16,{:.1}) rotate(-90)" text-anchor="middle">fraction of packets ≤ x</text>"#,
        TOP + plot_h / 2.0
    );
    for (x, label) in markers {
        let px = x_at(*x);
        let _ = writeln!(
            out,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#555" stroke-dasharray="5,4"/><text x="{:.1}" y="{:.1}" fill="#555">{}</text>"##,
            TOP + plot_h,
            px + 4.0,
            TOP + 14.0,
            esc(label)
        );
    }
    for s in series {
        let mut pts = Vec::new();
        let mut prev = 0.0;
        for &(x, f) in &s.points {
            if !(x.is_finite() && x > 0.0 && f.is_finite()) {
                continue;
            }
            // Each bucket is reported at its upper bound: rise there.
            pts.push(format!("{:.1},{:.1}", x_at(x), y_at(prev)));
            pts.push(format!("{:.1},{:.1}", x_at(x), y_at(f)));
            prev = f;
        }
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            pts.join(" "),
            s.color
        );
    }
    let items = series.iter().map(|s| (s.label.as_str(), s.color, false));
    finish(&mut out, h, items, height, caption);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_axes() {
        assert_eq!(nice_axis(32.7), (40.0, 10.0));
        assert_eq!(nice_axis(9.0), (10.0, 2.0));
        assert_eq!(nice_axis(0.0), (1.0, 0.2));
        let (max, step) = nice_axis(123.0);
        assert!(max >= 123.0 && step > 0.0);
    }

    #[test]
    fn chart_is_one_svg_with_every_series() {
        let labels: Vec<String> = ["64", "1518"].iter().map(|s| s.to_string()).collect();
        let svg = chart(
            &labels,
            &[Panel {
                title: "Mpps".into(),
                y_label: "Mpps".into(),
                series: vec![
                    Series {
                        label: "sluice".into(),
                        color: "#1f77b4",
                        dashed: false,
                        values: vec![28.0, 8.0],
                    },
                    Series {
                        label: "10 GbE line rate <ref>".into(),
                        color: "#999",
                        dashed: true,
                        values: vec![14.88, f64::NAN],
                    },
                ],
            }],
            "caption & more",
        );
        assert!(svg.starts_with("<svg "));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("&lt;ref&gt;"));
        assert!(svg.contains("caption &amp; more"));
        // Two points for sluice, none for the dashed reference.
        assert_eq!(svg.matches("<circle").count(), 2);
    }

    #[test]
    fn log_axis_spans_whole_decades() {
        assert_eq!(log_decades(1.0, 5000.0), (0, 4));
        assert_eq!(log_decades(0.3, 0.9), (-1, 0));
        assert_eq!(log_decades(10.0, 10.0), (1, 2));
        assert_eq!(log_decades(0.0, 1.0), (0, 1));
        assert_eq!(decade_label(2), "100");
        assert_eq!(decade_label(3), "1 ms");
        assert_eq!(decade_label(6), "1 s");
    }

    #[test]
    fn cdf_chart_has_a_step_curve_per_series_and_the_markers() {
        let svg = cdf_chart(
            "delay",
            "µs",
            &[
                CdfSeries {
                    label: "3 premium".into(),
                    color: "#d62728",
                    points: vec![(1.0, 0.5), (4.0, 1.0)],
                },
                CdfSeries {
                    label: "5 best effort <be>".into(),
                    color: "#1f77b4",
                    points: vec![(2000.0, 0.9), (f64::NAN, 0.95), (8000.0, 1.0)],
                },
            ],
            &[
                (100.0, "premium target".into()),
                (5000.0, "CoDel 5 ms".into()),
            ],
            "caption",
        );
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        // Two points per bucket (rise at the bound); the NaN one skipped.
        let first = svg.split("<polyline points=\"").nth(1).unwrap();
        assert_eq!(first.split('"').next().unwrap().split(' ').count(), 4);
        assert!(svg.contains("premium target") && svg.contains("CoDel 5 ms"));
        assert!(svg.contains("&lt;be&gt;"));
        assert!(svg.contains(">1 ms<") && svg.contains(">10 ms<"));
    }
}
