//! The `updates` scenario: an update storm through the control socket while
//! the full pipeline forwards.
//!
//! One Sluice run on the full-pipeline setup (the `pipeline` scenario's corpus
//! and populated store), in seventeen phases of [`PHASE_SECS`], quiet and storm
//! alternating, quiet first and last ([`PHASES`]). During a storm a client replaces 10,000 coupon rows per
//! request (`update` of the 1M `f*` coupons, DSCP flipping), back to back,
//! over the real control socket (JSON, journal fsync, mirror into the
//! workers' tables). Measured:
//! - forwarding rate in each phase from the live counter lines, and the
//!   loss of each storm phase against the two quiet phases around it
//!   (their mean), averaged over the eight storms;
//! - binding updates acknowledged per second during the storms, and each
//!   request's round trip;
//! - **ack → effect**: all along, a second client moves one corpus
//!   subscriber's coupon to a level no other traffic uses and polls
//!   `stats` until that level's packet counter moves; the time from the
//!   update's acknowledgement to that poll's answer bounds when the first
//!   packet got the new treatment from above (it includes one `stats`
//!   round trip, reported beside it), and then moves it back.
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sluice_control::client::Client;
use sluice_dataplane::dpdk::rdtsc;

use crate::bench::{
    Bench, LoadWatch, CORPUS_FLOWS, FULL_PIPELINE, FULL_PIPELINE_RATE, PREMIUM_FLOWS,
};
use crate::corpus::write_bulk_coupon;
use crate::process::{self, Verdict};
use crate::report::{fmt_opt, ScenarioReport, Table};
use crate::sluice;
use crate::stats::Sample;

/// Length of each phase.
pub const PHASE_SECS: f64 = 4.0;
/// Quiet and storm phases alternating, quiet first and last, so that every
/// storm is bracketed by two quiet phases: the machine's rate drifts by a
/// few percent over tens of seconds (other tenants), and comparing each
/// storm with its own neighbours cancels that drift.
/// Eight storms: a single storm's loss moves by a few percent either way
/// with the machine's other tenants, so the mean needs that many.
pub const PHASES: [bool; 17] = {
    let mut p = [false; 17];
    let mut k = 1;
    while k < 17 {
        p[k] = true;
        k += 2;
    }
    p
};
/// Rows per storm request, unless `--storm-rows` says otherwise: one
/// journal record and one `fdatasync` each.
pub const STORM_BATCH: u32 = 10_000;
/// The most `--storm-rows` allows: a request line must stay under the
/// protocol's 4 MiB (a storm row is ~100 bytes of JSON).
pub const MAX_STORM_ROWS: u32 = 30_000;
/// The level the effect probe moves its subscriber to (nothing else in
/// the corpus uses it).
const PROBE_LEVEL: u64 = 2;

/// What the storm and probe threads saw, in seconds since sluice was
/// spawned.
#[derive(Debug, Default, Clone)]
struct Timeline {
    /// (start, end, storm?) of each phase.
    phases: Vec<(f64, f64, bool)>,
    /// Rows acknowledged and the time spent, per storm phase.
    storm_rows: Vec<(u64, f64)>,
    /// Store compactions during each phase (from `stats` at its ends).
    compactions: Vec<Option<u64>>,
    /// Round trip of each storm request, seconds.
    batch_rtt: Vec<f64>,
    effects: Vec<Effect>,
    /// Round trip of a `stats` request, seconds.
    stats_rtt: Vec<f64>,
    error: Option<String>,
}

/// What one probe measured, in seconds.
#[derive(Debug, Clone, Copy)]
struct Effect {
    /// During a storm?
    storm: bool,
    /// Ack → the first packet with the new treatment (the worker's TSC);
    /// None when the flow entered the level more than once before the poll.
    first: Option<f64>,
    /// Ack → the new treatment seen through `stats`.
    seen: f64,
}

