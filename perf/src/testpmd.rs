//! dpdk-testpmd as the reference forwarder: its command line and the
//! parsing of its periodic port statistics.
//!
//! How testpmd is run without a terminal (checked on DPDK 22.11):
//! - Without `-i`, testpmd starts forwarding and then waits for Enter
//!   ("Press enter to exit"); with stdin from /dev/null the read returns
//!   EOF at once and testpmd stops after a fraction of a second.
//! - With `--stats-period N` it instead loops printing `show port stats`
//!   blocks until SIGINT/SIGTERM, then prints the forward totals and exits
//!   0. That is what the runner uses: `--auto-start --stats-period 1`,
//!   stdin /dev/null, SIGTERM when enough blocks have arrived. (SIGINT is
//!   no good from a shell's background job, which starts with SIGINT
//!   ignored.)
//! - Its stdout is block-buffered into a pipe, so it runs under
//!   `stdbuf -oL` and each block is timed by the runner as it arrives.
//! - The stats loop compares elapsed TSC cycles against DPDK's TSC
//!   estimate, which on this VM is rounded up (2600 vs 2596.1 MHz), so a
//!   1 s period comes out as a block every ~2 s. The runner times the
//!   blocks itself and uses cumulative counters, so this only makes runs
//!   a little longer.
//! - The default mbuf pool (155456 mbufs) does not fit in `-m 512`; the
//!   pool, cache, burst and ring sizes are set to Sluice's defaults.
use crate::process::CommandSpec;
use crate::stats::Sample;

/// testpmd's forwarding engines used as references.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FwdMode {
    /// Swaps source and destination MAC: reads and writes every header,
    /// the usual "minimal real work" peer.
    Macswap,
    /// Forwards without touching the packet: the ceiling for a bridge.
    Io,
}

impl FwdMode {
    pub fn name(self) -> &'static str {
        match self {
            FwdMode::Macswap => "macswap",
            FwdMode::Io => "io",
        }
    }
}

/// Settings that must match Sluice's run for the comparison to be fair.
#[derive(Debug, Clone)]
pub struct Setup {
    /// EAL lcore list; the first is the main lcore, the rest forward.
    pub lcores: String,
    pub main_lcore: u32,
    /// `-m` megabytes, no hugepages.
    pub mem_mb: u32,
    pub devices: [String; 2],
    pub mbufs: u32,
    pub mbuf_cache: u32,
    pub burst: u32,
    pub ring_desc: u32,
}

/// `stdbuf -oL dpdk-testpmd <EAL> -- --forward-mode=<mode> --auto-start --stats-period 1 ...`
pub fn command(bin: &str, setup: &Setup, mode: FwdMode, file_prefix: &str) -> CommandSpec {
    let mut c = CommandSpec::new(bin)
        .args([
            "-l".to_owned(),
            setup.lcores.clone(),
            "--main-lcore".to_owned(),
            setup.main_lcore.to_string(),
        ])
        .private_eal(file_prefix, setup.mem_mb);
    for d in &setup.devices {
        c = c.args(["--vdev", d]);
    }
    c.args([
        "--no-pci".to_owned(),
        "--".to_owned(),
        format!("--forward-mode={}", mode.name()),
        "--auto-start".to_owned(),
        "--stats-period".to_owned(),
        "1".to_owned(),
        format!("--total-num-mbufs={}", setup.mbufs),
        format!("--mbcache={}", setup.mbuf_cache),
        format!("--burst={}", setup.burst),
        format!("--rxd={}", setup.ring_desc),
        format!("--txd={}", setup.ring_desc),
    ])
    .line_buffered()
}

/// One port's counters in one `show port stats` block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortSample {
    pub port: u16,
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// testpmd's own rate since the previous block (0 in the first block).
    pub rx_pps: u64,
    pub tx_pps: u64,
}

/// One `Port statistics ====` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsBlock {
    /// Index of the block's header line in the output.
    pub line: usize,
    pub ports: Vec<PortSample>,
}

impl StatsBlock {
    pub fn tx_packets(&self) -> u64 {
        self.ports.iter().map(|p| p.tx_packets).sum()
    }
}

/// The final "Accumulated forward statistics for all ports".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardTotals {
    pub rx_packets: u64,
    pub rx_dropped: u64,
    pub tx_packets: u64,
    pub tx_dropped: u64,
}

