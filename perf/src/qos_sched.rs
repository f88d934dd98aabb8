//! DPDK's qos_sched example (Debian package dpdk-doc) as the hierarchical
//! scheduler reference: can it run here, building it, its lcore layout, its
//! profiles, and parsing its once-a-second counters.
//!
//! Its layout rules (examples/qos_sched/args.c, DPDK 22.11): each flow has
//! an RX lcore and a worker lcore (which also transmits unless a TX lcore
//! is given) that must differ; the main lcore (`--mnc`) must be neither;
//! the EAL lcore set must be exactly {main, RX, worker, TX}; and the RX and
//! worker lcore ids must be below the number of CPUs in
//! /sys/devices/system/cpu. So it needs three lcores on at least two CPUs.
use std::path::{Path, PathBuf};

use crate::process::CommandSpec;
use crate::stats::Sample;

/// Where Debian's dpdk-doc puts the example sources.
pub const DEFAULT_SRC: &str = "/usr/share/dpdk/examples/qos_sched";

/// How qos_sched's lcores are laid out on this machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// EAL arguments placing the lcores.
    pub eal: Vec<String>,
    /// `--pfc rx_port,tx_port,rx_lcore,worker_lcore`.
    pub pfc: String,
    /// `--mnc`: the main lcore.
    pub main_lcore: u32,
    /// What is unusual about this layout, if anything.
    pub caveat: Option<String>,
}

/// Picks a layout for `ncpus` CPUs, or explains why none exists.
pub fn plan_layout(ncpus: usize) -> Result<Layout, String> {
    match ncpus {
        0 | 1 => Err(format!(
            "qos_sched needs its RX and worker lcores on two different CPUs \
             (ids below the CPU count); this machine has {ncpus} CPU"
        )),
        2 => Ok(Layout {
            // `-l 0,1` cannot work: RX and worker take both lcores and the
            // main lcore must be a third ("Main core index is not configured
            // properly"). EAL can map a third lcore onto CPU 0; qos_sched's
            // main lcore only sleeps and prints counters once a second.
            eal: vec![
                "--lcores".into(),
                "0@0,1@1,2@0".into(),
                "--main-lcore".into(),
                "2".into(),
            ],
            pfc: "0,1,0,1".into(),
            main_lcore: 2,
            caveat: Some(
                "this machine has 2 CPUs and qos_sched needs 3 lcores (main, RX, worker+TX); \
                 with `-l 0,1` it refuses to start (\"Main core index is not configured \
                 properly\"). It runs with `--lcores 0@0,1@1,2@0 --main-lcore 2`: RX on CPU 0, \
                 worker+TX on CPU 1, and the main lcore (sleeps, prints counters once a \
                 second) sharing CPU 0 with RX."
                    .into(),
            ),
        }),
        _ => Ok(Layout {
            eal: vec![
                "-l".into(),
                "0,1,2".into(),
                "--main-lcore".into(),
                "0".into(),
            ],
            pfc: "0,1,1,2".into(),
            main_lcore: 0,
            caveat: None,
        }),
    }
}

/// Why qos_sched cannot even be built here, if so.
pub fn check_prerequisites(src: &Path) -> Result<(), String> {
    if !src.join("Makefile").is_file() || !src.join("main.c").is_file() {
        return Err(format!(
            "no qos_sched sources at {} (Debian package dpdk-doc)",
            src.display()
        ));
    }
    for tool in ["make", "cc", "pkg-config"] {
        if !crate::process::on_path(tool) {
            return Err(format!(
                "`{tool}` is not on PATH; qos_sched is built with make + cc"
            ));
        }
    }
    if crate::process::output_of("pkg-config", &["--exists", "libdpdk"]).is_none() {
        return Err("pkg-config does not know libdpdk (Debian package libdpdk-dev)".into());
    }
    Ok(())
}

/// Copies the example sources (read-only under /usr/share) into `dest`.
pub fn copy_sources(src: &Path, dest: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dest)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), dest.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// `make -C DIR` (the Makefile builds against pkg-config libdpdk).
pub fn build_command(dir: &Path) -> CommandSpec {
    CommandSpec::new("make").args(["-C".to_owned(), dir.to_string_lossy().into_owned()])
}

pub fn binary(dir: &Path) -> PathBuf {
    dir.join("build").join("qos_sched")
}

