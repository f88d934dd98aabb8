//! A hand-written SVG line chart for the `sizes` scenario: two panels
//! (Mpps, and Gbit/s on the wire) against frame size, one line per tool.
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
    for (i, s) in legend.iter().enumerate() {
        let y = PANEL_H + 8.0 + 22.0 * i as f64;
        let dash = if s.dashed {
            r#" stroke-dasharray="5,4""#
        } else {
            ""
        };
        let _ = writeln!(
            out,
            r#"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
            LEFT + 28.0,
            s.color,
            LEFT + 36.0,
            y + 4.0,
            esc(&s.label)
        );
    }
    let _ = writeln!(
        out,
        r##"<text x="{LEFT}" y="{:.1}" fill="#555">{}</text>"##,
        height - 10.0,
        esc(caption)
    );
    out.push_str("</svg>\n");
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
}
