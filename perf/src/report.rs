//! Presenting results: aligned text tables for the terminal, Markdown for
//! RESULTS.md, and the record appended there after each invocation.
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::machine::Machine;

/// A table with a header row; cells are preformatted text.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Table {
        Table {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    fn widths(&self) -> Vec<usize> {
        let mut w: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if i < w.len() {
                    w[i] = w[i].max(c.chars().count());
                }
            }
        }
        w
    }

    /// Aligned columns: the first left-aligned, the rest right-aligned.
    pub fn to_text(&self) -> String {
        let w = self.widths();
        let fmt_row = |cells: &[String]| {
            let mut s = String::new();
            for (i, width) in w.iter().enumerate() {
                let c = cells.get(i).map(String::as_str).unwrap_or("");
                if i == 0 {
                    s.push_str(&format!("{c:<width$}"));
                } else {
                    s.push_str(&format!("  {c:>width$}"));
                }
            }
            s.trim_end().to_owned()
        };
        let mut out = fmt_row(&self.headers);
        out.push('\n');
        out.push_str(&"-".repeat(w.iter().sum::<usize>() + 2 * w.len().saturating_sub(1)));
        for r in &self.rows {
            out.push('\n');
            out.push_str(&fmt_row(r));
        }
        out.push('\n');
        out
    }

    pub fn to_markdown(&self) -> String {
        let esc = |s: &str| s.replace('|', "\\|");
        let mut out = format!(
            "| {} |\n|{}\n",
            self.headers
                .iter()
                .map(|h| esc(h))
                .collect::<Vec<_>>()
                .join(" | "),
            (0..self.headers.len())
                .map(|i| if i == 0 { " --- |" } else { " ---: |" })
                .collect::<String>()
        );
        for r in &self.rows {
            out.push_str(&format!(
                "| {} |\n",
                r.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" | ")
            ));
        }
        out
    }
}

/// What one scenario produced.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub name: String,
    pub title: String,
    /// Empty when the scenario could not run (see `notes`).
    pub tables: Vec<Table>,
    /// Method, caveats, and why anything is missing.
    pub notes: Vec<String>,
    /// Every command line it ran, in order.
    pub commands: Vec<String>,
    /// Files it wrote (e.g. a plot), relative to RESULTS.md.
    pub files: Vec<String>,
    /// Generated inputs worth keeping with the figures (title, text), such
    /// as the Sluice config of each run, whose temp file is gone afterwards.
    pub inputs: Vec<(String, String)>,
    /// Machine-readable figures for `--json`.
    pub data: serde_json::Value,
}

impl ScenarioReport {
    pub fn to_text(&self) -> String {
        let mut s = format!("== {}: {}\n", self.name, self.title);
        for t in &self.tables {
            s.push_str(&t.to_text());
            s.push('\n');
        }
        for n in &self.notes {
            s.push_str(&format!("note: {n}\n"));
        }
        for f in &self.files {
            s.push_str(&format!("wrote: {f}\n"));
        }
        s
    }

    pub fn to_markdown(&self) -> String {
        let mut s = format!("### `{}`: {}\n\n", self.name, self.title);
        for t in &self.tables {
            s.push_str(&t.to_markdown());
            s.push('\n');
        }
        for n in &self.notes {
            s.push_str(&format!("- {n}\n"));
        }
        for f in &self.files {
            s.push_str(&format!("\n![{f}]({f})\n"));
        }
        for (title, text) in &self.inputs {
            s.push_str(&format!(
                "\n<details><summary>{title}</summary>\n\n```\n{}\n```\n\n</details>\n",
                text.trim_end()
            ));
        }
        if !self.commands.is_empty() {
            s.push_str("\n<details><summary>Commands run</summary>\n\n```\n");
            for c in &self.commands {
                s.push_str(c);
                s.push('\n');
            }
            s.push_str("```\n\n</details>\n");
        }
        s
    }
}

/// The header written when RESULTS.md does not exist yet.
pub const RESULTS_HEADER: &str = "# Sluice performance results\n\n\
Appended by `sluice-perf` (see README.md in this directory), newest last. Each entry says \
when, on what machine and at which git revision it was measured, and lists the exact \
commands that ran. Absolute numbers on a shared VM are noisy: compare the ratios against \
the peer measured in the same invocation.\n";

/// One RESULTS.md entry for one invocation of the runner.
pub fn results_entry(
    when: SystemTime,
    machine: &Machine,
    invocation: &str,
    extra: &[String],
    reports: &[ScenarioReport],
) -> String {
    let extra: String = extra.iter().map(|l| format!("- {l}\n")).collect();
    let mut s = format!(
        "\n## {} — {}\n\n- machine: {}\n- invocation: `{}`\n{extra}\n",
        utc_stamp(when),
        reports
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        machine.summary(),
        invocation
    );
    for r in reports {
        s.push_str(&r.to_markdown());
        s.push('\n');
    }
    s
}

/// Appends `entry` to `path`, writing the header first if it is new.
pub fn append_results(path: &Path, entry: &str) -> std::io::Result<()> {
    let new = !path.exists();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    if new {
        f.write_all(RESULTS_HEADER.as_bytes())?;
    }
    f.write_all(entry.as_bytes())
}

/// `2026-11-22 07:36 UTC`
pub fn utc_stamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `12.345` with a fixed number of decimals, or `–` for a missing figure.
pub fn fmt_opt(x: Option<f64>, decimals: usize) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "–".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_779), (2026, 11, 22));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        let t = UNIX_EPOCH + Duration::from_secs(20_779 * 86_400 + 7 * 3600 + 36 * 60 + 31);
        assert_eq!(utc_stamp(t), "2026-11-22 07:36 UTC");
    }

    #[test]
    fn tables_render_as_text_and_markdown() {
        let mut t = Table::new(["tool", "Mpps"]);
        t.row(["sluice", "28.41"]);
        t.row(["testpmd macswap", "32.60"]);
        assert_eq!(
            t.to_text(),
            "tool              Mpps\n----------------------\nsluice           28.41\ntestpmd macswap  32.60\n"
        );
        assert_eq!(
            t.to_markdown(),
            "| tool | Mpps |\n| --- | ---: |\n| sluice | 28.41 |\n| testpmd macswap | 32.60 |\n"
        );
    }

    #[test]
    fn markdown_escapes_pipes() {
        let mut t = Table::new(["a"]);
        t.row(["x|y"]);
        assert!(t.to_markdown().contains("x\\|y"));
    }

    #[test]
    fn missing_figures_show_a_dash() {
        assert_eq!(fmt_opt(Some(1.23456), 2), "1.23");
        assert_eq!(fmt_opt(None, 2), "–");
        assert_eq!(fmt_opt(Some(f64::NAN), 2), "–");
    }

    #[test]
    fn results_file_gets_a_header_once() {
        let dir = std::env::temp_dir().join(format!("sluice-perf-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("RESULTS.md");
        let _ = std::fs::remove_file(&p);
        append_results(&p, "\n## one\n").unwrap();
        append_results(&p, "\n## two\n").unwrap();
        let s = std::fs::read_to_string(&p).unwrap();
        assert_eq!(s.matches("# Sluice performance results").count(), 1);
        assert!(s.ends_with("\n## one\n\n## two\n"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
