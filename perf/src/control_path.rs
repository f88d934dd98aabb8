//! The `control` scenario: where a binding update's time goes on the control
//! path, in process, phase by phase.
//!
//! It builds what the control thread holds (a stored policy with the 1M
//! bulk coupons of the `updates` scenario, without its 1M logins, and the
//! workers' tables loaded from it), then replays the `updates` storm's
//! requests (10,000 coupon rows each, every row changing: [`Sweep`]) and
//! times each step the control thread takes for one request:
//! 1. **parse**: the JSON line into validated changes ([`parse_request`]);
//! 2. **validate + apply**: the same batch on an in-memory copy of the
//!    policy (no store), timed apart before the real steps so that it
//!    does not evict what they share: the policy model's own cost;
//! 3. **the real commit**: validation and apply, which subscribers the
//!    batch touched (from the rows it replaced: [`sluice_control::policy::Staged::touched`]), the
//!    journal record, `fdatasync`, and now and then a compaction (the
//!    whole policy written as a snapshot), counted and reported apart;
//! 4. **mirror**: the touched subscribers' records rewritten in the
//!    workers' tables ([`Mirror::sync`]).
//!
//! No socket and no worker: this is the control thread's work per update,
//! which bounds the rate `updates` can reach through the socket.
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::json;
use sluice_control::policy::{parse_request, Change, Policy, Request, StoreOptions};
use sluice_dataplane::mirror::Mirror;
use sluice_dataplane::sched::meter::MeterTable;
use sluice_dataplane::tables::TablesConfig;

use crate::bench::{Bench, LoadWatch};
use crate::corpus::{bulk_coupon, POPULATED_LOGINS};
use crate::report::{ScenarioReport, Table};
use crate::updates::{Sweep, STORM_BATCH};

/// Storm requests timed (after one untimed warm-up request): 4M rows, so
/// that several compactions fall inside (one per ~2M rows of this storm:
/// the journal may grow to twice the snapshot, both binary).
const REQUESTS: u32 = 400;

/// One phase's cost.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: &'static str,
    /// Mean nanoseconds per row.
    pub ns_per_row: f64,
}

/// What the scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct ControlReport {
    pub rows_in_store: u32,
    pub rows_per_request: u32,
    pub requests: u32,
    pub phases: Vec<Phase>,
    /// Rows per second through the whole control path (parse,
    /// commit, mirror), the ceiling of `updates`.
    pub rows_per_sec: f64,
    /// Commits that also wrote a snapshot (compaction), and the mean extra
    /// time of such a commit over the others, milliseconds. Included in the
    /// commit phase, and shown apart in `phases`.
    pub compactions: usize,
    pub compaction_ms: f64,
    /// Rows per second loading the store in the first place (`add`
    /// batches of 10,000 through the same commit, journal included).
    pub add_rows_per_sec: f64,
    /// Loading the store again after the storm, as at start-up.
    pub startup: Startup,
}

/// Loading the store after the storm: its snapshot and the journal since.
#[derive(Debug, Clone, Serialize)]
pub struct Startup {
    pub ms: f64,
    /// Rows in the policy loaded.
    pub rows: usize,
    /// Journal records replayed (10k rows each) and the journal's size.
    pub journal_records: u64,
    pub journal_bytes: u64,
}

fn changes_of(line: &str) -> Result<Vec<Change>> {
    match parse_request(line) {
        Ok(Request::Apply { changes, .. }) => Ok(changes),
        Ok(_) => bail!("not a batch"),
        Err(e) => bail!("bad generated request: {e}"),
    }
}

