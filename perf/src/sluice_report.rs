//! Sluice's final report, as `sluice --stats-json FILE` writes it at exit:
//! the appliance's own latency figures, which no outside tool on this
//! machine can take.
//!
//! The parts read here (everything else in the file is ignored):
//! - `elapsed_secs`;
//! - `latency`: one object per direction that forwarded anything,
//!   `{"direction", "packets", "p50_ns", "p90_ns", "p99_ns", "p999_ns",
//!   "max_ns"}`: rx → tx per packet (TSC read after the rx burst and after
//!   the tx burst; on a shaped egress, rx → dequeue), from log buckets (four
//!   per power of two), each percentile at its bucket's upper bound. A
//!   report without it comes from a Sluice that predates it;
//! - `workers[i].path.classified`: new flows per policy step (coupon,
//!   login, sp-prefix, default, ...), summed over workers;
//! - `workers[i].scheds[d].levels[l]`: a shaped egress's level (`scheds[d]`
//!   is null for an unshaped direction; `d` 0 is the upstream port, 1 the
//!   subscriber port), with `sojourn_hist`: `[[upper_ns, packets], ...]`,
//!   the non-empty buckets of its queueing delay (enqueue → dequeue).
use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ReportError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a sluice --stats-json report: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
}

/// rx → tx latency of one direction, and the directions: the appliance's
/// own types, read back.
pub use sluice_dataplane::stats::{Direction, LatencySummary};

/// One level of a shaped egress, summed over workers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EgressLevel {
    pub direction: Direction,
    pub level: u8,
    pub enqueued: u64,
    pub sent: u64,
    pub sent_bytes: u64,
    pub dropped_full: u64,
    pub dropped_aqm: u64,
    /// `(upper_ns, packets)` by increasing bound; `None` when the report
    /// has no `sojourn_hist` (a Sluice that predates it).
    pub sojourn_hist: Option<Vec<(u64, u64)>>,
}

impl EgressLevel {
    /// Frame bits sent per second, averaged over the whole run.
    pub fn mbps(&self, elapsed_secs: f64) -> f64 {
        self.sent_bytes as f64 * 8.0 / elapsed_secs.max(1e-9) / 1e6
    }

    /// The queueing delay at quantile `q`, ns (see [`hist_percentile`]).
    pub fn delay_ns(&self, q: f64) -> Option<u64> {
        hist_percentile(self.sojourn_hist.as_deref()?, q)
    }

    /// Adds another run's (or worker's) counters of the same level.
    pub fn add(&mut self, o: &EgressLevel) {
        self.enqueued += o.enqueued;
        self.sent += o.sent;
        self.sent_bytes += o.sent_bytes;
        self.dropped_full += o.dropped_full;
        self.dropped_aqm += o.dropped_aqm;
        self.sojourn_hist = match (self.sojourn_hist.take(), &o.sojourn_hist) {
            (Some(a), Some(b)) => Some(merge_hists(&[a.as_slice(), b.as_slice()])),
            (a, b) => a.or_else(|| b.clone()),
        };
    }
}

/// What the runner takes from one report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FinalReport {
    pub elapsed_secs: f64,
    /// `None` when the report has no `latency` (a Sluice that predates it).
    pub latency: Option<Vec<LatencySummary>>,
    /// Every level of every shaped egress that enqueued anything, by
    /// direction and level.
    pub egress: Vec<EgressLevel>,
    /// New flows per policy step, over all workers.
    pub classified: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
struct RawReport {
    elapsed_secs: f64,
    #[serde(default)]
    latency: Option<Vec<LatencySummary>>,
    #[serde(default)]
    workers: Vec<RawWorker>,
}

#[derive(Deserialize)]
struct RawWorker {
    #[serde(default)]
    scheds: Vec<Option<RawSched>>,
    #[serde(default)]
    path: Option<RawPath>,
}