/// The shipped profile with every pipe's token-bucket and traffic-class
/// rates raised to `rate` bytes/s, so that the pipe shaper stops capping
/// the output and the scheduler's own cost is what is measured.
pub fn open_profile(profile: &str, rate: u64) -> String {
    let mut in_pipe = false;
    let mut out = String::new();
    for line in profile.lines() {
        let t = line.trim_start();
        if t.starts_with('[') {
            in_pipe = t.starts_with("[pipe profile");
        }
        let rewritten = in_pipe
            .then(|| {
                let (key, rest) = line.split_once('=')?;
                let k = key.trim();
                let is_rate = k == "tb rate" || (k.starts_with("tc ") && k.ends_with(" rate"));
                if !is_rate {
                    return None;
                }
                let comment = rest.find(';').map(|i| &rest[i..]).unwrap_or("");
                Some(format!("{key}= {rate} {comment}").trim_end().to_owned())
            })
            .flatten();
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The first `tb rate` of the subport profile: the rate the open profile
/// raises pipes to.
pub fn subport_rate(profile: &str) -> Option<u64> {
    let mut in_sub = false;
    for line in profile.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            in_sub = t.starts_with("[subport profile");
            continue;
        }
        if in_sub {
            if let Some((k, v)) = t.split_once('=') {
                if k.trim() == "tb rate" {
                    return v.split(';').next()?.trim().parse().ok();
                }
            }
        }
    }
    None
}

/// `stdbuf -oL qos_sched <EAL> -- --pfc ... --mnc ... --msz ... --cfg PROFILE`
pub fn command(
    bin: &Path,
    layout: &Layout,
    devices: &[String; 2],
    file_prefix: &str,
    mbufs: u32,
    profile: &Path,
) -> CommandSpec {
    let mut c = CommandSpec::new(bin.to_string_lossy())
        .args(layout.eal.iter().cloned())
        .private_eal(file_prefix, 1024);
    for d in devices {
        c = c.args(["--vdev", d]);
    }
    c.args([
        "--no-pci".to_owned(),
        "--".to_owned(),
        "--pfc".to_owned(),
        layout.pfc.clone(),
        "--mnc".to_owned(),
        layout.main_lcore.to_string(),
        // The default pool is 2M mbufs (4.5 GB).
        "--msz".to_owned(),
        mbufs.to_string(),
        "--cfg".to_owned(),
        profile.to_string_lossy().into_owned(),
    ])
    .line_buffered()
}

/// One second of qos_sched's counters (deltas since the previous print).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Second {
    /// Index of its `TX port` line in the output.
    pub line: usize,
    pub rx: u64,
    pub rx_no_mbuf: u64,
    pub tx: u64,
    /// Packets the worker took from the RX ring and offered to rte_sched.
    pub worker_in: Option<u64>,
    /// Of those, dropped (queue full) rather than transmitted.
    pub worker_drop: Option<u64>,
}

/// Parses the once-a-second block:
/// `RX port 0: rx: N err: E no_mbuf: M`, `TX port 1: tx: N err: E`, and
/// (when built with APP_COLLECT_STAT, as Debian's source is) the
/// `QOS+TX | in | dropped | pps: N` row.
pub fn parse_seconds<'a>(lines: impl IntoIterator<Item = &'a str>) -> Vec<Second> {
    let mut out: Vec<Second> = Vec::new();
    let mut pending = Second::default();
    for (i, line) in lines.into_iter().enumerate() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("RX port ") {
            pending = Second::default();
            let f = fields(rest);
            pending.rx = f.iter().find(|(k, _)| *k == "rx").map_or(0, |x| x.1);
            pending.rx_no_mbuf = f.iter().find(|(k, _)| *k == "no_mbuf").map_or(0, |x| x.1);
        } else if let Some(rest) = t.strip_prefix("TX port ") {
            if let Some(&(_, tx)) = fields(rest).iter().find(|(k, _)| *k == "tx") {
                pending.tx = tx;
                pending.line = i;
                out.push(pending);
            }
        } else if let Some(rest) = t.strip_prefix("QOS+TX") {
            let cols: Vec<u64> = rest
                .split(|c: char| c == '|' || c.is_whitespace())
                .filter_map(|x| x.parse().ok())
                .collect();
            if let (Some(last), [inn, drop, ..]) = (out.last_mut(), cols.as_slice()) {
                last.worker_in = Some(*inn);
                last.worker_drop = Some(*drop);
            }
        }
    }
    out
}

/// `key: value` pairs of `0: rx: 18035584 err: 0 no_mbuf: 0`.
fn fields(s: &str) -> Vec<(&str, u64)> {
    let toks: Vec<&str> = s.split_whitespace().collect();
    toks.windows(2)
        .filter_map(|w| Some((w[0].strip_suffix(':')?, w[1].parse().ok()?)))
        .collect()
}

/// Cumulative TX samples: the per-second deltas summed, each timed by the
/// arrival of its `TX port` line.
pub fn tx_samples(seconds: &[Second], line_times: &[f64]) -> Vec<Sample> {
    let mut total = 0;
    seconds
        .iter()
        .filter_map(|s| {
            total += s.tx;
            Some(Sample {
                t: *line_times.get(s.line)?,
                packets: total,
            })
        })
        .collect()
}