/// `KEY: value` pairs of a testpmd stats line, e.g.
/// `  RX-packets: 33122144   RX-missed: 0          RX-bytes:  0`.
fn pairs(line: &str) -> Vec<(&str, u64)> {
    let toks: Vec<&str> = line.split_whitespace().collect();
    toks.windows(2)
        .filter_map(|w| Some((w[0].strip_suffix(':')?, w[1].parse().ok()?)))
        .collect()
}

fn get(pairs: &[(&str, u64)], key: &str) -> Option<u64> {
    pairs.iter().find(|(k, _)| *k == key).map(|&(_, v)| v)
}

/// Parses every complete `show port stats` block (all `nports` ports with
/// their TX-packets and Tx-pps lines). An incomplete block, e.g. one cut
/// by the stop signal, is dropped.
pub fn parse_stats_blocks<'a>(
    lines: impl IntoIterator<Item = &'a str>,
    nports: usize,
) -> Vec<StatsBlock> {
    let mut blocks = Vec::new();
    let mut cur: Option<StatsBlock> = None;
    let mut port: Option<PortSample> = None;
    let mut have_tx_pps = false;
    let finish_port =
        |cur: &mut Option<StatsBlock>, port: &mut Option<PortSample>, have_tx_pps: &mut bool| {
            if let (Some(b), Some(p)) = (cur.as_mut(), port.take()) {
                if *have_tx_pps {
                    b.ports.push(p);
                }
            }
            *have_tx_pps = false;
        };
    for (i, line) in lines.into_iter().enumerate() {
        if line.contains("Port statistics ====") {
            finish_port(&mut cur, &mut port, &mut have_tx_pps);
            if let Some(b) = cur.take() {
                blocks.push(b);
            }
            cur = Some(StatsBlock {
                line: i,
                ports: Vec::new(),
            });
            continue;
        }
        if cur.is_none() {
            continue;
        }
        if let Some(rest) = line
            .trim()
            .strip_prefix("######################## NIC statistics for port")
        {
            finish_port(&mut cur, &mut port, &mut have_tx_pps);
            let n = rest.split_whitespace().next().and_then(|n| n.parse().ok());
            port = n.map(|port| PortSample {
                port,
                ..Default::default()
            });
            continue;
        }
        if line.contains("Telling cores to stop") || line.contains("Forward statistics") {
            finish_port(&mut cur, &mut port, &mut have_tx_pps);
            if let Some(b) = cur.take() {
                blocks.push(b);
            }
            continue;
        }
        let Some(p) = port.as_mut() else { continue };
        let kv = pairs(line);
        if let Some(v) = get(&kv, "RX-packets") {
            p.rx_packets = v;
        }
        if let Some(v) = get(&kv, "TX-packets") {
            p.tx_packets = v;
        }
        if let Some(v) = get(&kv, "Rx-pps") {
            p.rx_pps = v;
        }
        if let Some(v) = get(&kv, "Tx-pps") {
            p.tx_pps = v;
            have_tx_pps = true;
        }
    }
    finish_port(&mut cur, &mut port, &mut have_tx_pps);
    if let Some(b) = cur.take() {
        blocks.push(b);
    }
    blocks.retain(|b| b.ports.len() == nports);
    blocks
}

/// The accumulated totals testpmd prints when it stops.
pub fn parse_forward_totals(out: &str) -> Option<ForwardTotals> {
    let mut it = out
        .lines()
        .skip_while(|l| !l.contains("Accumulated forward statistics for all ports"));
    it.next()?;
    let rx = pairs(it.next()?);
    let tx = pairs(it.next()?);
    Some(ForwardTotals {
        rx_packets: get(&rx, "RX-packets")?,
        rx_dropped: get(&rx, "RX-dropped")?,
        tx_packets: get(&tx, "TX-packets")?,
        tx_dropped: get(&tx, "TX-dropped")?,
    })
}

/// The reason EAL or testpmd gave for exiting early (`Cause: ...`).
pub fn fatal_cause(out: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Cause:"))
        .map(|c| c.trim().to_owned())
}

