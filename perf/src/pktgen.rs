//! The `pktgen` scenario: Sluice on two memif ports (server role, one
//! socket file in the scratch dir), Pktgen-DPDK as the memif client running
//! [`PKT_FILE`] (64 B at line rate both ways), as perf/README.md's "One
//! host, over memif" describes.
//!
//! **Best effort, never run by its author**: Pktgen-DPDK is not installed
//! on the dev VM (nor packaged by Debian), so this code has only been
//! checked for its command lines, not against a real Pktgen. Where
//! `pktgen` is not on PATH the scenario is listed as "not run" (see
//! [`crate::scenario::PKTGEN_MISSING`]) and nothing here runs.
//!
//! What it reports: Sluice's forwarding rate from its own live counter lines
//! while Pktgen drives it, Sluice's rx → tx latency from its report, and
//! the tail of what Pktgen printed (escape sequences removed); Pktgen's own
//! screen is not parsed. It needs [`MIN_CPUS`] CPUs so that no two pollers
//! share one; with fewer it reports why it did not run.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use crate::bench::{Bench, LoadWatch, LATENCY_NOTE};
use crate::process::{self, CommandSpec, Verdict};
use crate::report::{fmt_opt, ScenarioReport, Table};
use crate::sluice;
use crate::sluice_report::{self, FinalReport};
use crate::stats;

/// The command file Pktgen runs, relative to perf/.
pub const PKT_FILE: &str = "pktgen/64b-line-rate.pkt";
/// Sluice main + worker, Pktgen main + one core per port.
pub const MIN_CPUS: usize = 5;
/// How long Sluice runs: the command file sends for 30 s.
const SLUICE_SECS: f64 = 45.0;

/// Sluice's two memif ports, server role, on one socket file.
pub fn sluice_devices(socket: &Path) -> [String; 2] {
    [0, 1].map(|i| {
        format!(
            "net_memif{i},role=server,id={i},socket={},socket-abstract=no",
            socket.display()
        )
    })
}

/// Pktgen's command line: lcores 2-4 (main 2, port 0 on 3, port 1 on 4),
/// memif client ports paired by id with Sluice's, no hugepages.
pub fn pktgen_command(socket: &Path, pkt_file: &Path, file_prefix: &str) -> CommandSpec {
    let mut c = CommandSpec::new("pktgen")
        .args(["-l", "2-4"])
        .private_eal(file_prefix, 1024)
        .arg("--no-pci");
    for i in 0..2 {
        c = c.args([
            "--vdev".to_owned(),
            format!(
                "net_memif{i},role=client,id={i},socket={},socket-abstract=no",
                socket.display()
            ),
        ]);
    }
    c.args(["--", "-P", "-m", "3.0,4.1", "-f"])
        .arg(pkt_file.to_string_lossy())
}

/// Removes terminal escape sequences (CSI `ESC [ ... letter`, and lone
/// ESC + one character) and carriage returns from Pktgen's screen output.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '\u{1b}' => match it.next() {
                Some('[') => {
                    for d in it.by_ref() {
                        if d.is_ascii_alphabetic() || d == '~' {
                            break;
                        }
                    }
                }
                _ => continue,
            },
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

fn not_run(bench: &mut Bench, why: String) -> ScenarioReport {
    crate::bench::not_run(
        bench,
        "pktgen",
        "Sluice on memif driven by Pktgen-DPDK",
        why,
    )
}