fn connect(socket: &Path, until: Instant) -> Result<Client> {
    loop {
        match Client::connect(socket, Some(Duration::from_secs(60))) {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > until => bail!("control socket {}: {e}", socket.display()),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A counter of `level` in a `stats` answer: `packets`, `flows_entered`,
/// `last_entered_tsc`.
fn level_counter(stats: &Value, level: u64, counter: &str) -> Option<u64> {
    stats
        .pointer("/dataplane/levels")?
        .as_array()?
        .iter()
        .find(|l| l["level"].as_u64() == Some(level))?[counter]
        .as_u64()
}

/// The probe subscriber's coupon row at `level`.
fn probe_row(level: &str) -> Value {
    let i = PREMIUM_FLOWS; // the first best-effort corpus subscriber
    json!({"op": "update", "table": "coupon", "entries": [{
        "id": format!("c{i}"),
        "subscriber": format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
        "decision": {"level": level, "dscp": "level",
                     "rate": {"committed_bps": 100_000_000_000u64, "peak_bps": 100_000_000_000u64}}
    }]})
}

/// The storm's walk over the bulk coupons: consecutive requests take the
/// next `batch` rows, and each pass over all of them flips their
/// DSCP (the first pass writes 34 over the 46 they were stored with), so
/// every row of every request changes something.
///
/// Each request is written once and kept; a later pass only overwrites its
/// DSCP digits in place. The storm client shares the main core with the
/// control thread, and writing 10,000 rows cost it about a tenth of what
/// the appliance spends applying them (a real client runs elsewhere).
pub struct Sweep {
    rows: u32,
    batch: u32,
    pass: u32,
    next: u32,
    /// Per request of a pass: its line, the DSCP it now carries, and where
    /// each row's DSCP digits are.
    rendered: Vec<Option<Rendered>>,
}

struct Rendered {
    line: String,
    dscp: u8,
    dscp_at: Vec<usize>,
}

/// The DSCP the storm writes on pass `pass`: 34, 46, 34, ... (two digits,
/// so that a pass can overwrite the previous one's in place).
fn pass_dscp(pass: u32) -> u8 {
    if pass.is_multiple_of(2) {
        34
    } else {
        46
    }
}

impl Sweep {
    /// A walk over coupons `f0` .. `f{rows - 1}`, `batch` rows a request.
    pub fn new(rows: u32, batch: u32) -> Sweep {
        let batch = batch.max(1);
        let rows = rows.max(batch);
        Sweep {
            rows,
            batch,
            pass: 0,
            next: 0,
            rendered: (0..rows / batch).map(|_| None).collect(),
        }
    }

    /// Writes every request of the walk now rather than on first use.
    pub fn render_all(&mut self) {
        for k in 0..self.rendered.len() {
            self.rendered_at(k, 0);
        }
    }

    fn rendered_at(&mut self, k: usize, pass: u32) -> &Rendered {
        let dscp = pass_dscp(pass);
        let batch = self.batch;
        let r = self.rendered[k].get_or_insert_with(|| {
            let (line, dscp_at) = storm_request_at(dscp, k as u32 * batch, batch);
            Rendered {
                line,
                dscp,
                dscp_at,
            }
        });
        if r.dscp != dscp {
            let digits = dscp.to_string();
            for &at in &r.dscp_at {
                r.line.replace_range(at..at + 2, &digits);
            }
            r.dscp = dscp;
        }
        r
    }

    pub fn next_request(&mut self) -> &str {
        let (k, pass) = ((self.next / self.batch) as usize, self.pass);
        self.next += self.batch;
        if self.next + self.batch > self.rows {
            self.next = 0;
            self.pass += 1;
        }
        &self.rendered_at(k, pass).line
    }
}

/// One storm request line of [`STORM_BATCH`] rows, of pass `pass` from row
/// `start`.
pub fn storm_request(pass: u32, start: u32) -> String {
    storm_request_at(pass_dscp(pass), start, STORM_BATCH).0
}

/// A storm request line and the offset of each row's DSCP digits in it.
/// Written straight into a string rather than built as a
/// `serde_json::Value` (which cost as much as applying it).
fn storm_request_at(dscp: u8, start: u32, batch: u32) -> (String, Vec<usize>) {
    const DSCP_KEY: &str = r#""dscp":"#;
    let mut line = String::with_capacity(batch as usize * 100 + 64);
    let mut dscp_at = Vec::with_capacity(batch as usize);
    line.push_str(r#"{"op":"update","table":"coupon","entries":["#);
    for i in start..start + batch {
        if i != start {
            line.push(',');
        }
        let row = line.len();
        write_bulk_coupon(&mut line, i, dscp);
        let at = line[row..]
            .rfind(DSCP_KEY)
            .expect("a bulk coupon row names its DSCP");
        dscp_at.push(row + at + DSCP_KEY.len());
    }
    line.push_str("]}");
    (line, dscp_at)
}

/// Drives the phases; returns when the last one ends.
fn drive(
    socket: &Path,
    tsc_hz: f64,
    t0: Instant,
    tl: &Mutex<Timeline>,
    stop: &AtomicBool,
    batch: u32,
) -> Result<()> {
    let mut storm = connect(socket, Instant::now() + Duration::from_secs(120))?;
    // Served only once the workers run: the appliance is up.
    storm.call(&json!({"op": "stats"})).context("first stats")?;
    let since = |t: Instant| t.duration_since(t0).as_secs_f64();
    let mut sweep = Sweep::new(1 << 20, batch);
    sweep.render_all();
    let begin = Instant::now() + Duration::from_secs(2);
    let storming = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    // The effect probe, on its own connection.
    let probe = {
        let (socket, storming, done) =
            (socket.to_owned(), Arc::clone(&storming), Arc::clone(&done));
        std::thread::spawn(move || -> Result<Vec<(Effect, f64)>> {
            let mut c = connect(&socket, Instant::now() + Duration::from_secs(10))?;
            let mut out = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let s0 = Instant::now();
                let v = c.call(&json!({"op": "stats"}))?.value;
                let before = level_counter(&v, PROBE_LEVEL, "packets")
                    .zip(level_counter(&v, PROBE_LEVEL, "flows_entered"))
                    .context("no per-level counters in stats")?;
                let rtt = s0.elapsed().as_secs_f64();
                let during = storming.load(Ordering::Relaxed);
                c.call(&probe_row("interactive"))?;
                let (acked, acked_tsc) = (Instant::now(), rdtsc());
                let (seen, entries, entered_tsc) = loop {
                    let v = c.call(&json!({"op": "stats"}))?.value;
                    let counter = |k| level_counter(&v, PROBE_LEVEL, k).unwrap_or(0);
                    if counter("packets") > before.0 && counter("flows_entered") > before.1 {
                        break (
                            acked.elapsed().as_secs_f64(),
                            counter("flows_entered") - before.1,
                            counter("last_entered_tsc"),
                        );
                    }
                    if acked.elapsed() > Duration::from_secs(5) {
                        bail!("the probe's level never moved");
                    }
                };
                // The probe's flow is the only one classified into the level,
                // so when it entered once the latest entry is the first
                // packet with the new treatment. It can enter again before
                // the poll sees it (a storm row sharing its validity line
                // re-classifies it): then the latest entry is not the first,
                // and the sample is left out (None), as a poll that comes
                // late says nothing about when the first packet came. Before
                // the ack reached the probe (the change was in the tables
                // before the ack left): zero.
                let first =
                    (entries == 1).then(|| entered_tsc.saturating_sub(acked_tsc) as f64 / tsc_hz);
                let effect = Effect {
                    storm: during,
                    first,
                    seen,
                };
                out.push((effect, rtt));
                c.call(&probe_row("best-effort"))?;
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(out)
        })
    };
    let compactions = |c: &mut Client| -> Option<u64> {
        c.call(&json!({"op": "stats"}))
            .ok()?
            .value
            .pointer("/store/compactions")?
            .as_u64()
    };
    let mut compacted = compactions(&mut storm);
    for (k, storm_phase) in PHASES.into_iter().enumerate() {
        let start = begin + Duration::from_secs_f64(PHASE_SECS * k as f64);
        let end = start + Duration::from_secs_f64(PHASE_SECS);
        while Instant::now() < start {
            std::thread::sleep(Duration::from_millis(5));
        }
        storming.store(storm_phase, Ordering::Relaxed);
        let (mut rows, t_start) = (0u64, Instant::now());
        while Instant::now() < end && !stop.load(Ordering::Relaxed) {
            if !storm_phase {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            let req = sweep.next_request();
            let s = Instant::now();
            storm.call_line(req).context("storm request")?;
            tl.lock().unwrap().batch_rtt.push(s.elapsed().as_secs_f64());
            rows += u64::from(batch);
        }
        let now_compacted = compactions(&mut storm);
        let mut t = tl.lock().unwrap();
        t.phases
            .push((since(start), since(Instant::now()), storm_phase));
        t.compactions.push(
            now_compacted
                .zip(compacted)
                .map(|(b, a)| b.saturating_sub(a)),
        );
        compacted = now_compacted;
        if storm_phase {
            t.storm_rows.push((rows, t_start.elapsed().as_secs_f64()));
        }
    }
    storming.store(false, Ordering::Relaxed);
    done.store(true, Ordering::Relaxed);
    let probes = probe
        .join()
        .map_err(|_| anyhow::anyhow!("probe thread panicked"))??;
    let mut t = tl.lock().unwrap();
    for (effect, rtt) in probes {
        t.effects.push(effect);
        t.stats_rtt.push(rtt);
    }
    Ok(())
}

/// Each storm phase's loss against the mean of the quiet phases on either
/// side of it (a storm without both neighbours measured is left out).
fn bracketed_losses(rates: &[(bool, Option<f64>)]) -> Vec<f64> {
    rates
        .windows(3)
        .filter_map(|w| match w {
            [(false, Some(a)), (true, Some(s)), (false, Some(b))] => {
                Some(1.0 - s / ((a + b) / 2.0))
            }
            _ => None,
        })
        .collect()
}

/// Packets per second between the first sample at or after `a` and the
/// last at or before `b`.
fn phase_rate(samples: &[Sample], a: f64, b: f64) -> Option<f64> {
    let first = samples.iter().find(|s| s.t >= a)?;
    let last = samples.iter().rev().find(|s| s.t <= b)?;
    (last.t - first.t > 0.5).then(|| (last.packets - first.packets) as f64 / (last.t - first.t))
}

fn percentile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((s.len() as f64 * q).ceil() as usize).clamp(1, s.len()) - 1;
    Some(s[i])
}

pub fn updates(bench: &mut Bench) -> Result<ScenarioReport> {
    let (devices, extra) = bench.full_pipeline()?;
    let cfg = bench.sluice_config(FULL_PIPELINE, devices, extra, Some(FULL_PIPELINE_RATE))?;
    let socket = bench.socket_of(FULL_PIPELINE);
    let load = LoadWatch::start();
    let duration = 120.0;
    let spec = sluice::command(&bench.opts.sluice_bin, &cfg, duration);
    let tl = Arc::new(Mutex::new(Timeline::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let tsc_hz = bench.machine.tsc_hz;
    let batch = bench.opts.storm_rows.clamp(1, MAX_STORM_ROWS);
    let driver = {
        let (tl, stop, finished) = (Arc::clone(&tl), Arc::clone(&stop), Arc::clone(&finished));
        std::thread::spawn(move || {
            // The storm and the probe (spawned from here, so pinned too) are
            // the control plane's clients: on the main core, with the
            // control thread, never on the worker's.
            crate::process::pin_current_thread(crate::bench::MAIN_LCORE);
            if let Err(e) = drive(&socket, tsc_hz, t0, &tl, &stop, batch) {
                tl.lock().unwrap().error = Some(format!("{e:#}"));
            }
            finished.store(true, Ordering::Relaxed);
        })
    };
    let f = process::run(
        &spec,
        Duration::from_secs_f64(duration + 30.0),
        Duration::from_secs(10),
        |_| {
            if finished.load(Ordering::Relaxed) {
                Verdict::Stop
            } else {
                Verdict::Continue
            }
        },
    )?;
    stop.store(true, Ordering::Relaxed);
    let _ = driver.join();
    bench.commands.push(spec.display());
    let tl = tl.lock().unwrap().clone();
    if let Some(e) = &tl.error {
        bail!(
            "update storm: {e}\nsluice's output ended with:\n{}",
            f.tail(12)
        );
    }
    let samples = sluice::samples(f.stdout.iter().map(|l| (l.t, l.text.as_str())));
    let mut phases = Table::new([
        "phase",
        "Mpps",
        "vs quiet mean",
        "loss vs neighbours",
        "updates/s",
        "compactions",
    ]);
    // Each storm phase's own update rate, in phase order.
    let mut storm_rates = tl
        .storm_rows
        .iter()
        .map(|&(r, s)| (s > 0.0).then(|| r as f64 / s));
    let rates: Vec<(bool, Option<f64>)> = tl
        .phases
        .iter()
        .map(|&(a, b, storm)| (storm, phase_rate(&samples, a, b)))
        .collect();
    let mean = |storm: bool| {
        let v: Vec<f64> = rates
            .iter()
            .filter(|r| r.0 == storm)
            .filter_map(|r| r.1)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let quiet = mean(false);
    for (i, (storm, r)) in rates.iter().enumerate() {
        // A storm's loss against the quiet phases around it, as in the
        // figure below.
        let loss = (*storm)
            .then(|| rates.get(i.wrapping_sub(1)..i + 2))
            .flatten()
            .and_then(|w| bracketed_losses(w).first().copied());
        let updates = if *storm {
            fmt_opt(storm_rates.next().flatten(), 0)
        } else {
            String::new()
        };
        phases.row([
            format!("{} {}", i + 1, if *storm { "storm" } else { "quiet" }),
            fmt_opt(r.map(|x| x / 1e6), 2),
            fmt_opt(r.zip(quiet).map(|(x, q)| x / q), 3),
            loss.map_or(String::new(), |l| format!("{:.2} %", l * 100.0)),
            updates,
            tl.compactions
                .get(i)
                .copied()
                .flatten()
                .map_or("–".into(), |n| n.to_string()),
        ]);
    }
    let losses = bracketed_losses(&rates);
    let loss = (!losses.is_empty()).then(|| losses.iter().sum::<f64>() / losses.len() as f64);
    let spread = losses.iter().fold(None, |a: Option<(f64, f64)>, &l| {
        Some(a.map_or((l, l), |(lo, hi)| (lo.min(l), hi.max(l))))
    });
    let (rows, secs) = tl
        .storm_rows
        .iter()
        .fold((0u64, 0f64), |a, &(r, s)| (a.0 + r, a.1 + s));
    let per_sec = (secs > 0.0).then(|| rows as f64 / secs);
    let mut figures = Table::new(["figure", "value", "target"]);
    figures.row([
        "forwarding lost during a storm".to_string(),
        fmt_opt(loss.map(|l| l * 100.0), 2)
            + " %"
            + &spread.map_or(String::new(), |(lo, hi)| {
                format!(" ({:.2} to {:.2} % per storm)", lo * 100.0, hi * 100.0)
            }),
        "< 2 %".into(),
    ]);
    figures.row([
        format!("binding updates acknowledged per second ({batch}-row requests)"),
        fmt_opt(per_sec, 0),
        "≥ 1,000,000".into(),
    ]);
    let ms = |v: Option<f64>| fmt_opt(v.map(|x| x * 1e3), 2);
    figures.row([
        "storm request round trip p50 / p99, ms".to_string(),
        format!(
            "{} / {}",
            ms(percentile(&tl.batch_rtt, 0.5)),
            ms(percentile(&tl.batch_rtt, 0.99))
        ),
        "—".into(),
    ]);
    for (during, what) in [(false, "quiet"), (true, "during a storm")] {
        let pick = |f: fn(&Effect) -> Option<f64>| -> Vec<f64> {
            tl.effects
                .iter()
                .filter(|e| e.storm == during)
                .filter_map(f)
                .collect()
        };
        let left_out = tl
            .effects
            .iter()
            .filter(|e| e.storm == during && e.first.is_none())
            .count();
        let row = |v: Vec<f64>| {
            format!(
                "{} / {} / {}",
                ms(percentile(&v, 0.5)),
                ms(percentile(&v, 0.99)),
                v.len()
            )
        };
        figures.row([
            format!(
                "ack → first packet with the new treatment, {what}: p50 / p99 / n, ms \
                 ({left_out} left out)"
            ),
            row(pick(|e| e.first)),
            "p99 ≤ 1 ms".into(),
        ]);
        figures.row([
            format!("ack → new treatment seen through `stats`, {what}: p50 / p99 / n, ms"),
            row(pick(|e| Some(e.seen))),
            "—".into(),
        ]);
    }
    figures.row([
        "one `stats` round trip (quiet or not) p50, ms".to_string(),
        ms(percentile(&tl.stats_rtt, 0.5)),
        "—".into(),
    ]);
    Ok(ScenarioReport {
        name: "updates".into(),
        title: format!(
            "update storm through the control socket during the full pipeline (1M + 1M \
             bindings, {CORPUS_FLOWS} flows, 64 B, one worker): forwarding loss, updates/s, \
             ack → effect"
        ),
        tables: vec![phases, figures],
        notes: vec![
            format!(
                "Method: one run, seventeen phases of {PHASE_SECS} s (quiet and storm alternating, \
                 quiet first and last) after the appliance answered its first `stats`; Mpps \
                 from the live counter lines inside each phase. The loss is each storm's rate \
                 against the mean of the two quiet phases around it, averaged over the storms \
                 (the machine's rate drifts by a few percent over a minute; neighbours cancel \
                 that). The storm client (sluice-perf, one connection) sends \
                 `update` requests of {batch} coupon rows back to back (`--storm-rows`); each is parsed, \
                 validated, journaled with one fsync and mirrored into the workers' tables \
                 before its answer. The storm client's threads are pinned to the main core, \
                 with the control thread; the worker has its own core. The probe moves corpus \
                 subscriber c{PREMIUM_FLOWS} to level {PROBE_LEVEL} (no other traffic uses it), \
                 reads the TSC as the ack arrives, and polls `stats` until that level's packet \
                 and flows-entered counters move, then moves it back, every ~100 ms. Ack → \
                 first packet is the worker's TSC when it re-classified the probe's flow into \
                 the level (its first packet after the change; `last_entered_tsc` in `stats`) \
                 minus the probe's TSC at the ack, 0 when the packet came first; a probe whose \
                 flow entered the level twice before the poll saw it (a storm row sharing its \
                 validity line re-classified it) is left out and counted; the probe's \
                 flow sends a packet every ~{} ms ({CORPUS_FLOWS} flows at the quiet rate), \
                 which bounds it from above. Seen through `stats` also waits for the control \
                 thread: during a storm, behind the batch it is applying.",
                fmt_opt(quiet.map(|pps| CORPUS_FLOWS as f64 / pps * 1e3), 2)
            ),
            format!("Command: {}", spec.display()),
            load.finish(),
        ],
        commands: std::mem::take(&mut bench.commands),
        files: vec![],
        inputs: std::mem::take(&mut bench.inputs),
        data: json!({
            "phases": tl.phases.iter().zip(&rates).map(|(p, r)| json!({"start": p.0, "end": p.1, "storm": p.2, "pps": r.1})).collect::<Vec<_>>(),
            "loss": loss,
            "updates_per_sec": per_sec,
            "batch_rtt_p50_ms": percentile(&tl.batch_rtt, 0.5).map(|x| x * 1e3),
            "batch_rtt_p99_ms": percentile(&tl.batch_rtt, 0.99).map(|x| x * 1e3),
            "effect_ms": tl.effects.iter().map(|e| json!({"storm": e.storm, "first_packet_ms": e.first.map(|x| x * 1e3), "seen_ms": e.seen * 1e3})).collect::<Vec<_>>(),
            "stats_rtt_p50_ms": percentile(&tl.stats_rtt, 0.5).map(|x| x * 1e3),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_rate_uses_only_samples_inside_it() {
        let s: Vec<Sample> = (0..10u32)
            .map(|i| Sample {
                t: f64::from(i),
                packets: u64::from(i) * 1000 + if i >= 5 { 500 * u64::from(i - 5) } else { 0 },
            })
            .collect();
        assert_eq!(phase_rate(&s, 0.0, 4.0), Some(1000.0));
        assert_eq!(phase_rate(&s, 5.0, 9.0), Some(1500.0));
        assert_eq!(phase_rate(&s, 2.5, 2.9), None);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 0.5), Some(2.0));
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 0.99), Some(3.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn each_storm_is_compared_with_the_quiet_phases_around_it() {
        // A slow drift (100, 98, 96 ...) must not read as storm loss.
        let r = [
            (false, Some(100.0)),
            (true, Some(98.0)),
            (false, Some(96.0)),
            (true, Some(90.0)),
            (false, Some(100.0)),
            (true, None),
            (false, Some(100.0)),
            (true, Some(100.0)),
        ];
        let l = bracketed_losses(&r);
        assert_eq!(l.len(), 2, "{l:?}"); // no rate, or no quiet after: left out
        assert!(l[0].abs() < 1e-12);
        assert!((l[1] - (1.0 - 90.0 / 98.0)).abs() < 1e-12);
        assert_eq!(PHASES.iter().filter(|&&s| s).count(), 8);
        assert!(PHASES.windows(2).all(|w| w[0] != w[1]));
        assert!(!PHASES[0] && !PHASES[PHASES.len() - 1]);
    }

    #[test]
    fn every_storm_row_changes() {
        let dscp = |v: &Value| v["entries"][0]["decision"]["dscp"].as_u64();
        let first = |v: &Value| v["entries"][0]["id"].as_str().map(str::to_owned);
        let mut w = Sweep::new(3 * STORM_BATCH, STORM_BATCH);
        // A pass that overwrites the previous pass's digits writes what a
        // fresh rendering would.
        let lines: Vec<String> = (0..7).map(|_| w.next_request().to_owned()).collect();
        for (k, line) in lines.iter().enumerate() {
            let (pass, start) = (k as u32 / 3, k as u32 % 3 * STORM_BATCH);
            assert!(*line == storm_request(pass, start), "request {k}");
        }
        let reqs: Vec<Value> = lines[..6]
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // Stored rows carry DSCP 46: the first pass writes 34, the next 46.
        let got: Vec<_> = reqs.iter().map(|r| (first(r), dscp(r))).collect();
        let want: Vec<_> = [(0, 34), (1, 34), (2, 34), (0, 46), (1, 46), (2, 46)]
            .iter()
            .map(|&(k, d)| (Some(format!("f{}", k * STORM_BATCH)), Some(d)))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn storm_requests_are_valid_update_requests() {
        let line = storm_request(1, 10);
        match sluice_control::policy::parse_request(&line).unwrap() {
            sluice_control::policy::Request::Apply { changes, .. } => {
                assert_eq!(changes.len(), STORM_BATCH as usize)
            }
            other => panic!("{other:?}"),
        }
        assert!(
            sluice_control::policy::parse_request(&probe_row("interactive").to_string()).is_ok()
        );
    }
}
