//! The full-pipeline scenarios, on the mixed corpus of
//! [`crate::corpus::PIPELINE_MIX`] and the populated store:
//! - `pipeline` (old name `sched`): Sluice's whole packet path against
//!   testpmd macswap on the same net_pcap devices, with Sluice's rx → tx
//!   latency;
//! - `congestion`: the upstream shaped to half the rate `pipeline` reached
//!   (2x oversubscribed); queueing delay and throughput per level from
//!   Sluice's report, and their CDF plot.
use anyhow::{Context, Result};
use serde_json::json;
use sluice_control::policy::Level;

use crate::bench::{
    method_note, rate_table, rounds_note, run_rounds, Bench, LoadWatch, Tool, CORPUS_FLOWS,
    LATENCY_NOTE,
};
use crate::corpus::{describe_mix, Mix, PIPELINE_MIX, SP_PORT, SP_PREFIX};
use crate::report::{fmt_opt, ScenarioReport, Table};
use crate::sluice_report::{self, Direction, EgressLevel};
use crate::stats::{self, Summary};
use crate::svg;
use crate::testpmd::FwdMode;

/// The `congestion` plot, in [`crate::bench::Options::plot_dir`].
pub const CONGESTION_SVG: &str = "congestion.svg";

/// Frame size of the corpus.
const SIZE: u32 = 64;
/// Framing the shaper counts per packet (preamble, SFD, IFG, FCS).
const OVERHEAD: u32 = 24;
/// The premium target: p99 queueing delay at 2x oversubscription, ns.
pub const PREMIUM_P99_TARGET_NS: u64 = 100_000;
/// CoDel's target sojourn, which bounds best effort, ns.
pub const CODEL_TARGET_NS: u64 = 5_000_000;

/// The level's name in the policy model (`3` → `premium`).
pub fn level_name(level: u8) -> &'static str {
    Level::ALL.get(usize::from(level)).map_or("?", |l| l.name())
}

/// Which corpus flows the policy puts at `level` (see
/// [`crate::corpus::policy_rows`]; a corpus test checks the mapping).
pub fn level_traffic(level: u8, mix: &Mix) -> String {
    match level {
        1 => format!("SP {SP_PREFIX}:{SP_PORT}, {} flows", mix.sp),
        3 => format!("premium coupons, {} flows", mix.coupon_premium),
        4 => format!("logins (tier gold), {} flows", mix.login),
        5 => format!(
            "best-effort coupons {} + default {} flows",
            mix.coupon_best_effort, mix.default
        ),
        _ => "—".into(),
    }
}

/// The target a level's delay is held to, and whether `p99` meets it.
pub fn level_target(level: u8, p99_ns: Option<u64>) -> String {
    let verdict = |limit: u64| match p99_ns {
        Some(p) if p <= limit => "met",
        Some(_) => "NOT met",
        None => "no data",
    };
    match level {
        3 => format!("p99 ≤ 100 µs: {}", verdict(PREMIUM_P99_TARGET_NS)),
        5 => format!("p99 ≤ CoDel target 5 ms: {}", verdict(CODEL_TARGET_NS)),
        _ => "—".into(),
    }
}

fn us(ns: Option<u64>) -> String {
    fmt_opt(ns.map(|n| n as f64 / 1e3), 1)
}