/// Builds the store (`stored` bulk coupons) and tables and times
/// `requests` storm requests.
pub fn run(dir: &std::path::Path, stored_rows: u32, requests: u32) -> Result<ControlReport> {
    if stored_rows < 2 * STORM_BATCH || requests == 0 {
        bail!(
            "need at least {} stored rows and one request",
            2 * STORM_BATCH
        );
    }
    let _ = std::fs::remove_dir_all(dir);
    let (mut stored, _) = Policy::open(dir, StoreOptions::default())
        .with_context(|| format!("opening a policy store in {}", dir.display()))?;
    let mut memory = Policy::in_memory();
    let t = Instant::now();
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..stored_rows {
        batch.push(bulk_coupon(i));
        if batch.len() == 10_000 || i + 1 == stored_rows {
            let line = json!({"op": "add", "table": "coupon"}).to_string();
            let line = format!(
                "{},\"entries\":[{}]}}",
                line.trim_end_matches('}'),
                batch.join(",")
            );
            let changes = changes_of(&line)?;
            stored
                .commit(&changes)
                .map_err(|e| anyhow::anyhow!("loading the store: {e}"))?;
            memory
                .commit(&changes)
                .map_err(|e| anyhow::anyhow!("loading the copy: {e}"))?;
            batch.clear();
        }
    }
    let add_rows_per_sec = f64::from(stored_rows) / t.elapsed().as_secs_f64() * 2.0;
    let mut mirror = Mirror::load(
        TablesConfig {
            sp_address_capacity: 1,
            coupon_capacity: stored_rows + 4096,
            login_capacity: 1024,
            ..TablesConfig::default()
        },
        MeterTable::new(1024),
        stored.state(),
    )
    .map_err(|e| anyhow::anyhow!("loading the tables: {e:?}"))?;
    // parse, in-memory copy, real commit, mirror.
    let mut ns = [0f64; 4];
    // Commit times (ns) of the requests that compacted the store, and of
    // the others.
    let (mut compacting, mut plain): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
    let compactions = |p: &Policy| p.store().map_or(0, |s| s.stats().compactions);
    let mut sweep = Sweep::new(stored_rows, STORM_BATCH);
    for k in 0..=requests {
        let line = sweep.next_request();
        let t0 = Instant::now();
        let changes = changes_of(line)?;
        let parse = t0.elapsed();
        // The in-memory copy first, on its own: between the real commit and
        // the mirror it would evict what they share, which the control
        // thread's real sequence (commit, mirror, back to back) keeps.
        let m0 = Instant::now();
        memory
            .commit(&changes)
            .map_err(|e| anyhow::anyhow!("in-memory commit: {e}"))?;
        let in_memory = m0.elapsed();
        let before = compactions(&stored);
        let t2 = Instant::now();
        let (_, touched) = stored
            .commit_touched(&changes)
            .map_err(|e| anyhow::anyhow!("commit: {e}"))?;
        let t3 = Instant::now();
        let compacted = compactions(&stored) != before;
        mirror.sync(stored.state(), &touched);
        let t4 = Instant::now();
        if k == 0 {
            continue; // warm-up
        }
        let commit = t3.duration_since(t2).as_nanos() as f64;
        if compacted {
            compacting.push(commit);
        } else {
            plain.push(commit);
        }
        for (acc, d) in ns.iter_mut().zip([
            parse,
            in_memory,
            t3.duration_since(t2),
            t4.duration_since(t3),
        ]) {
            *acc += d.as_nanos() as f64;
        }
    }
    if mirror.stats().errors > 0 {
        bail!("the mirror refused rows: {:?}", mirror.stats().last_error);
    }
    let rows = f64::from(requests) * f64::from(STORM_BATCH);
    let per_row = |i: usize| ns[i] / rows;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    // What compactions added over a plain commit, per row of the run.
    let compaction_ns: f64 = compacting.iter().map(|c| c - mean(&plain)).sum();
    let phases = vec![
        Phase {
            name: "parse (JSON -> validated changes)",
            ns_per_row: per_row(0),
        },
        Phase {
            name: "validate + apply (policy model, in memory, rows not in cache)",
            ns_per_row: per_row(1),
        },
        Phase {
            name: "the real commit: validate, apply, touched, journal (compactions included)",
            ns_per_row: per_row(2),
        },
        Phase {
            name: "  of which compactions, spread over all rows",
            ns_per_row: compaction_ns / rows,
        },
        Phase {
            name: "  the rest: validate, apply, touched, journal record, fdatasync",
            ns_per_row: per_row(2) - compaction_ns / rows,
        },
        Phase {
            name: "mirror into the workers' tables",
            ns_per_row: per_row(3),
        },
    ];
    // The control thread runs parse, commit and mirror (the in-memory copy
    // is only for comparison).
    let total = per_row(0) + per_row(2) + per_row(3);
    // Start-up: the store as the storm left it (a snapshot and the journal
    // since), loaded again as the appliance loads it.
    let store_stats = stored.store().map(|s| s.stats());
    drop((stored, mirror));
    let t = Instant::now();
    let (reloaded, report) = Policy::open(dir, StoreOptions::default())
        .with_context(|| format!("reopening the policy store in {}", dir.display()))?;
    let startup = Startup {
        ms: t.elapsed().as_secs_f64() * 1e3,
        rows: reloaded.state().len(sluice_control::policy::Table::Coupon),
        journal_records: report.replayed_records,
        journal_bytes: store_stats.map_or(0, |s| s.journal_bytes),
    };
    drop(reloaded);
    let _ = std::fs::remove_dir_all(dir);
    Ok(ControlReport {
        rows_in_store: stored_rows,
        rows_per_request: STORM_BATCH,
        requests,
        phases,
        rows_per_sec: 1e9 / total,
        compactions: compacting.len(),
        compaction_ms: (mean(&compacting) - mean(&plain)) / 1e6,
        add_rows_per_sec,
        startup,
    })
}

