//! The appliance under test: finding its binary, writing its config, its
//! command line, and parsing its live counter lines (its final JSON report
//! is read by [`crate::sluice_report`]).
//!
//! `sluice --stats-interval 1` prints, once a second,
//! `[    2.0s]  upstream  44545056 pkts  23156.6 kpps  11856.16 Mbit/s  downstream ...  txq-full drops 0`
//! with cumulative tx packets per direction. The runner times each line
//! as it arrives, exactly as it times testpmd's blocks.
use std::path::{Path, PathBuf};

use crate::process::CommandSpec;
use crate::stats::Sample;

/// Finds the sluice binary: `--sluice`/`SLUICE_BIN` if given, else next to
/// this runner's own executable (same target dir and profile). Nothing is
/// built here.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_owned())
        } else {
            Err(format!("sluice binary {} does not exist", p.display()))
        };
    }
    let me = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    let dir = me.parent().unwrap_or(Path::new("."));
    let candidate = dir.join("sluice");
    if candidate.is_file() {
        Ok(candidate)
    } else {
        Err(format!(
            "no sluice binary at {}; build it into the same target dir and profile \
             (`cargo build --release`), or pass --sluice PATH / set SLUICE_BIN",
            candidate.display()
        ))
    }
}

/// Settings shared with the testpmd reference; see [`crate::testpmd::Setup`].
#[derive(Debug, Clone)]
pub struct Setup {
    pub main_core: u32,
    pub worker_core: u32,
    pub mem_mb: u32,
    pub devices: [String; 2],
    pub burst: u32,
    pub mbufs: u32,
    pub mbuf_cache: u32,
    pub ring_desc: u32,
    /// Appended verbatim: the `[control]` section (socket and store in the
    /// runner's scratch directory) and any `[[rules]]`.
    pub extra: String,
    /// Shape the upstream port's egress (runs the scheduler).
    pub upstream_rate_bps: Option<u64>,
    /// Coupon control packets (redemptions, DNS answers) punted to the
    /// control thread: this forces every packet through the flow path, so
    /// the bridge and rule scenarios measure without it (as an operator who
    /// does not use in-band redemption runs) and the full pipeline with it.
    pub punt: bool,
}

/// A complete config with every performance-relevant key spelled out, so
/// that a change of Sluice's defaults cannot silently change the benchmark.
pub fn config_toml(s: &Setup) -> String {
    format!(
        r#"# Written by sluice-perf for one benchmark run.
[eal]
args = ["--no-huge", "-m", "{mem}", "--no-shconf"]
file_prefix = "auto"

[ports.subscriber]
device = "{d0}"
rx_desc = {desc}
tx_desc = {desc}

[ports.upstream]
device = "{d1}"
rx_desc = {desc}
tx_desc = {desc}
{rate}
[workers]
main_core = {main}
cores = [{worker}]
burst = {burst}

[mempool]
mbufs = {mbufs}
cache = {cache}
data_room = 2176

[coupons]
redeem_port = {redeem}
snoop_dns = {punt}
{extra}
"#,
        redeem = if s.punt { 7466 } else { 0 },
        punt = s.punt,
        mem = s.mem_mb,
        d0 = s.devices[0],
        d1 = s.devices[1],
        desc = s.ring_desc,
        main = s.main_core,
        worker = s.worker_core,
        burst = s.burst,
        mbufs = s.mbufs,
        cache = s.mbuf_cache,
        extra = s.extra,
        rate = s
            .upstream_rate_bps
            .map(|r| format!("rate_bps = {r}\n"))
            .unwrap_or_default(),
    )
}

/// Where a run of `config` writes its final report: next to the config,
/// `<name>.report.json` for `<name>.toml`.
pub fn report_path(config: &Path) -> PathBuf {
    config.with_extension("report.json")
}

/// `sluice -c CONFIG --duration SECS --stats-interval 1 --stats-json
/// REPORT`, REPORT being [`report_path`] of the config: every run leaves
/// its own latency figures behind.
pub fn command(bin: &Path, config: &Path, duration_secs: f64) -> CommandSpec {
    CommandSpec::new(bin.to_string_lossy()).args([
        "-c".to_owned(),
        config.to_string_lossy().into_owned(),
        "--duration".to_owned(),
        format!("{duration_secs}"),
        "--stats-interval".to_owned(),
        "1".to_owned(),
        "--stats-json".to_owned(),
        report_path(config).to_string_lossy().into_owned(),
    ])
}

/// One direction in a live counter line.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectionSample {
    pub direction: String,
    /// Cumulative tx packets in this direction.
    pub packets: u64,
    /// Sluice's own rate over its last interval.
    pub kpps: f64,
    pub mbps: f64,
}

/// One live counter line.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveLine {
    /// Sluice's uptime stamp (0.1 s resolution; not used for rates).
    pub uptime: f64,
    pub directions: Vec<DirectionSample>,
    pub txq_full_drops: u64,
}

impl LiveLine {
    pub fn tx_packets(&self) -> u64 {
        self.directions.iter().map(|d| d.packets).sum()
    }
}