/// The `pipeline` scenario.
pub fn pipeline(bench: &mut Bench) -> Result<ScenarioReport> {
    let peer_tool = Tool::TestpmdPipeline(FwdMode::Macswap);
    let tools = [peer_tool, Tool::SluicePcapFull];
    let plan: Vec<(Tool, u32)> = tools.iter().map(|&t| (t, SIZE)).collect();
    let load = LoadWatch::start();
    let measured = run_rounds(bench, &plan)?;
    let rounds = &measured.mpps;
    let peer = Summary::of(&rounds[&(peer_tool, SIZE)]).map(|s| s.median);
    let (table, data) = rate_table(
        &measured,
        &tools,
        SIZE,
        bench.machine.tsc_hz,
        ("÷ testpmd macswap", "ratio_to_macswap"),
        |m| peer.and_then(|p| stats::ratio(m, p)),
    );
    bench.full_pipeline_mpps =
        Summary::of(&rounds[&(Tool::SluicePcapFull, SIZE)]).map(|s| s.median);
    let classified = measured
        .last_report
        .get(&(Tool::SluicePcapFull, SIZE))
        .map(|r| r.classified.clone())
        .unwrap_or_default();
    let mut notes = vec![
        format!(
            "Target: full pipeline ÷ testpmd macswap ≥ 0.6. Traffic: {}. The upstream shaper is \
             set far above the core's rate, so every packet is parsed, classified (flow table, \
             then the policy tables on a new flow), rewritten, metered, enqueued and dequeued \
             without waiting. The peer runs on the same net_pcap devices.",
            describe_mix(&PIPELINE_MIX)
        ),
        method_note(bench.opts).replace(
            "two net_null ports (copy=1)",
            "the two net_pcap ports (corpus in, /dev/null out)",
        ),
        LATENCY_NOTE.into(),
    ];
    if !classified.is_empty() {
        notes.push(format!(
            "New flows per policy step in Sluice's last run (a check that the traffic met the \
             rows meant for it): {}.",
            classified
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    notes.push(rounds_note(rounds, &plan));
    notes.push(load.finish());
    Ok(ScenarioReport {
        name: "pipeline".into(),
        title: format!(
            "full pipeline (parse, flow table, policy with 1M + 1M bindings, rewrites, meter, \
             enqueue, schedule, tx), {SIZE} B TCP+UDP/IPv4, {CORPUS_FLOWS} flows of coupon, \
             login, SP and default traffic, net_pcap infinite_rx, one worker core"
        ),
        tables: vec![table],
        notes,
        commands: std::mem::take(&mut bench.commands),
        files: vec![],
        inputs: std::mem::take(&mut bench.inputs),
        data: json!({ "rates": data, "classified": classified }),
    })
}

/// The shaper rate that oversubscribes the upstream 2x when the pipeline
/// forwards `mpps` of [`SIZE`]-byte frames: half their wire rate.
pub fn half_wire_rate_bps(mpps: f64) -> u64 {
    (mpps * 1e6 * f64::from(SIZE + OVERHEAD) * 8.0 / 2.0) as u64
}

/// The `congestion` scenario.
pub fn congestion(bench: &mut Bench) -> Result<ScenarioReport> {
    let load = LoadWatch::start();
    let mut notes = Vec::new();
    let full = match bench.full_pipeline_mpps {
        Some(m) => {
            notes.push(format!(
                "Full-pipeline rate {m:.2} Mpps taken from this invocation's `pipeline` run."
            ));
            m
        }
        None => {
            let plan = [(Tool::SluicePcapFull, SIZE)];
            let measured = run_rounds(bench, &plan)?;
            let m = Summary::of(&measured.mpps[&plan[0]])
                .map(|s| s.median)
                .context("no full-pipeline rate")?;
            bench.full_pipeline_mpps = Some(m);
            notes.push(format!(
                "Full-pipeline rate {m:.2} Mpps measured first (unshaped, median of {} runs).",
                bench.opts.rounds
            ));
            m
        }
    };
    let rate = half_wire_rate_bps(full);
    let mut levels: Vec<EgressLevel> = Vec::new();
    let mut elapsed = 0.0;
    let mut latency = Vec::new();
    let mut reports = 0;
    for round in 1..=bench.opts.rounds {
        let run = bench
            .measure(Tool::SluicePcapShaped(rate), SIZE)
            .with_context(|| format!("shaped run, round {round}"))?;
        eprintln!(
            "  round {round}/{}  shaped {:.3} Gbit/s  {:7.2} Mpps",
            bench.opts.rounds,
            rate as f64 / 1e9,
            stats::mpps(run.rate.pps)
        );
        let Some(r) = run.report else { continue };
        reports += 1;
        elapsed += r.elapsed_secs;
        latency.extend(r.latency.clone().unwrap_or_default());
        for e in r
            .egress
            .iter()
            .filter(|e| e.direction == Direction::Upstream)
        {
            match levels.iter_mut().find(|l| l.level == e.level) {
                Some(l) => l.add(e),
                None => levels.push(e.clone()),
            }
        }
    }
    levels.sort_by_key(|l| l.level);
    let mut table = Table::new([
        "level",
        "traffic",
        "Mbit/s sent",
        "% of sent (wire)",
        "queue-full drops",
        "AQM drops",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "target",
    ]);
    let mut data = Vec::new();
    let mut series = Vec::new();
    let colors = [
        "#8c564b", "#9467bd", "#2ca02c", "#d62728", "#ff7f0e", "#1f77b4", "#7f7f7f", "#bcbd22",
    ];
    let wire_bits = |l: &EgressLevel| (l.sent_bytes + u64::from(OVERHEAD) * l.sent) as f64 * 8.0;
    let all_bits: f64 = levels.iter().map(wire_bits).sum();
    for l in &levels {
        let (p50, p99, p999) = (l.delay_ns(0.5), l.delay_ns(0.99), l.delay_ns(0.999));
        table.row([
            format!("{} {}", l.level, level_name(l.level)),
            level_traffic(l.level, &PIPELINE_MIX),
            format!("{:.1}", l.mbps(elapsed)),
            fmt_opt(stats::ratio(wire_bits(l), all_bits).map(|r| r * 100.0), 1),
            l.dropped_full.to_string(),
            l.dropped_aqm.to_string(),
            us(p50),
            us(p99),
            us(p999),
            level_target(l.level, p99),
        ]);
        data.push(json!({
            "level": l.level, "name": level_name(l.level), "mbps": l.mbps(elapsed),
            "sent": l.sent, "dropped_full": l.dropped_full, "dropped_aqm": l.dropped_aqm,
            "p50_ns": p50, "p99_ns": p99, "p999_ns": p999, "sojourn_hist": l.sojourn_hist,
        }));
        if let Some(h) = &l.sojourn_hist {
            series.push(svg::CdfSeries {
                label: format!("{} {}", l.level, level_name(l.level)),
                color: colors[usize::from(l.level) % colors.len()],
                points: sluice_report::hist_cdf(h)
                    .into_iter()
                    .map(|(ns, f)| (ns as f64 / 1e3, f))
                    .collect(),
            });
        }
    }
    let mut files = Vec::new();
    if !series.is_empty() {
        let plot = svg::cdf_chart(
            "Queueing delay per level, upstream 2x oversubscribed",
            "queueing delay, µs (log scale; each bucket at its upper bound)",
            &series,
            &[
                (
                    PREMIUM_P99_TARGET_NS as f64 / 1e3,
                    "premium p99 target".into(),
                ),
                (CODEL_TARGET_NS as f64 / 1e3, "CoDel target".into()),
            ],
            &format!(
                "{CORPUS_FLOWS} flows, 64 B, shaped to {:.3} Gbit/s; {} run(s); {}",
                rate as f64 / 1e9,
                reports,
                bench.machine.revision()
            ),
        );
        let path = bench.opts.plot_dir.join(CONGESTION_SVG);
        std::fs::write(&path, plot).with_context(|| format!("writing {}", path.display()))?;
        files.push(CONGESTION_SVG.to_owned());
    } else if reports > 0 {
        notes.push(
            "Sluice's report has no `sojourn_hist` per level (a Sluice that predates it): no \
             delays, no plot."
                .into(),
        );
    } else {
        notes.push("Sluice left no --stats-json report: no per-level figures.".into());
    }
    let mut lat = Table::new(["run", "packets", "rx→dequeue p50 µs", "p99 µs", "p99.9 µs"]);
    for (i, d) in latency
        .iter()
        .filter(|d| d.direction == Direction::Upstream)
        .enumerate()
    {
        lat.row([
            format!("{} upstream", i + 1),
            d.packets.to_string(),
            us(Some(d.p50_ns)),
            us(Some(d.p99_ns)),
            us(Some(d.p999_ns)),
        ]);
    }
    notes.insert(
        0,
        format!(
            "Targets: premium (level 3) p99 queueing delay ≤ 100 µs; best effort (level 5) \
             bounded by CoDel's 5 ms target. The upstream is shaped to {:.3} Gbit/s on the wire \
             (64 B + 24 B of framing per packet), half of what the unshaped pipeline forwarded \
             ({full:.2} Mpps): the corpus offers 2x what the port may send. Strict levels \
             (voice, premium) go first within their ceilings (30 %, 50 % of the rate); standard \
             and best effort share the rest by DRR 8:4, CoDel on both. Delays are Sluice's own \
             sojourn histograms (enqueue → dequeue, TSC) from its `--stats-json` report, summed \
             over the rounds, each percentile at its bucket's upper bound (buckets 19 % wide); \
             Mbit/s counts frame bytes over the whole run (start-up included). The CDF per \
             level is in {CONGESTION_SVG}.",
            rate as f64 / 1e9
        ),
    );
    let latency_rows = !lat.rows.is_empty();
    if latency_rows {
        notes.push(
            "The second table is each packet's whole stay in the appliance, rx → dequeue, one \
             row per run, from the report's upstream `latency`: queueing plus the pipeline's \
             own time, all levels together."
                .into(),
        );
    }
    notes.push(load.finish());
    let mut tables = vec![table];
    if latency_rows {
        tables.push(lat);
    }
    Ok(ScenarioReport {
        name: "congestion".into(),
        title: format!(
            "full pipeline with the upstream shaped to half its rate (2x oversubscribed), \
             {SIZE} B, {CORPUS_FLOWS} flows: queueing delay and throughput per level"
        ),
        tables,
        notes,
        commands: std::mem::take(&mut bench.commands),
        files,
        inputs: std::mem::take(&mut bench.inputs),
        data: json!({
            "full_pipeline_mpps": full,
            "rate_bps": rate,
            "levels": data,
            "latency": latency,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversubscription_halves_the_wire_rate_of_what_the_pipeline_forwarded() {
        // 10 Mpps of 64 B frames = 7.04 Gbit/s with framing; half of it.
        assert_eq!(half_wire_rate_bps(10.0), 3_520_000_000);
    }

    #[test]
    fn levels_are_named_as_in_the_policy_and_carry_their_targets() {
        assert_eq!(level_name(3), "premium");
        assert_eq!(level_name(5), "best-effort");
        assert_eq!(level_name(9), "?");
        assert_eq!(level_target(3, Some(99_000)), "p99 ≤ 100 µs: met");
        assert_eq!(level_target(3, Some(120_000)), "p99 ≤ 100 µs: NOT met");
        assert_eq!(level_target(5, None), "p99 ≤ CoDel target 5 ms: no data");
        assert_eq!(level_target(4, Some(1)), "—");
        assert!(level_traffic(5, &PIPELINE_MIX).contains("960"));
    }
}