/// Cumulative TX samples (all ports) for [`crate::stats::window_rate`],
/// each block timed by the arrival of its header line.
pub fn samples(blocks: &[StatsBlock], line_times: &[f64]) -> Vec<Sample> {
    blocks
        .iter()
        .filter_map(|b| {
            Some(Sample {
                t: *line_times.get(b.line)?,
                packets: b.tx_packets(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MACSWAP_64: &str = include_str!("../tests/fixtures/testpmd_macswap_64.txt");
    const IO_1518: &str = include_str!("../tests/fixtures/testpmd_io_1518.txt");
    const MEMPOOL_ERROR: &str = include_str!("../tests/fixtures/testpmd_mempool_error.txt");

    #[test]
    fn macswap_output_gives_cumulative_and_rate_blocks() {
        let blocks = parse_stats_blocks(MACSWAP_64.lines(), 2);
        assert_eq!(blocks.len(), 2, "{blocks:#?}");
        // First block: forwarding just started; testpmd has no rate yet.
        assert_eq!(blocks[0].ports[0].tx_pps, 0);
        assert_eq!(
            blocks[1].ports[0],
            PortSample {
                port: 0,
                rx_packets: 27892320,
                tx_packets: 27487296,
                rx_pps: 13741638,
                tx_pps: 13741622,
            }
        );
        assert_eq!(blocks[1].ports[1].port, 1);
        assert_eq!(blocks[1].ports[1].tx_pps, 13741695);
        assert!(blocks[1].tx_packets() > blocks[0].tx_packets());
    }

    #[test]
    fn io_output_at_1518_bytes() {
        let blocks = parse_stats_blocks(IO_1518.lines(), 2);
        assert_eq!(blocks.len(), 3);
        let pps: Vec<u64> = blocks
            .iter()
            .map(|b| b.ports.iter().map(|p| p.tx_pps).sum())
            .collect();
        assert_eq!(pps, [0, 8775976 + 8775963, 7059076 + 7059084]);
        let t = parse_forward_totals(IO_1518).unwrap();
        assert_eq!(t.rx_packets, 58166528);
        assert_eq!(t.tx_packets, 58166528);
        assert_eq!(t.tx_dropped, 0);
    }

    #[test]
    fn final_forward_statistics_are_not_a_stats_block() {
        // The per-port "Forward statistics" after the stop carry RX-packets
        // lines too; they must not extend the last block.
        let blocks = parse_stats_blocks(MACSWAP_64.lines(), 2);
        let t = parse_forward_totals(MACSWAP_64).unwrap();
        assert!(t.tx_packets >= blocks[1].tx_packets());
    }

    #[test]
    fn a_block_cut_short_by_the_stop_signal_is_dropped() {
        let cut: Vec<&str> = IO_1518.lines().take(95).collect();
        assert_eq!(parse_stats_blocks(cut, 2).len(), 2);
    }

    #[test]
    fn samples_are_timed_by_header_lines() {
        let blocks = parse_stats_blocks(IO_1518.lines(), 2);
        let times: Vec<f64> = (0..IO_1518.lines().count()).map(|i| i as f64).collect();
        let s = samples(&blocks, &times);
        assert_eq!(s.len(), 3);
        assert_eq!(s[1].t, blocks[1].line as f64);
        assert_eq!(s[2].packets, blocks[2].tx_packets());
    }

    #[test]
    fn eal_exit_cause_is_reported() {
        assert_eq!(
            fatal_cause(MEMPOOL_ERROR).as_deref(),
            Some("Creation of mbuf pool for socket 0 failed: No buffer space available")
        );
        assert_eq!(fatal_cause(MACSWAP_64), None);
        assert!(parse_stats_blocks(MEMPOOL_ERROR.lines(), 2).is_empty());
    }

    #[test]
    fn command_matches_the_sluice_setup() {
        let setup = Setup {
            lcores: "0,1".into(),
            main_lcore: 0,
            mem_mb: 512,
            devices: [
                "net_null0,copy=1,size=64".into(),
                "net_null1,copy=1,size=64".into(),
            ],
            mbufs: 16383,
            mbuf_cache: 256,
            burst: 32,
            ring_desc: 1024,
        };
        let c = command("dpdk-testpmd", &setup, FwdMode::Macswap, "perf-1-0");
        assert_eq!(
            c.display(),
            "stdbuf -oL dpdk-testpmd -l 0,1 --main-lcore 0 --file-prefix perf-1-0 --no-huge -m 512 \
--no-shconf --vdev net_null0,copy=1,size=64 --vdev net_null1,copy=1,size=64 --no-pci -- \
--forward-mode=macswap --auto-start --stats-period 1 --total-num-mbufs=16383 --mbcache=256 \
--burst=32 --rxd=1024 --txd=1024"
        );
    }
}