/// Parses a live counter line; anything else (logs, the final report)
/// gives `None`.
pub fn parse_live_line(line: &str) -> Option<LiveLine> {
    let rest = line.trim_start().strip_prefix('[')?;
    let (stamp, rest) = rest.split_once("s]")?;
    let uptime = stamp.trim().parse().ok()?;
    let toks: Vec<&str> = rest.split_whitespace().collect();
    let mut directions = Vec::new();
    let mut txq_full_drops = None;
    let mut i = 0;
    while i < toks.len() {
        if toks[i] == "txq-full" {
            if toks.get(i + 1) != Some(&"drops") {
                return None;
            }
            txq_full_drops = Some(toks.get(i + 2)?.parse().ok()?);
            i += 3;
            continue;
        }
        // name N pkts K kpps M Mbit/s
        let w = toks.get(i..i + 7)?;
        if (w[2], w[4], w[6]) != ("pkts", "kpps", "Mbit/s") {
            return None;
        }
        directions.push(DirectionSample {
            direction: w[0].to_owned(),
            packets: w[1].parse().ok()?,
            kpps: w[3].parse().ok()?,
            mbps: w[5].parse().ok()?,
        });
        i += 7;
    }
    (!directions.is_empty()).then_some(LiveLine {
        uptime,
        directions,
        txq_full_drops: txq_full_drops?,
    })
}

/// Cumulative tx samples (both directions) from timed stdout lines.
pub fn samples<'a>(lines: impl IntoIterator<Item = (f64, &'a str)>) -> Vec<Sample> {
    lines
        .into_iter()
        .filter_map(|(t, text)| {
            parse_live_line(text).map(|l| Sample {
                t,
                packets: l.tx_packets(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLUICE_64: &str = include_str!("../tests/fixtures/sluice_64.txt");

    #[test]
    fn live_lines_of_a_real_run() {
        let lines: Vec<LiveLine> = SLUICE_64.lines().filter_map(parse_live_line).collect();
        assert_eq!(lines.len(), 4);
        let first = &lines[0];
        assert_eq!(first.uptime, 1.0);
        assert_eq!(first.directions.len(), 2);
        assert_eq!(
            first.directions[0],
            DirectionSample {
                direction: "upstream".into(),
                packets: 21330176,
                kpps: 21199.2,
                mbps: 10853.99,
            }
        );
        assert_eq!(first.directions[1].direction, "downstream");
        assert_eq!(first.tx_packets(), 21330176 + 21330272);
        assert_eq!(first.txq_full_drops, 0);
        assert!(lines
            .windows(2)
            .all(|w| w[1].tx_packets() > w[0].tx_packets()));
    }

    #[test]
    fn logs_and_the_final_report_are_not_live_lines() {
        assert_eq!(
            parse_live_line("[2026-11-22T07:36:31Z INFO  sluice_dataplane::app] EAL"),
            None
        );
        assert_eq!(parse_live_line("sluice ran 4.92 s"), None);
        assert_eq!(
            parse_live_line("lcore1   upstream 111431424 111431424 7131611136 0"),
            None
        );
        assert_eq!(parse_live_line("[    1.0s]  upstream 5 pkts"), None);
    }

    #[test]
    fn samples_take_the_runner_clock() {
        let timed: Vec<(f64, &str)> = SLUICE_64
            .lines()
            .enumerate()
            .map(|(i, l)| (i as f64 * 0.5, l))
            .collect();
        let s = samples(timed);
        assert_eq!(s.len(), 4);
        assert_eq!(s[3].packets, 91063680 + 91063840);
    }

    #[test]
    fn config_spells_out_the_fairness_settings() {
        let toml = config_toml(&Setup {
            main_core: 0,
            worker_core: 1,
            mem_mb: 512,
            devices: [
                "net_null0,copy=1,size=128".into(),
                "net_null1,copy=1,size=128".into(),
            ],
            burst: 32,
            mbufs: 16383,
            mbuf_cache: 256,
            ring_desc: 1024,
            extra: "\n[control]\nsocket = \"/tmp/x.sock\"\n".into(),
            upstream_rate_bps: Some(1_000_000_000),
            punt: true,
        });
        assert!(
            toml.contains("tx_desc = 1024\nrate_bps = 1000000000\n"),
            "{toml}"
        );
        for want in [
            "[control]",
            r#"device = "net_null0,copy=1,size=128""#,
            "cores = [1]",
            "burst = 32",
            "mbufs = 16383",
            "cache = 256",
            r#"args = ["--no-huge", "-m", "512", "--no-shconf"]"#,
        ] {
            assert!(toml.contains(want), "missing {want} in\n{toml}");
        }
    }

    #[test]
    fn every_run_writes_its_report_next_to_its_config() {
        let c = command(
            Path::new("/b/sluice"),
            Path::new("/w/sluice-full-400.toml"),
            6.6,
        );
        assert_eq!(
            c.display(),
            "/b/sluice -c /w/sluice-full-400.toml --duration 6.6 --stats-interval 1 \
             --stats-json /w/sluice-full-400.report.json"
        );
    }

    #[test]
    fn an_explicit_binary_must_exist() {
        assert!(locate(Some(Path::new("/nonexistent/sluice"))).is_err());
        assert!(locate(Some(Path::new("/bin/sh"))).is_ok());
    }
}