/// Like [`tx_samples`] for what the RX lcore received.
pub fn rx_samples(seconds: &[Second], line_times: &[f64]) -> Vec<Sample> {
    let mut total = 0;
    seconds
        .iter()
        .filter_map(|s| {
            total += s.rx;
            Some(Sample {
                t: *line_times.get(s.line)?,
                packets: total,
            })
        })
        .collect()
}

/// qos_sched's own complaint when it refuses to start.
pub fn startup_error(out: &str) -> Option<String> {
    out.lines()
        .map(str::trim)
        .find(|l| {
            l.starts_with("APP:")
                && (l.contains("not configured")
                    || l.contains("cannot")
                    || l.contains("Invalid")
                    || l.contains("invalid")
                    || l.contains("failed"))
        })
        .map(str::to_owned)
        .or_else(|| crate::testpmd::fatal_cause(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STOCK: &str = include_str!("../tests/fixtures/qos_sched_stock.txt");
    const OPEN: &str = include_str!("../tests/fixtures/qos_sched_open.txt");
    const TWO_LCORES: &str = include_str!("../tests/fixtures/qos_sched_two_lcores_error.txt");
    const PROFILE: &str = "[port]\nframe overhead = 24\n\n[subport profile 0]\n\
tb rate = 1250000000           ; Bytes per second\ntc 0 rate = 1250000000\n\n\
[pipe profile 0]\ntb rate = 305175               ; Bytes per second\ntb size = 1000000\n\
tc 0 rate = 305175             ; Bytes per second\ntc 12 rate = 305175\n\
tc period = 40                ; Milliseconds\n\n[red]\ntc 0 wred min = 48 40 32\n";

    #[test]
    fn layouts_by_cpu_count() {
        assert!(plan_layout(1).unwrap_err().contains("has 1 CPU"));
        let two = plan_layout(2).unwrap();
        assert_eq!(two.pfc, "0,1,0,1");
        assert_eq!(two.main_lcore, 2);
        assert!(two.caveat.unwrap().contains("Main core index"));
        let four = plan_layout(4).unwrap();
        assert_eq!(four.eal, ["-l", "0,1,2", "--main-lcore", "0"]);
        assert_eq!(four.caveat, None);
    }

    #[test]
    fn the_two_lcore_refusal_is_explained() {
        assert_eq!(
            startup_error(TWO_LCORES).as_deref(),
            Some("APP: Main core index is not configured properly")
        );
        assert_eq!(startup_error(STOCK), None);
    }

    #[test]
    fn stock_profile_seconds() {
        let s = parse_seconds(STOCK.lines());
        assert_eq!(s.len(), 3, "{s:#?}");
        assert_eq!(s[0].rx, 18035584);
        assert_eq!(s[0].tx, 3392);
        assert_eq!(s[0].worker_in, Some(17760896));
        assert_eq!(s[0].worker_drop, Some(17757382));
        assert_eq!(s[1].tx, 3456);
    }

    #[test]
    fn open_profile_seconds_and_cumulative_samples() {
        let s = parse_seconds(OPEN.lines());
        assert!(s.len() >= 2);
        assert_eq!(s[0].tx, 3684928);
        let times: Vec<f64> = (0..OPEN.lines().count()).map(|i| i as f64).collect();
        let tx = tx_samples(&s, &times);
        assert_eq!(tx[1].packets, s[0].tx + s[1].tx);
        let rx = rx_samples(&s, &times);
        assert_eq!(rx[0].packets, s[0].rx);
    }

    #[test]
    fn open_profile_raises_only_pipe_rates() {
        let open = open_profile(PROFILE, 1_250_000_000);
        assert!(open.contains("[pipe profile 0]\ntb rate = 1250000000 ; Bytes per second\n"));
        assert!(open.contains("tc 12 rate = 1250000000\n"));
        assert!(open.contains("tb size = 1000000\n"));
        assert!(open.contains("tc period = 40"));
        assert!(open.contains("tc 0 wred min = 48 40 32"));
        assert!(!open.contains("305175"));
        assert_eq!(subport_rate(PROFILE), Some(1_250_000_000));
    }

    #[test]
    fn command_line() {
        let c = command(
            Path::new("/tmp/q/build/qos_sched"),
            &plan_layout(2).unwrap(),
            &["net_null0,copy=1".into(), "net_null1,copy=1".into()],
            "qs-1",
            16384,
            Path::new("/tmp/q/profile.cfg"),
        );
        assert_eq!(
            c.display(),
            "stdbuf -oL /tmp/q/build/qos_sched --lcores 0@0,1@1,2@0 --main-lcore 2 --file-prefix qs-1 \
--no-huge -m 1024 --no-shconf --vdev net_null0,copy=1 --vdev net_null1,copy=1 --no-pci -- \
--pfc 0,1,0,1 --mnc 2 --msz 16384 --cfg /tmp/q/profile.cfg"
        );
    }
}