#[derive(Deserialize)]
struct RawPath {
    #[serde(default)]
    classified: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
struct RawSched {
    levels: Vec<RawLevel>,
}

#[derive(Deserialize)]
struct RawLevel {
    level: u8,
    #[serde(default)]
    enqueued: u64,
    #[serde(default)]
    sent: u64,
    #[serde(default)]
    sent_bytes: u64,
    #[serde(default)]
    dropped_full: u64,
    #[serde(default)]
    dropped_aqm: u64,
    #[serde(default)]
    sojourn_hist: Option<Vec<(u64, u64)>>,
}

/// Parses a report's text; `what` names it in errors.
pub fn parse(text: &str, what: &str) -> Result<FinalReport, ReportError> {
    let raw: RawReport = serde_json::from_str(text).map_err(|source| ReportError::Parse {
        path: what.to_owned(),
        source,
    })?;
    let mut egress: BTreeMap<(Direction, u8), EgressLevel> = BTreeMap::new();
    let mut classified: BTreeMap<String, u64> = BTreeMap::new();
    for w in &raw.workers {
        for (step, n) in w.path.iter().flat_map(|p| &p.classified) {
            *classified.entry(step.clone()).or_default() += n;
        }
        for (i, s) in w.scheds.iter().enumerate() {
            let (Some(s), Some(direction)) = (s, Direction::ALL.get(i).copied()) else {
                continue;
            };
            for l in &s.levels {
                let this = EgressLevel {
                    direction,
                    level: l.level,
                    enqueued: l.enqueued,
                    sent: l.sent,
                    sent_bytes: l.sent_bytes,
                    dropped_full: l.dropped_full,
                    dropped_aqm: l.dropped_aqm,
                    sojourn_hist: l.sojourn_hist.as_deref().map(|h| merge_hists(&[h])),
                };
                match egress.get_mut(&(direction, l.level)) {
                    Some(e) => e.add(&this),
                    None => {
                        egress.insert((direction, l.level), this);
                    }
                }
            }
        }
    }
    Ok(FinalReport {
        elapsed_secs: raw.elapsed_secs,
        latency: raw.latency,
        egress: egress.into_values().filter(|e| e.enqueued > 0).collect(),
        classified,
    })
}

/// Reads and parses the report at `path`.
pub fn read(path: &Path) -> Result<FinalReport, ReportError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReportError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// Sums histograms of `(upper_ns, packets)`: one entry per bound, by
/// increasing bound, empty buckets left out.
pub fn merge_hists(hists: &[&[(u64, u64)]]) -> Vec<(u64, u64)> {
    let mut m: BTreeMap<u64, u64> = BTreeMap::new();
    for h in hists {
        for &(upper, n) in *h {
            *m.entry(upper).or_default() += n;
        }
    }
    m.into_iter().filter(|&(_, n)| n > 0).collect()
}

/// The value at quantile `q` (0..=1) of a histogram of `(upper_ns,
/// packets)`: the upper bound of the bucket holding the `ceil(q × total)`th
/// packet, so it is never understated (the appliance reports its own
/// percentiles the same way). `None` for an empty histogram.
pub fn hist_percentile(hist: &[(u64, u64)], q: f64) -> Option<u64> {
    let mut sorted = hist.to_vec();
    sorted.sort_unstable();
    let total: u64 = sorted.iter().map(|x| x.1).sum();
    if total == 0 {
        return None;
    }
    let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (upper, n) in sorted {
        seen += n;
        if seen >= rank {
            return Some(upper);
        }
    }
    None
}

/// The cumulative distribution of a histogram: `(upper_ns, fraction of
/// packets at or below it)` per non-empty bucket, by increasing bound,
/// ending at 1.
pub fn hist_cdf(hist: &[(u64, u64)]) -> Vec<(u64, f64)> {
    let merged = merge_hists(&[hist]);
    let total: u64 = merged.iter().map(|x| x.1).sum();
    let mut seen = 0;
    merged
        .into_iter()
        .map(|(upper, n)| {
            seen += n;
            (upper, seen as f64 / total as f64)
        })
        .collect()
}

/// The worst direction's p50 and p99, ns: an upper bound of both
/// directions' joint percentiles (a mix cannot be worse than its worse
/// part).
pub fn worst_latency(dirs: &[LatencySummary]) -> Option<(u64, u64)> {
    let p50 = dirs.iter().map(|d| d.p50_ns).max()?;
    let p99 = dirs.iter().map(|d| d.p99_ns).max()?;
    Some((p50, p99))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two workers; upstream shaped, downstream not; latency both ways.
    const REPORT: &str = r#"{
      "elapsed_secs": 2.0,
      "ports": [{"role": "subscriber", "name": "net_pcap0", "ipackets": 10}],
      "workers": [
        {"lcore": 1, "lanes": [], "path": {"levels": [], "classified": {"coupon": 3, "default": 1}},
         "scheds": [
           {"levels": [
             {"level": 3, "enqueued": 4, "enqueued_bytes": 256, "sent": 4, "sent_bytes": 256,
              "dropped_full": 0, "dropped_aqm": 0, "depth": 0, "depth_bytes": 0,
              "sojourn_hist": [[1024, 3], [5120, 1]]},
             {"level": 5, "enqueued": 10, "sent": 6, "sent_bytes": 384,
              "dropped_full": 1, "dropped_aqm": 3,
              "sojourn_hist": [[4194304, 6]]},
             {"level": 6, "enqueued": 0, "sent": 0, "sent_bytes": 0,
              "dropped_full": 0, "dropped_aqm": 0, "sojourn_hist": []}
           ]},
           null
         ]},
        {"lcore": 2, "path": {"classified": {"coupon": 2}}, "scheds": [
           {"levels": [
             {"level": 3, "enqueued": 1, "sent": 1, "sent_bytes": 64,
              "dropped_full": 0, "dropped_aqm": 0, "sojourn_hist": [[5120, 1]]}
           ]},
           null
         ]}
      ],
      "pool_size": 16383,
      "pool_in_use": 0,
      "latency": [
        {"direction": "upstream", "packets": 11, "p50_ns": 1280, "p90_ns": 2048,
         "p99_ns": 4096, "p999_ns": 8192, "max_ns": 9000},
        {"direction": "downstream", "packets": 5, "p50_ns": 1536, "p90_ns": 1792,
         "p99_ns": 2048, "p999_ns": 2048, "max_ns": 2100}
      ]
    }"#;