pub fn control(bench: &mut Bench) -> Result<ScenarioReport> {
    let load = LoadWatch::start();
    let dir = bench.opts.work_dir.join("control-path-state");
    // On the main core, as the appliance's control thread (which also
    // compacts the store) would be; a thread of its own so that the
    // runner's main thread (which spawns the tools) stays unpinned.
    let r = std::thread::spawn(move || {
        crate::process::pin_current_thread(crate::bench::MAIN_LCORE);
        run(&dir, POPULATED_LOGINS, REQUESTS)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the control-path thread panicked"))??;
    let mut table = Table::new(["phase (one 10k-row update request)", "ns per row"]);
    for p in &r.phases {
        table.row([p.name.to_owned(), format!("{:.0}", p.ns_per_row)]);
    }
    let mut figures = Table::new(["figure", "value", "target"]);
    figures.row([
        "rows per second through the control path (parse, commit, mirror)".to_owned(),
        format!("{:.0}", r.rows_per_sec),
        "≥ 1,000,000".to_owned(),
    ]);
    figures.row([
        "compactions during the run (included above), each".to_owned(),
        format!("{}, {:.0} ms", r.compactions, r.compaction_ms),
        "—".to_owned(),
    ]);
    figures.row([
        "rows per second loading the store (add, 10k-row batches, store + copy)".to_owned(),
        format!("{:.0}", r.add_rows_per_sec),
        "—".to_owned(),
    ]);
    figures.row([
        "start-up: loading the store after the storm (snapshot + journal replay)".to_owned(),
        format!(
            "{:.0} ms: {} rows, {} records ({:.0} MB) replayed",
            r.startup.ms,
            r.startup.rows,
            r.startup.journal_records,
            r.startup.journal_bytes as f64 / 1e6
        ),
        "—".to_owned(),
    ]);
    bench.commands.push(format!(
        "sluice-perf control (in process: {} stored coupons, {} requests of {} updated rows)",
        r.rows_in_store, r.requests, r.rows_per_request
    ));
    Ok(ScenarioReport {
        name: "control".into(),
        title: "the control path's cost per binding update, by phase, in process".into(),
        tables: vec![table, figures],
        notes: vec![
            "Method: a stored policy with the 1M bulk coupons of `updates` (not its 1M \
             logins) and the workers' tables loaded from it, in this process; then the \
             `updates` storm's requests (10,000 coupon rows each, every row changing its DSCP) \
             go through the control thread's steps \
             one at a time, each timed: parse, the commit (validation, apply, the touched \
             subscribers, journal record and fdatasync) and the mirror into the tables. The same \
             batch is first applied to an in-memory copy of the policy (the model's cost on \
             rows not in the caches; timed apart, so that it does not evict what commit and \
             mirror share, as they run back to back in the appliance). The whole run is on the main core, like the \
             appliance's control thread, which also compacts the store. Rows per second is \
             1 / (parse + commit + mirror): the ceiling of `updates`, which adds the socket and shares the \
             machine with a forwarding worker."
                .into(),
            load.finish(),
        ],
        commands: std::mem::take(&mut bench.commands),
        files: vec![],
        inputs: vec![],
        data: serde_json::to_value(&r)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scenario at a small scale: every phase runs, the mirror takes
    /// every row, and the figures are sane.
    #[test]
    fn phases_run_at_small_scale() {
        let dir = std::env::temp_dir().join(format!("sluice-perf-control-{}", std::process::id()));
        let r = run(&dir, 3 * STORM_BATCH, 2).expect("runs");
        assert_eq!(r.phases.len(), 6);
        // The measured steps (the two indented rows are derived).
        for i in [0, 1, 2, 5] {
            assert!(r.phases[i].ns_per_row > 0.0, "{r:?}");
        }
        assert!(r.rows_per_sec > 0.0 && r.add_rows_per_sec > 0.0);
        assert!(!dir.exists(), "the scratch store is removed");
        assert!(run(&dir, 10, 1).is_err());
    }
}