/// The `pktgen` scenario (only offered when `pktgen` is on PATH).
pub fn pktgen(bench: &mut Bench) -> Result<ScenarioReport> {
    if bench.machine.nproc < MIN_CPUS {
        let why = format!(
            "needs {MIN_CPUS} CPUs (Sluice main + worker, Pktgen main + one per port), this \
             machine has {}",
            bench.machine.nproc
        );
        return Ok(not_run(bench, why));
    }
    let pkt_file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(PKT_FILE);
    let socket = bench.opts.work_dir.join("memif.sock");
    let _ = std::fs::remove_file(&socket);
    let name = "sluice-memif";
    let extra = bench.control_toml(name);
    let cfg = bench.sluice_config(name, sluice_devices(&socket), extra, None)?;
    let spec = sluice::command(&bench.opts.sluice_bin, &cfg, SLUICE_SECS);
    let report_path = sluice::report_path(&cfg);
    let _ = std::fs::remove_file(&report_path);
    let load = LoadWatch::start();
    let sluice_run = {
        let spec = spec.clone();
        std::thread::spawn(move || {
            process::run(
                &spec,
                Duration::from_secs_f64(SLUICE_SECS + 30.0),
                Duration::from_secs(10),
                |_| Verdict::Continue,
            )
        })
    };
    // Sluice creates the socket once its ports are up.
    let until = Instant::now() + Duration::from_secs(30);
    while !socket.exists() && Instant::now() < until && !sluice_run.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let prefix = format!("perf-pktgen-{}", std::process::id());
    let pg = pktgen_command(&socket, &pkt_file, &prefix);
    let pg_out = if socket.exists() {
        Some(process::run(
            &pg,
            Duration::from_secs_f64(SLUICE_SECS - 8.0),
            Duration::from_secs(10),
            |_| Verdict::Continue,
        )?)
    } else {
        None
    };
    let f = sluice_run
        .join()
        .map_err(|_| anyhow::anyhow!("the sluice runner thread panicked"))??;
    bench.commands.push(spec.display());
    bench.commands.push(pg.display());
    let Some(pg_out) = pg_out else {
        let why = format!(
            "sluice never created the memif socket {}; its output ended with:\n{}",
            socket.display(),
            f.tail(12)
        );
        return Ok(not_run(bench, why));
    };
    let samples = sluice::samples(f.stdout.iter().map(|l| (l.t, l.text.as_str())));
    let rate = stats::window_rate(&samples, bench.opts.warmup_secs, bench.opts.window_secs).ok();
    let report: Option<FinalReport> = sluice_report::read(&report_path).ok();
    let lat = report
        .as_ref()
        .and_then(|r| r.latency.as_deref())
        .and_then(sluice_report::worst_latency);
    let mut table = Table::new(["figure", "value"]);
    table.row([
        "Sluice forwarded, both directions, Mpps".to_owned(),
        fmt_opt(rate.as_ref().map(|r| stats::mpps(r.pps)), 2),
    ]);
    table.row([
        "Sluice rx→tx p50 / p99, µs".to_owned(),
        format!(
            "{} / {}",
            fmt_opt(lat.map(|l| l.0 as f64 / 1e3), 2),
            fmt_opt(lat.map(|l| l.1 as f64 / 1e3), 2)
        ),
    ]);
    let screen = strip_ansi(&format!("{}{}", pg_out.stdout_text(), pg_out.stderr));
    let lines: Vec<&str> = screen.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(40)..].join("\n");
    bench
        .inputs
        .push(("Pktgen output (last 40 lines)".into(), tail.clone()));
    Ok(ScenarioReport {
        name: "pktgen".into(),
        title: format!("Sluice on two memif ports driven by Pktgen-DPDK ({PKT_FILE})"),
        tables: vec![table],
        notes: vec![
            "Best effort: the runner starts Sluice (memif server) and Pktgen (memif client) \
             with the command lines below and reports Sluice's own counters; Pktgen's screen \
             is kept as printed (see the Pktgen output), not parsed. This code path has not \
             been run where it was written (no pktgen there)."
                .into(),
            LATENCY_NOTE.into(),
            load.finish(),
        ],
        commands: std::mem::take(&mut bench.commands),
        files: vec![],
        inputs: std::mem::take(&mut bench.inputs),
        data: json!({
            "ran": true,
            "sluice_pps": rate.map(|r| r.pps),
            "latency": report.and_then(|r| r.latency),
            "pktgen_tail": tail,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ends_of_each_memif_pair_share_socket_and_id() {
        let s = Path::new("/tmp/w/memif.sock");
        let d = sluice_devices(s);
        assert_eq!(
            d[1],
            "net_memif1,role=server,id=1,socket=/tmp/w/memif.sock,socket-abstract=no"
        );
        let c = pktgen_command(s, Path::new("/p/64b-line-rate.pkt"), "pg").display();
        assert!(
            c.contains(
                "--vdev net_memif1,role=client,id=1,socket=/tmp/w/memif.sock,socket-abstract=no"
            ),
            "{c}"
        );
        assert!(
            c.starts_with("pktgen -l 2-4 --file-prefix pg --no-huge"),
            "{c}"
        );
        assert!(
            c.ends_with("-- -P -m 3.0,4.1 -f /p/64b-line-rate.pkt"),
            "{c}"
        );
    }

    #[test]
    fn the_command_file_exists() {
        assert!(PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(PKT_FILE)
            .is_file());
    }

    #[test]
    fn escape_sequences_are_removed() {
        let s = "\u{1b}[2J\u{1b}[1;1H  Port 0\u{1b}[0m  14880952\r\n\u{1b}7ok";
        assert_eq!(strip_ansi(s), "  Port 0  14880952\nok");
    }
}