    #[test]
    fn latency_per_direction_is_read_as_written() {
        let r = parse(REPORT, "test").unwrap();
        assert_eq!(r.elapsed_secs, 2.0);
        let lat = r.latency.as_ref().unwrap();
        assert_eq!(lat.len(), 2);
        assert_eq!(
            lat[0],
            LatencySummary {
                direction: Direction::Upstream,
                packets: 11,
                p50_ns: 1280,
                p90_ns: 2048,
                p99_ns: 4096,
                p999_ns: 8192,
                max_ns: 9000,
            }
        );
        assert_eq!(lat[1].direction, Direction::Downstream);
        assert_eq!(worst_latency(lat), Some((1536, 4096)));
        assert_eq!(worst_latency(&[]), None);
    }

    #[test]
    fn levels_are_summed_over_workers_and_idle_ones_left_out() {
        let r = parse(REPORT, "test").unwrap();
        let levels: Vec<(Direction, u8)> =
            r.egress.iter().map(|e| (e.direction, e.level)).collect();
        assert_eq!(levels, [(Direction::Upstream, 3), (Direction::Upstream, 5)]);
        let premium = &r.egress[0];
        assert_eq!(
            (premium.enqueued, premium.sent, premium.sent_bytes),
            (5, 5, 320)
        );
        assert_eq!(
            premium.sojourn_hist.as_deref(),
            Some(&[(1024, 3), (5120, 2)][..])
        );
        assert_eq!(premium.delay_ns(0.5), Some(1024));
        assert_eq!(premium.delay_ns(0.99), Some(5120));
        let be = &r.egress[1];
        assert_eq!((be.dropped_full, be.dropped_aqm), (1, 3));
        assert!((be.mbps(r.elapsed_secs) - 384.0 * 8.0 / 2.0 / 1e6).abs() < 1e-12);
        let steps: Vec<(&str, u64)> = r.classified.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(steps, [("coupon", 5), ("default", 1)]);
    }

    #[test]
    fn a_report_from_before_the_latency_figures_still_parses() {
        let old = r#"{"elapsed_secs": 4.9, "ports": [], "workers": [
            {"lcore": 1, "scheds": [{"levels": [{"level": 5, "enqueued": 2, "sent": 2,
             "sent_bytes": 128, "dropped_full": 0, "dropped_aqm": 0}]}, null]}],
            "pool_size": 1, "pool_in_use": 0}"#;
        let r = parse(old, "old").unwrap();
        assert_eq!(r.latency, None);
        assert_eq!(r.egress.len(), 1);
        assert_eq!(r.egress[0].sojourn_hist, None);
        assert_eq!(r.egress[0].delay_ns(0.5), None);
    }

    #[test]
    fn garbage_is_an_error_naming_the_file() {
        let e = parse("sluice ran 4.92 s", "/tmp/x.report.json").unwrap_err();
        assert!(e.to_string().contains("/tmp/x.report.json"), "{e}");
        assert!(read(Path::new("/nonexistent/r.json")).is_err());
    }

    #[test]
    fn percentiles_take_the_upper_bound_of_the_bucket_holding_the_rank() {
        let h = [(2048, 50), (1024, 49), (8192, 1)];
        assert_eq!(hist_percentile(&h, 0.0), Some(1024));
        assert_eq!(hist_percentile(&h, 0.49), Some(1024));
        assert_eq!(hist_percentile(&h, 0.5), Some(2048));
        assert_eq!(hist_percentile(&h, 0.99), Some(2048));
        assert_eq!(hist_percentile(&h, 0.999), Some(8192));
        assert_eq!(hist_percentile(&h, 1.0), Some(8192));
        assert_eq!(hist_percentile(&[], 0.5), None);
        assert_eq!(hist_percentile(&[(1024, 0)], 0.5), None);
    }

    #[test]
    fn the_cdf_rises_to_one_over_increasing_bounds() {
        let cdf = hist_cdf(&[(4096, 1), (1024, 2), (2048, 0), (1024, 1)]);
        assert_eq!(cdf, [(1024, 0.75), (4096, 1.0)]);
        assert!(hist_cdf(&[]).is_empty());
    }

    #[test]
    fn merged_levels_add_counts_per_bound() {
        let mut a = parse(REPORT, "a").unwrap().egress[0].clone();
        let b = a.clone();
        a.add(&b);
        assert_eq!(a.sent, 10);
        assert_eq!(a.sojourn_hist.as_deref(), Some(&[(1024, 6), (5120, 4)][..]));
    }
}
