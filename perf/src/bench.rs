//! Running scenarios: measuring the appliance and its peers with the same
//! cores, devices, pool and burst settings, interleaved round by round, and
//! turning the runs into reports.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::machine::{clock_ticks, CpuAccount, Machine, OtherLoad};
use crate::process::{self, CommandSpec, Line, Verdict};
use crate::qos_sched;
use crate::report::{fmt_opt, ScenarioReport, Table};
use crate::sluice;
use crate::sluice_report::{self, FinalReport, LatencySummary};
use crate::stats::{self, Sample, Summary};
use crate::svg;
use crate::testpmd::{self, FwdMode};

/// How the runner measures; shared by every scenario.
#[derive(Debug, Clone)]
pub struct Options {
    /// Interleaved rounds per measurement; the median is reported.
    pub rounds: usize,
    /// Length of the steady-state window of each run, in seconds.
    pub window_secs: f64,
    /// Forwarding start-up excluded before the window, in seconds.
    pub warmup_secs: f64,
    /// Frame sizes of the `sizes` scenario.
    pub sizes: Vec<u32>,
    /// testpmd engines compared at each size.
    pub size_peers: Vec<FwdMode>,
    pub sluice_bin: PathBuf,
    pub testpmd_bin: String,
    pub qos_sched_src: PathBuf,
    /// Where the plots (`sizes.svg`, `congestion.svg`) are written: the
    /// directory of RESULTS.md, which links them by name.
    pub plot_dir: PathBuf,
    /// Scratch space for configs and the qos_sched build.
    pub work_dir: PathBuf,
    /// Rows per request of the `updates` storm.
    pub storm_rows: u32,
}

/// Cores, memory and pool settings used for every tool.
pub const MAIN_LCORE: u32 = 0;
pub const WORKER_LCORE: u32 = 1;
pub const MEM_MB: u32 = 512;
pub const MBUFS: u32 = 16383;
pub const MBUF_CACHE: u32 = 256;
pub const BURST: u32 = 32;
pub const RING_DESC: u32 = 1024;

/// A forwarder under measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tool {
    Sluice,
    Testpmd(FwdMode),
    /// Sluice on the net_pcap TCP corpus, no rules (bare bridge).
    SluicePcapBridge,
    /// Sluice on the net_pcap TCP corpus with a DSCP rule matching every
    /// packet (parse, flow lookup, rewrite, incremental checksum).
    SluicePcapDscp,
    /// testpmd on the net_pcap TCP corpus.
    TestpmdPcap(FwdMode),
    /// testpmd on the full-pipeline corpus's devices.
    TestpmdPipeline(FwdMode),
    /// Sluice's full pipeline on the pipeline corpus
    /// ([`crate::corpus::PIPELINE_MIX`]): populated policy tables (1M
    /// coupons + 1M logins, a coupon per corpus subscriber with a DSCP
    /// rewrite and a meter, an SP allocation with a port remap and an MSS
    /// clamp), the upstream shaped far above what one core forwards, so
    /// every packet is enqueued and scheduled.
    SluicePcapFull,
    /// The same, the upstream shaped to this many bits/s.
    SluicePcapShaped(u64),
}

impl Tool {
    pub fn label(self) -> String {
        match self {
            Tool::Sluice => "sluice".into(),
            Tool::Testpmd(m) => format!("testpmd {}", m.name()),
            Tool::SluicePcapBridge => "sluice bridge".into(),
            Tool::SluicePcapDscp => "sluice + DSCP rule".into(),
            Tool::TestpmdPcap(m) | Tool::TestpmdPipeline(m) => format!("testpmd {}", m.name()),
            Tool::SluicePcapFull => "sluice full pipeline".into(),
            Tool::SluicePcapShaped(r) => format!("sluice shaped {:.2} Gbit/s", r as f64 / 1e9),
        }
    }
}

/// Flows in the `rewrite` corpus (and the `parse` frames).
pub const REWRITE_FLOWS: u32 = 1024;

/// Flows in the full-pipeline corpus (`pipeline`, `congestion`, `updates`).
pub const CORPUS_FLOWS: u32 = crate::corpus::PIPELINE_MIX.total();

/// The net_pcap devices replaying the TCP corpus on the subscriber port
/// (forever) into an upstream port with nothing to send. Both tx sides
/// write to /dev/null, so every tool pays the same PMD cost.
fn pcap_devices(corpus: &Path, empty: &Path) -> [String; 2] {
    [
        format!(
            "net_pcap0,rx_pcap={},infinite_rx=1,tx_pcap=/dev/null",
            corpus.display()
        ),
        format!("net_pcap1,rx_pcap={},tx_pcap=/dev/null", empty.display()),
    ]
}

/// One run's result.
#[derive(Debug, Clone)]
pub struct Run {
    pub rate: stats::WindowRate,
    pub command: String,
    /// Sluice's `--stats-json` report (latency, queueing delay); `None`
    /// for the peers, or when Sluice left none (a warning says why).
    pub report: Option<FinalReport>,
}

/// Coupon subscribers of the full-pipeline corpus whose coupon is premium
/// (the first ones); the others' is best effort.
pub const PREMIUM_FLOWS: u32 = crate::corpus::PIPELINE_MIX.coupon_premium;

/// The name (config, socket, store) of the full-pipeline runs.
pub const FULL_PIPELINE: &str = "sluice-full";
/// Marks a populated store as complete; renamed whenever what
/// [`Bench::full_pipeline`] puts in the store changes, so that an older
/// store is rebuilt.
pub const POPULATED_MARKER: &str = ".populated-v2-coupon-login-sp";
/// The full pipeline's upstream shaper when it must not limit: far above
/// what one core forwards, so every packet is enqueued and scheduled.
pub const FULL_PIPELINE_RATE: u64 = 400_000_000_000;

/// Measures tools and keeps the commands it ran.
pub struct Bench<'a> {
    pub opts: &'a Options,
    pub machine: &'a Machine,
    pub commands: Vec<String>,
    /// Configs written for the tools, for the record (title, text).
    pub inputs: Vec<(String, String)>,
    runs: u32,
    checked_configs: Vec<PathBuf>,
    /// The upstream rate of the next Sluice run.
    rate: Option<u64>,
    /// The full pipeline's median Mpps, once `pipeline` (or `congestion`)
    /// has measured it: `congestion` shapes the upstream to half of it.
    pub full_pipeline_mpps: Option<f64>,
}

fn null_devices(size: u32) -> [String; 2] {
    [
        format!("net_null0,copy=1,size={size}"),
        format!("net_null1,copy=1,size={size}"),
    ]
}

impl<'a> Bench<'a> {
    pub fn new(opts: &'a Options, machine: &'a Machine) -> Bench<'a> {
        Bench {
            opts,
            machine,
            commands: Vec::new(),
            inputs: Vec::new(),
            runs: 0,
            checked_configs: Vec::new(),
            rate: None,
            full_pipeline_mpps: None,
        }
    }

    fn file_prefix(&mut self, tool: &str) -> String {
        self.runs += 1;
        format!("perf-{tool}-{}-{}", std::process::id(), self.runs)
    }

    /// The `[control]` section for a Sluice config in the scratch dir.
    pub fn control_toml(&self, name: &str) -> String {
        let d = &self.opts.work_dir;
        format!(
            "\n[control]\nsocket = \"{}\"\nstate_dir = \"{}\"\n",
            d.join(format!("{name}.sock")).display(),
            d.join(format!("{name}-state")).display()
        )
    }

    /// The policy store of the full-pipeline runs (written once per work
    /// dir; the marker's name changes with its contents): 1M coupons and 1M
    /// logins (the tables' scale; the corpus's login flows come from among
    /// these logins), a coupon per corpus coupon subscriber, and the SP
    /// allocation of the corpus's SP flows. See [`crate::corpus::policy_rows`].
    fn populated_store(&mut self, name: &str) -> Result<()> {
        use crate::corpus::{bulk_coupon, bulk_login, policy_rows, PIPELINE_MIX, POPULATED_LOGINS};
        use sluice_control::policy::{parse_request, Policy, Request, StoreOptions};
        let dir = self.opts.work_dir.join(format!("{name}-state"));
        let done = dir.join(POPULATED_MARKER);
        let describe = |dir: &Path| {
            (
                format!("Policy store {}", dir.display()),
                crate::corpus::describe_policy(&PIPELINE_MIX),
            )
        };
        if done.exists() {
            if !self.inputs.iter().any(|i| i.0.starts_with("Policy store")) {
                self.inputs.push(describe(&dir));
            }
            return Ok(());
        }
        let _ = std::fs::remove_dir_all(&dir);
        let (mut policy, _) = Policy::open(&dir, StoreOptions::default())
            .with_context(|| format!("opening the policy store {}", dir.display()))?;
        let mut commit = |table: &str, entries: Vec<String>| -> Result<()> {
            let line = format!(
                r#"{{"op":"add","table":"{table}","entries":[{}]}}"#,
                entries.join(",")
            );
            let Ok(Request::Apply { changes, .. }) = parse_request(&line) else {
                bail!("bad generated request for table {table}");
            };
            policy
                .commit(&changes)
                .map_err(|e| anyhow::anyhow!("populating the store: {e}"))?;
            Ok(())
        };
        // The tier first: logins need it.
        let rows = policy_rows(&PIPELINE_MIX);
        for (table, entries) in rows.iter().filter(|r| r.0 == "tier") {
            commit(table, entries.clone())?;
        }
        for (table, row) in [
            ("coupon", bulk_coupon as fn(u32) -> String),
            ("login", bulk_login),
        ] {
            let mut batch = Vec::with_capacity(10_000);
            for i in 0..POPULATED_LOGINS {
                batch.push(row(i));
                if batch.len() == 10_000 {
                    commit(table, std::mem::take(&mut batch))?;
                }
            }
            commit(table, batch)?;
        }
        for (table, entries) in rows.iter().filter(|r| r.0 != "tier") {
            commit(table, entries.clone())?;
        }
        std::fs::write(&done, "")?;
        self.inputs.push(describe(&dir));
        Ok(())
    }

    /// The full-pipeline corpus (written once).
    fn pipeline_corpus(&mut self) -> Result<(PathBuf, PathBuf)> {
        let mix = crate::corpus::PIPELINE_MIX;
        let corpus = self.opts.work_dir.join("pipeline-corpus.pcap");
        let empty = self.empty_pcap()?;
        if !corpus.exists() {
            crate::corpus::write_pcap(&corpus, &mix.frames())
                .with_context(|| format!("writing {}", corpus.display()))?;
            self.inputs.push((
                format!("Corpus {}", corpus.display()),
                crate::corpus::describe_mix(&mix),
            ));
        }
        Ok((corpus, empty))
    }

    /// An empty pcap: the upstream port has nothing to send.
    fn empty_pcap(&mut self) -> Result<PathBuf> {
        let empty = self.opts.work_dir.join("empty.pcap");
        if !empty.exists() {
            crate::corpus::write_pcap(&empty, &[])
                .with_context(|| format!("writing {}", empty.display()))?;
        }
        Ok(empty)
    }

    /// The TCP corpus for the `rewrite` scenario (written once).
    fn corpus(&mut self) -> Result<(PathBuf, PathBuf)> {
        let corpus = self.opts.work_dir.join("tcp-corpus.pcap");
        let empty = self.empty_pcap()?;
        if !corpus.exists() {
            crate::corpus::write_pcap(&corpus, &crate::corpus::tcp_flows(REWRITE_FLOWS))
                .with_context(|| format!("writing {}", corpus.display()))?;
            self.inputs.push((
                format!("Corpus {}", corpus.display()),
                format!(
                    "{REWRITE_FLOWS} TCP/IPv4 flows, one 64-byte frame each (ACK, 6 bytes of payload, \
                     valid checksums), 10.x.y.z:10000+ -> 198.18.0.2:80, replayed with infinite_rx=1"
                ),
            ));
        }
        Ok((corpus, empty))
    }

    /// The devices and config tail of the full-pipeline runs (the corpus
    /// and the populated store are written once).
    pub fn full_pipeline(&mut self) -> Result<([String; 2], String)> {
        let (corpus, empty) = self.pipeline_corpus()?;
        let mut extra = self.control_toml(FULL_PIPELINE);
        self.populated_store(FULL_PIPELINE)?;
        extra.push_str(
            "\n[scheduler]\nqueue_packets = 512\n[tables]\ncoupons = 2097152\nlogins = 1048576\n",
        );
        Ok((pcap_devices(&corpus, &empty), extra))
    }

    /// The control socket of the run named `name`.
    pub fn socket_of(&self, name: &str) -> PathBuf {
        self.opts.work_dir.join(format!("{name}.sock"))
    }

    /// Writes (and has sluice check) the config of a run; returns its path.
    pub fn sluice_config(
        &mut self,
        name: &str,
        devices: [String; 2],
        extra: String,
        rate: Option<u64>,
    ) -> Result<PathBuf> {
        self.rate = rate;
        let r = self.write_config(name, devices, extra);
        self.rate = None;
        r
    }

    /// One run of `tool` at `size` bytes.
    pub fn measure(&mut self, tool: Tool, size: u32) -> Result<Run> {
        let run = match tool {
            Tool::Sluice => {
                let extra = self.control_toml(&format!("sluice-{size}"));
                self.measure_sluice(&format!("sluice-{size}"), null_devices(size), extra)
            }
            Tool::Testpmd(mode) => self.measure_testpmd(mode, null_devices(size)),
            Tool::SluicePcapBridge | Tool::SluicePcapDscp => {
                let (corpus, empty) = self.corpus()?;
                let name = if tool == Tool::SluicePcapDscp {
                    "sluice-dscp"
                } else {
                    "sluice-pcap"
                };
                let mut extra = self.control_toml(name);
                if tool == Tool::SluicePcapDscp {
                    extra.push_str("\n[[rules]]\nname = \"ef\"\ndscp = 46\n");
                }
                self.measure_sluice(name, pcap_devices(&corpus, &empty), extra)
            }
            Tool::TestpmdPcap(mode) => {
                let (corpus, empty) = self.corpus()?;
                self.measure_testpmd(mode, pcap_devices(&corpus, &empty))
            }
            Tool::TestpmdPipeline(mode) => {
                let (corpus, empty) = self.pipeline_corpus()?;
                self.measure_testpmd(mode, pcap_devices(&corpus, &empty))
            }
            Tool::SluicePcapFull | Tool::SluicePcapShaped(_) => {
                let (devices, extra) = self.full_pipeline()?;
                let rate = match tool {
                    Tool::SluicePcapShaped(r) => r,
                    _ => FULL_PIPELINE_RATE,
                };
                self.rate = Some(rate);
                let r = self.measure_sluice(FULL_PIPELINE, devices, extra);
                self.rate = None;
                r
            }
        }?;
        self.commands.push(run.command.clone());
        Ok(run)
    }

    fn window(
        &self,
        samples: &[Sample],
        what: &str,
        out: &process::Finished,
    ) -> Result<stats::WindowRate> {
        stats::window_rate(samples, self.opts.warmup_secs, self.opts.window_secs * 0.75)
            .with_context(|| {
                format!(
                    "{what}: no steady-state window; its output ended with:\n{}",
                    out.tail(12)
                )
            })
    }

    fn measure_sluice(&mut self, name: &str, devices: [String; 2], extra: String) -> Result<Run> {
        let cfg = self.write_config(name, devices, extra)?;
        self.run_sluice(&cfg)
    }

    fn write_config(&mut self, name: &str, devices: [String; 2], extra: String) -> Result<PathBuf> {
        let setup = sluice::Setup {
            main_core: MAIN_LCORE,
            worker_core: WORKER_LCORE,
            mem_mb: MEM_MB,
            devices,
            burst: BURST,
            mbufs: MBUFS,
            mbuf_cache: MBUF_CACHE,
            ring_desc: RING_DESC,
            extra,
            upstream_rate_bps: self.rate,
            // The full pipeline (shaped) runs with coupon punting on.
            punt: self.rate.is_some(),
        };
        let rate_tag = self.rate.map(|r| format!("-{r}")).unwrap_or_default();
        let cfg = self.opts.work_dir.join(format!("{name}{rate_tag}.toml"));
        if !self.checked_configs.contains(&cfg) {
            let text = sluice::config_toml(&setup);
            std::fs::write(&cfg, &text).with_context(|| format!("writing {}", cfg.display()))?;
            self.inputs
                .push((format!("Sluice config {}", cfg.display()), text));
            let check = CommandSpec::new(self.opts.sluice_bin.to_string_lossy()).args([
                "-c",
                &cfg.to_string_lossy(),
                "--check-config",
            ]);
            let f = process::run(
                &check,
                Duration::from_secs(30),
                Duration::from_secs(2),
                |_| Verdict::Continue,
            )?;
            if !f.status.success() {
                bail!(
                    "sluice rejects the benchmark config {}:\n{}",
                    cfg.display(),
                    f.tail(8)
                );
            }
            self.checked_configs.push(cfg.clone());
        }
        Ok(cfg)
    }

    fn run_sluice(&mut self, cfg: &Path) -> Result<Run> {
        // Live lines come once a second from launch; the window starts one
        // warm-up after the first and must span `window_secs`.
        let duration = 1.0 + self.opts.warmup_secs + self.opts.window_secs + 0.6;
        let spec = sluice::command(&self.opts.sluice_bin, cfg, duration);
        // A report left by an earlier run of the same config must not pass
        // for this one's.
        let report_path = sluice::report_path(cfg);
        let _ = std::fs::remove_file(&report_path);
        let f = process::run(
            &spec,
            Duration::from_secs_f64(duration + 30.0),
            Duration::from_secs(10),
            |_| Verdict::Continue,
        )?;
        if !f.status.success() {
            bail!(
                "`{}` failed ({}):\n{}",
                spec.display(),
                f.status,
                f.tail(12)
            );
        }
        let samples = sluice::samples(f.stdout.iter().map(|l| (l.t, l.text.as_str())));
        let rate = self.window(&samples, "sluice", &f)?;
        let report = match sluice_report::read(&report_path) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("  warning: no latency figures from this run: {e}");
                None
            }
        };
        Ok(Run {
            rate,
            command: spec.display(),
            report,
        })
    }

    fn measure_testpmd(&mut self, mode: FwdMode, devices: [String; 2]) -> Result<Run> {
        let setup = testpmd::Setup {
            lcores: format!("{MAIN_LCORE},{WORKER_LCORE}"),
            main_lcore: MAIN_LCORE,
            mem_mb: MEM_MB,
            devices,
            mbufs: MBUFS,
            mbuf_cache: MBUF_CACHE,
            burst: BURST,
            ring_desc: RING_DESC,
        };
        let prefix = self.file_prefix("testpmd");
        let spec = testpmd::command(&self.opts.testpmd_bin, &setup, mode, &prefix);
        let nports = 2;
        let (warmup, window) = (self.opts.warmup_secs, self.opts.window_secs);
        let mut first: Option<f64> = None;
        let mut start: Option<f64> = None;
        let mut closing_block = false;
        let mut tx_pps_lines = 0;
        // Stop once the block that closes the window has all its ports.
        let on_line = |l: &Line| {
            if l.text.contains("Port statistics ====") {
                let f = *first.get_or_insert(l.t);
                if start.is_none() && l.t >= f + warmup - 0.05 {
                    start = Some(l.t);
                }
                if start.is_some_and(|s| l.t - s >= window - 0.05) {
                    closing_block = true;
                    tx_pps_lines = 0;
                }
            } else if closing_block && l.text.trim_start().starts_with("Tx-pps:") {
                tx_pps_lines += 1;
                if tx_pps_lines == nports {
                    return Verdict::Stop;
                }
            }
            Verdict::Continue
        };
        // testpmd may print a block only every 2 s here (see testpmd.rs).
        let deadline = Duration::from_secs_f64(10.0 + warmup + window + 4.0);
        let f = process::run(&spec, deadline, Duration::from_secs(10), on_line)?;
        let text = f.stdout_text();
        let lines: Vec<&str> = f.stdout.iter().map(|l| l.text.as_str()).collect();
        let times: Vec<f64> = f.stdout.iter().map(|l| l.t).collect();
        let blocks = testpmd::parse_stats_blocks(lines, nports);
        if blocks.len() < 2 {
            let why =
                testpmd::fatal_cause(&format!("{text}{}", f.stderr)).unwrap_or_else(|| f.tail(12));
            bail!("`{}` gave no statistics: {why}", spec.display());
        }
        let rate = self.window(&testpmd::samples(&blocks, &times), "testpmd", &f)?;
        if let Some(t) = testpmd::parse_forward_totals(&text) {
            if t.tx_dropped > 0 {
                eprintln!(
                    "  (testpmd {} dropped {} of {} packets at tx)",
                    mode.name(),
                    t.tx_dropped,
                    t.rx_packets
                );
            }
        }
        Ok(Run {
            rate,
            command: spec.display(),
            report: None,
        })
    }
}

/// Per-tool Mpps of every round, in measurement order.
pub type Rounds = HashMap<(Tool, u32), Vec<f64>>;

/// Sluice's rx → tx latency per direction, of every round that reported it.
pub type LatencyRounds = HashMap<(Tool, u32), Vec<Vec<LatencySummary>>>;

/// What interleaved rounds measured.
#[derive(Debug, Default)]
pub struct Measured {
    pub mpps: Rounds,
    pub latency: LatencyRounds,
    /// The last report of each Sluice tool.
    pub last_report: HashMap<(Tool, u32), FinalReport>,
}

/// A tool's rx → tx latency over its rounds: the median round of the worse
/// direction's p50 and of its p99, ns ([`sluice_report::worst_latency`]).
pub fn latency_figure(rounds: Option<&Vec<Vec<LatencySummary>>>) -> Option<(f64, f64)> {
    let worst: Vec<(u64, u64)> = rounds?
        .iter()
        .filter_map(|dirs| sluice_report::worst_latency(dirs))
        .collect();
    let p50: Vec<f64> = worst.iter().map(|w| w.0 as f64).collect();
    let p99: Vec<f64> = worst.iter().map(|w| w.1 as f64).collect();
    Some((stats::median(&p50)?, stats::median(&p99)?))
}

pub fn run_rounds(bench: &mut Bench, plan: &[(Tool, u32)]) -> Result<Measured> {
    let mut out = Measured::default();
    let rounds = bench.opts.rounds;
    for round in 1..=rounds {
        for &(tool, size) in plan {
            let run = bench
                .measure(tool, size)
                .with_context(|| format!("{} at {size} B, round {round}", tool.label()))?;
            let mpps = stats::mpps(run.rate.pps);
            let lat = run
                .report
                .as_ref()
                .and_then(|r| r.latency.as_deref())
                .and_then(sluice_report::worst_latency)
                .map(|(p50, p99)| {
                    format!(
                        "  rx→tx p50 {:.2} µs p99 {:.2} µs",
                        p50 as f64 / 1e3,
                        p99 as f64 / 1e3
                    )
                })
                .unwrap_or_default();
            eprintln!(
                "  round {round}/{rounds}  {:<16} {size:>5} B  {mpps:7.2} Mpps  ({:.1} s window){lat}",
                tool.label(),
                run.rate.secs
            );
            out.mpps.entry((tool, size)).or_default().push(mpps);
            if let Some(r) = run.report {
                if let Some(l) = &r.latency {
                    out.latency.entry((tool, size)).or_default().push(l.clone());
                }
                out.last_report.insert((tool, size), r);
            }
        }
    }
    Ok(out)
}

/// The 1, 5 and 15 minute load averages, as /proc/loadavg shows them.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

/// Watches how much other work shares the machine during a scenario.
pub struct LoadWatch {
    loadavg: String,
    start: Option<CpuAccount>,
}

/// Above this many CPUs of other work, a scenario's figures are flagged.
pub const BUSY_THRESHOLD_CPUS: f64 = 0.1;

impl LoadWatch {
    pub fn start() -> LoadWatch {
        LoadWatch {
            loadavg: loadavg(),
            start: CpuAccount::now(),
        }
    }

    /// A note for the report; warns on stderr when the machine was busy.
    pub fn finish(&self) -> String {
        let other = self
            .start
            .zip(CpuAccount::now())
            .map(|(a, b)| a.other_load(&b, clock_ticks()));
        let (note, busy) = load_note(&self.loadavg, &loadavg(), other);
        if let (true, Some(o)) = (busy, other) {
            eprintln!(
                "warning: other work used {:.2} CPU (steal {:.2}) during this scenario; \
                 figures are contaminated",
                o.other_cpus, o.steal_cpus
            );
        }
        note
    }
}

/// Waits up to `max` for a 5 s stretch in which other processes use less
/// than [`BUSY_THRESHOLD_CPUS`]. Returns whether it got one.
pub fn wait_quiet(max: Duration) -> bool {
    let until = std::time::Instant::now() + max;
    let ticks = clock_ticks();
    loop {
        let Some(a) = CpuAccount::now() else {
            return false;
        };
        std::thread::sleep(Duration::from_secs(5));
        let Some(b) = CpuAccount::now() else {
            return false;
        };
        let o = a.other_load(&b, ticks);
        if o.other_cpus < BUSY_THRESHOLD_CPUS && o.steal_cpus < BUSY_THRESHOLD_CPUS {
            return true;
        }
        if std::time::Instant::now() >= until {
            eprintln!(
                "  machine still busy ({:.2} CPU of other work); going ahead",
                o.other_cpus
            );
            return false;
        }
        eprintln!(
            "  waiting for a quiet machine: other work uses {:.2} CPU",
            o.other_cpus
        );
    }
}

/// The load note of a scenario, and whether the machine counts as busy.
pub fn load_note(before: &str, after: &str, other: Option<OtherLoad>) -> (String, bool) {
    let mut note = format!(
        "Load average (1/5/15 min) before: {before}; after: {after} (a forwarding core adds ~1)."
    );
    let Some(o) = other else {
        return (note, false);
    };
    note.push_str(&format!(
        " Other processes used {other:.2} CPU on average over the scenario's {secs:.0} s \
         (hypervisor steal {steal:.2} CPU).",
        other = o.other_cpus,
        secs = o.secs,
        steal = o.steal_cpus
    ));
    let busy = o.other_cpus > BUSY_THRESHOLD_CPUS || o.steal_cpus > BUSY_THRESHOLD_CPUS;
    if busy {
        note.push_str(
            " WARNING: the machine was busy with other work, which lands on the \
             forwarding core now and then; these figures are lower and noisier than \
             on a quiet machine.",
        );
    }
    (note, busy)
}

pub fn method_note(opts: &Options) -> String {
    format!(
        "Method: each tool forwards between two net_null ports (copy=1) on worker lcore {WORKER_LCORE} \
         (main lcore {MAIN_LCORE}), no hugepages, {MBUFS} mbufs, cache {MBUF_CACHE}, burst {BURST}. \
         The runner stamps each counter line (sluice `--stats-interval 1`, testpmd `--stats-period 1` \
         blocks) as it arrives; a run's rate is (tx packets summed over both ports at the last line \
         − at the first line ≥ {:.0} s after the first) / the time between those lines, over a \
         ≥ {:.0} s window. Tools run interleaved, {} rounds; the median round is shown. \
         Cycles/packet = measured TSC Hz ÷ packets/s, as the one forwarding core polls all the time.",
        opts.warmup_secs, opts.window_secs, opts.rounds
    )
}

pub fn rounds_note(rounds: &Rounds, order: &[(Tool, u32)]) -> String {
    let parts: Vec<String> = order
        .iter()
        .filter_map(|k| {
            let v = rounds.get(k)?;
            Some(format!(
                "{} {} B: {}",
                k.0.label(),
                k.1,
                v.iter()
                    .map(|x| format!("{x:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
        .collect();
    format!("Mpps per round — {}", parts.join("; "))
}

/// The `forward` scenario.
pub fn forward(bench: &mut Bench) -> Result<ScenarioReport> {
    let size = 64;
    let tools = [
        Tool::Sluice,
        Tool::Testpmd(FwdMode::Macswap),
        Tool::Testpmd(FwdMode::Io),
    ];
    let plan: Vec<(Tool, u32)> = tools.iter().map(|&t| (t, size)).collect();
    let load = LoadWatch::start();
    let measured = run_rounds(bench, &plan)?;
    let rounds = &measured.mpps;
    let sluice_mpps = Summary::of(&rounds[&(Tool::Sluice, size)]).map(|s| s.median);
    let (table, data) = rate_table(
        &measured,
        &tools,
        size,
        bench.machine.tsc_hz,
        ("sluice ÷ tool", "sluice_ratio"),
        |m| sluice_mpps.and_then(|s| stats::ratio(s, m)),
    );
    Ok(ScenarioReport {
        name: "forward".into(),
        title: format!("bare bridge, {size} B frames, one worker core, both directions summed"),
        tables: vec![table],
        notes: vec![
            method_note(bench.opts),
            LATENCY_NOTE.into(),
            rounds_note(rounds, &plan),
            load.finish(),
        ],
        commands: std::mem::take(&mut bench.commands),
        files: vec![],
        inputs: std::mem::take(&mut bench.inputs),
        data: json!(data),
    })
}

/// How the latency columns are measured, for every table that has them.
pub const LATENCY_NOTE: &str = "rx→tx p50/p99: Sluice's own per-packet latency from its \
     `--stats-json` report: the TSC read after the rx burst and again after the tx burst (on a \
     shaped egress, at dequeue), in log buckets (4 per power of two, so within 19 %), each \
     percentile at its bucket's upper bound; over the whole run, start-up included; the worse \
     direction; median of the rounds. A peer's latency cannot be taken that way (\"—\").";

/// One row per tool at `size`: median Mpps, min–max, ns and cycles per
/// packet, `ratio` of the tool's median (header and JSON key given), and
/// Sluice's rx → tx latency (p50, p99).
pub fn rate_table(
    measured: &Measured,
    tools: &[Tool],
    size: u32,
    tsc: f64,
    (ratio_header, ratio_key): (&str, &str),
    ratio: impl Fn(f64) -> Option<f64>,
) -> (Table, Vec<serde_json::Value>) {
    let mut table = Table::new([
        "tool",
        "Mpps",
        "min–max",
        "ns/pkt",
        "cycles/pkt",
        ratio_header,
        "rx→tx p50 µs",
        "p99 µs",
    ]);
    let mut data = Vec::new();
    for &t in tools {
        let Some(s) = measured.mpps.get(&(t, size)).and_then(|r| Summary::of(r)) else {
            continue;
        };
        let pps = s.median * 1e6;
        let r = ratio(s.median);
        let rounds_lat = measured.latency.get(&(t, size));
        let lat = latency_figure(rounds_lat);
        let us = |v: Option<f64>| v.map_or_else(|| "—".to_owned(), |x| format!("{:.2}", x / 1e3));
        table.row([
            t.label(),
            format!("{:.2}", s.median),
            format!("{:.2}–{:.2}", s.min, s.max),
            format!("{:.1}", stats::ns_per_packet(pps)),
            format!("{:.0}", stats::cycles_per_packet(pps, tsc)),
            fmt_opt(r, 2),
            us(lat.map(|l| l.0)),
            us(lat.map(|l| l.1)),
        ]);
        let mut row = json!({
            "tool": t.label(), "size": size, "mpps": s, "ns_per_packet": stats::ns_per_packet(pps),
            "cycles_per_packet": stats::cycles_per_packet(pps, tsc),
            "latency_p50_ns": lat.map(|l| l.0), "latency_p99_ns": lat.map(|l| l.1),
            "latency_rounds": rounds_lat,
        });
        row[ratio_key] = json!(r);
        data.push(row);
    }
    (table, data)
}

/// The `rewrite` scenario: the appliance with a DSCP rule on every packet
/// against the bare bridge, on the same net_pcap TCP corpus, with testpmd
/// io on the same devices as the outside reference.
pub fn rewrite(bench: &mut Bench) -> Result<ScenarioReport> {
    let size = 64;
    let tools = [
        Tool::SluicePcapBridge,
        Tool::SluicePcapDscp,
        Tool::TestpmdPcap(FwdMode::Io),
    ];
    let plan: Vec<(Tool, u32)> = tools.iter().map(|&t| (t, size)).collect();
    let load = LoadWatch::start();
    let measured = run_rounds(bench, &plan)?;
    let rounds = &measured.mpps;
    let bridge = Summary::of(&rounds[&(Tool::SluicePcapBridge, size)]).map(|s| s.median);
    let (table, data) = rate_table(
        &measured,
        &tools,
        size,
        bench.machine.tsc_hz,
        ("÷ sluice bridge", "ratio_to_bridge"),
        |m| bridge.and_then(|b| stats::ratio(m, b)),
    );
    Ok(ScenarioReport {
        name: "rewrite".into(),
        title: format!(
            "DSCP rule on every packet vs the bare bridge: 64 B TCP/IPv4, {REWRITE_FLOWS} flows, \
             net_pcap infinite_rx, one direction, one worker core"
        ),
        tables: vec![table],
        notes: vec![
            "Target: sluice + DSCP rule ÷ sluice bridge ≥ 0.85. With a few DSCP-only static \
             rules (and the policy tables empty) the worker takes its stateless path: it parses \
             every packet, matches the rules, rewrites the DSCP and updates the IPv4 checksum \
             incrementally, with no flow-table lookup."
                .into(),
            method_note(bench.opts).replace(
                "two net_null ports (copy=1)",
                "the two net_pcap ports of the title (corpus in, /dev/null out)",
            ),
            LATENCY_NOTE.into(),
            rounds_note(rounds, &plan),
            load.finish(),
        ],
        commands: std::mem::take(&mut bench.commands),
        files: vec![],
        inputs: std::mem::take(&mut bench.inputs),
        data: json!(data),
    })
}

/// The `parse` scenario: the in-process micro-benchmark.
pub fn parse(bench: &mut Bench) -> Result<ScenarioReport> {
    let load = LoadWatch::start();
    let flows = REWRITE_FLOWS;
    let bursts = 2_000_000;
    let results = crate::micro::run(flows, bursts);
    let floor = results.first().map(|r| r.p50_ns);
    let mut table = Table::new(["variant", "p50 ns/pkt", "p90", "p99", "mean", "p50 − floor"]);
    for r in &results {
        table.row([
            r.name.to_owned(),
            format!("{:.2}", r.p50_ns),
            format!("{:.2}", r.p90_ns),
            format!("{:.2}", r.p99_ns),
            format!("{:.2}", r.mean_ns),
            fmt_opt(floor.map(|f| r.p50_ns - f), 2),
        ]);
    }
    bench.commands.push(format!(
        "sluice-perf parse (in process: {bursts} bursts of 32 over {flows} frames per variant)"
    ));
    Ok(ScenarioReport {
        name: "parse".into(),
        title: "parse + one rewrite + incremental checksum, 64 B TCP/IPv4, in process".into(),
        tables: vec![table],
        notes: vec![
            "Target: parse + one rewrite + incremental checksum ≤ 15 ns per packet. Each burst \
             of 32 packets is timed with Instant; the histogram holds per-packet averages of \
             bursts. The floor row is the cost of touching a packet at all (read 1 byte, write \
             1 byte), measured the same way."
                .into(),
            load.finish(),
        ],
        commands: std::mem::take(&mut bench.commands),
        files: vec![],
        inputs: vec![],
        data: json!(results),
    })
}

/// The `classify` scenario (in process; see [`crate::lookup`]).
pub fn classify(bench: &mut Bench) -> Result<ScenarioReport> {
    let load = LoadWatch::start();
    let (bindings, flows, bursts) = (1 << 20, 4_000_000, 200_000);
    let r = crate::lookup::run(bindings, flows, bursts);
    let hz = bench.machine.tsc_hz;
    let mut table = Table::new(["variant", "p50 cycles/pkt", "p99", "mean", "mean ns/pkt"]);
    for v in &r.results {
        table.row([
            v.name.to_owned(),
            format!("{:.1}", v.p50_cycles),
            format!("{:.1}", v.p99_cycles),
            format!("{:.1}", v.mean_cycles),
            format!("{:.1}", v.mean_cycles / hz * 1e9),
        ]);
    }
    let mut mem = Table::new(["figure", "value"]);
    mem.row([
        "bindings (coupon + login)".to_owned(),
        format!("{} + {}", r.coupons, r.logins),
    ]);
    mem.row(["flows".to_owned(), r.flows.to_string()]);
    mem.row([
        "binding inserts/s (one writer, batches of 10k)".to_owned(),
        format!("{:.0}", r.insert_per_sec),
    ]);
    mem.row([
        "bytes per binding, as the tables report".to_owned(),
        format!("{:.1}", r.bytes_per_binding),
    ]);
    mem.row([
        "bytes per binding, RSS growth".to_owned(),
        format!("{:.1}", r.rss_bytes_per_binding),
    ]);
    mem.row([
        "bytes per flow of capacity, RSS growth".to_owned(),
        format!("{:.1}", r.rss_bytes_per_flow),
    ]);
    bench.commands.push(format!(
        "sluice-perf classify (in process: {bindings} coupon + {bindings} login bindings, {flows} flows, {bursts} bursts of 32 keys in random order)"
    ));
    Ok(ScenarioReport {
        name: "classify".into(),
        title: "flow-table hit and policy lookup at scale, in process, one core".into(),
        tables: vec![table, mem],
        notes: vec![
            "Targets: flow hit (bulk) <= 60 cycles per packet with 1M + 1M bindings and 4M \
             flows; <= 256 bytes per binding. Each burst of 32 keys (random order over all \
             flows) is timed with the TSC; the histogram holds per-packet averages of bursts. \
             The bulk variant is the worker's path: hash a group of keys and prefetch their \
             home slots and the next, then prefetch what each key needs next (nothing for a \
             forward hit without a tail; its validity line if its stamp is behind the policy \
             epoch), then look them up and revalidate the policy stamp (one compare while \
             nothing changed). The table's clock does not move during the \
             measurement, so hits write nothing; on an appliance a hit writes its flow's line \
             at most once per clock quantum (1/65 536 of the idle timeout). The 'one binding \
             write per burst' variant writes another subscriber's binding before each burst \
             (untimed), so every flow's stamp needs its validity line read and is restamped: \
             the cost during an update storm. \
             The reference rows read one random cache line per packet from an array \
             the flow table's size: what any table this large pays per lookup, without and \
             with bulk prefetching. The peer (rte_hash bulk lookup) measured 46-87 cycles on \
             this machine in DESIGN.md."
                .into(),
            load.finish(),
        ],
        commands: std::mem::take(&mut bench.commands),
        files: vec![],
        inputs: vec![],
        data: json!(r),
    })
}

/// The `sizes` scenario.
pub fn sizes(bench: &mut Bench) -> Result<ScenarioReport> {
    let opts = bench.opts;
    let mut tools = vec![Tool::Sluice];
    tools.extend(opts.size_peers.iter().map(|&m| Tool::Testpmd(m)));
    let plan: Vec<(Tool, u32)> = opts
        .sizes
        .iter()
        .flat_map(|&s| tools.iter().map(move |&t| (t, s)))
        .collect();
    let load = LoadWatch::start();
    let measured = run_rounds(bench, &plan)?;
    let rounds = &measured.mpps;
    let med = |t: Tool, s: u32| rounds.get(&(t, s)).and_then(|v| stats::median(v));

    let mut headers = vec!["frame B".to_owned()];
    for t in &tools {
        headers.push(format!("{} Mpps", t.label()));
        headers.push(format!("{} Gbit/s", t.label()));
    }
    for t in &tools[1..] {
        headers.push(format!("sluice ÷ {}", t.label()));
    }
    headers.push("10GbE line Mpps".into());
    let mut table = Table::new(headers);
    let mut data = Vec::new();
    for &size in &opts.sizes {
        let mut row = vec![size.to_string()];
        for &t in &tools {
            let m = med(t, size);
            row.push(fmt_opt(m, 2));
            row.push(fmt_opt(m.map(|m| stats::wire_gbps(m * 1e6, size)), 2));
        }
        for &t in &tools[1..] {
            row.push(fmt_opt(
                med(Tool::Sluice, size)
                    .zip(med(t, size))
                    .and_then(|(a, b)| stats::ratio(a, b)),
                2,
            ));
        }
        row.push(format!(
            "{:.2}",
            stats::mpps(stats::line_rate_pps(10.0, size))
        ));
        table.row(row);
        for &t in &tools {
            data.push(json!({
                "tool": t.label(), "size": size,
                "mpps": rounds.get(&(t, size)).and_then(|v| Summary::of(v)),
                "wire_gbps": med(t, size).map(|m| stats::wire_gbps(m * 1e6, size)),
            }));
        }
    }

    let labels: Vec<String> = opts.sizes.iter().map(|s| s.to_string()).collect();
    let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
    let series = |gbps: bool| -> Vec<svg::Series> {
        let mut v: Vec<svg::Series> = tools
            .iter()
            .zip(colors)
            .map(|(&t, color)| svg::Series {
                label: t.label(),
                color,
                dashed: false,
                values: opts
                    .sizes
                    .iter()
                    .map(|&s| {
                        let m = med(t, s).unwrap_or(f64::NAN);
                        if gbps {
                            stats::wire_gbps(m * 1e6, s)
                        } else {
                            m
                        }
                    })
                    .collect(),
            })
            .collect();
        v.push(svg::Series {
            label: "10 GbE line rate (for scale)".into(),
            color: "#999999",
            dashed: true,
            values: opts
                .sizes
                .iter()
                .map(|&s| {
                    if gbps {
                        10.0
                    } else {
                        stats::mpps(stats::line_rate_pps(10.0, s))
                    }
                })
                .collect(),
        });
        v
    };
    let plot = svg::chart(
        &labels,
        &[
            svg::Panel {
                title: "Packet rate (one worker core)".into(),
                y_label: "Mpps".into(),
                series: series(false),
            },
            svg::Panel {
                title: "Wire throughput (+20 B preamble/IFG)".into(),
                y_label: "Gbit/s".into(),
                series: series(true),
            },
        ],
        &format!(
            "net_null copy=1, both directions summed, median of {} rounds; {}",
            opts.rounds,
            bench.machine.revision()
        ),
    );
    let svg_path = opts.plot_dir.join(SIZES_SVG);
    std::fs::write(&svg_path, plot).with_context(|| format!("writing {}", svg_path.display()))?;

    Ok(ScenarioReport {
        name: "sizes".into(),
        title: "bare bridge by frame size (net_null `size=`), both directions summed".into(),
        tables: vec![table],
        notes: vec![
            method_note(opts),
            "Gbit/s counts each frame's size plus 20 B of preamble, start delimiter and \
             inter-frame gap, as a wire would carry it (the frame size is taken to include the FCS). \
             net_null has no wire: the 10 GbE column only gives scale."
                .into(),
            rounds_note(rounds, &plan),
            load.finish(),
        ],
        commands: std::mem::take(&mut bench.commands),
        files: vec![SIZES_SVG.into()],
        inputs: std::mem::take(&mut bench.inputs),
        data: json!(data),
    })
}

/// The `sizes` plot, in [`Options::plot_dir`].
pub const SIZES_SVG: &str = "sizes.svg";

/// A report that carries no numbers, only why the scenario did not run.
pub fn not_run(bench: &mut Bench, name: &str, title: &str, why: String) -> ScenarioReport {
    ScenarioReport {
        name: name.into(),
        title: title.into(),
        tables: vec![],
        notes: vec![format!("not run: {why}")],
        commands: std::mem::take(&mut bench.commands),
        files: vec![],
        inputs: vec![],
        data: json!({ "ran": false, "why": why }),
    }
}

fn qos_not_run(bench: &mut Bench, why: String) -> ScenarioReport {
    not_run(
        bench,
        "qos_sched",
        "DPDK qos_sched example on net_null",
        why,
    )
}

/// The `qos_sched` scenario.
pub fn qos_sched(bench: &mut Bench) -> Result<ScenarioReport> {
    let opts = bench.opts;
    if let Err(why) = qos_sched::check_prerequisites(&opts.qos_sched_src) {
        return Ok(qos_not_run(bench, why));
    }
    let layout = match qos_sched::plan_layout(bench.machine.nproc) {
        Ok(l) => l,
        Err(why) => return Ok(qos_not_run(bench, why)),
    };
    let dir = opts.work_dir.join("qos_sched");
    qos_sched::copy_sources(&opts.qos_sched_src, &dir).with_context(|| {
        format!(
            "copying {} to {}",
            opts.qos_sched_src.display(),
            dir.display()
        )
    })?;
    let build = qos_sched::build_command(&dir);
    eprintln!("  building qos_sched: {}", build.display());
    let f = process::run(
        &build,
        Duration::from_secs(300),
        Duration::from_secs(5),
        |_| Verdict::Continue,
    )?;
    bench.commands.push(format!(
        "cp -r {} {}",
        opts.qos_sched_src.display(),
        dir.display()
    ));
    bench.commands.push(build.display());
    if !f.status.success() {
        return Ok(qos_not_run(bench, format!("build failed:\n{}", f.tail(10))));
    }
    let stock_path = dir.join("profile.cfg");
    let stock = std::fs::read_to_string(&stock_path)
        .with_context(|| format!("reading {}", stock_path.display()))?;
    let rate = qos_sched::subport_rate(&stock).unwrap_or(1_250_000_000);
    let open_path = dir.join("profile_open.cfg");
    let open = qos_sched::open_profile(&stock, rate);
    std::fs::write(&open_path, &open)?;
    let open_pipe_section: String = open
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("[pipe profile"))
        .take_while(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    bench.inputs.push((
        format!(
            "\"open pipes\" profile: {}/profile.cfg with [pipe profile 0] replaced by",
            opts.qos_sched_src.display()
        ),
        open_pipe_section,
    ));
    let profiles = [("stock profile.cfg", stock_path), ("open pipes", open_path)];

    let devices = null_devices(64);
    let bin = qos_sched::binary(&dir);
    let load = LoadWatch::start();
    let mut tx: HashMap<usize, Vec<f64>> = HashMap::new();
    let mut rx: HashMap<usize, Vec<f64>> = HashMap::new();
    for round in 1..=opts.rounds {
        for (i, (label, profile)) in profiles.iter().enumerate() {
            let prefix = bench.file_prefix("qos");
            let spec = qos_sched::command(&bin, &layout, &devices, &prefix, MBUFS + 1, profile);
            let (warmup, window) = (opts.warmup_secs, opts.window_secs);
            let mut first: Option<f64> = None;
            let on_line = |l: &Line| {
                if l.text.trim_start().starts_with("TX port") {
                    let f = *first.get_or_insert(l.t);
                    // One extra second so that the window start (the first
                    // line after the warm-up) is followed by `window` s.
                    if l.t - f >= warmup + window + 0.95 {
                        return Verdict::Stop;
                    }
                }
                Verdict::Continue
            };
            let deadline = Duration::from_secs_f64(10.0 + warmup + window + 3.0);
            let f = process::run(&spec, deadline, Duration::from_secs(5), on_line)?;
            bench.commands.push(spec.display());
            let lines: Vec<&str> = f.stdout.iter().map(|l| l.text.as_str()).collect();
            let times: Vec<f64> = f.stdout.iter().map(|l| l.t).collect();
            let secs = qos_sched::parse_seconds(lines);
            if secs.len() < 2 {
                let all = format!("{}{}", f.stdout_text(), f.stderr);
                let why = qos_sched::startup_error(&all).unwrap_or_else(|| f.tail(10));
                return Ok(qos_not_run(
                    bench,
                    format!("`{}` did not forward: {why}", spec.display()),
                ));
            }
            let t = bench.window(&qos_sched::tx_samples(&secs, &times), "qos_sched", &f)?;
            let r = bench.window(&qos_sched::rx_samples(&secs, &times), "qos_sched", &f)?;
            eprintln!(
                "  round {round}/{}  qos_sched {label:<18} tx {:8.3} Mpps  rx {:7.2} Mpps",
                opts.rounds,
                stats::mpps(t.pps),
                stats::mpps(r.pps)
            );
            tx.entry(i).or_default().push(stats::mpps(t.pps));
            rx.entry(i).or_default().push(stats::mpps(r.pps));
        }
    }
    let mut table = Table::new([
        "profile",
        "TX Mpps",
        "min–max",
        "RX Mpps",
        "worker cycles/TX pkt",
    ]);
    let mut data = Vec::new();
    for (i, (label, _)) in profiles.iter().enumerate() {
        let (Some(t), Some(r)) = (Summary::of(&tx[&i]), Summary::of(&rx[&i])) else {
            continue;
        };
        // Only meaningful when the scheduler, not a pipe's shaper, limits.
        let cycles = (t.median > 0.01 * r.median)
            .then(|| stats::cycles_per_packet(t.median * 1e6, bench.machine.tsc_hz));
        table.row([
            label.to_string(),
            format!("{:.3}", t.median),
            format!("{:.3}–{:.3}", t.min, t.max),
            format!("{:.2}", r.median),
            fmt_opt(cycles, 0),
        ]);
        data.push(json!({ "profile": label, "tx_mpps": t, "rx_mpps": r, "worker_cycles_per_tx_packet": cycles }));
    }
    let mut notes = vec![
        "qos_sched classifies by packet bytes (outer VLAN → subport, inner VLAN → pipe, \
         destination IP → queue). net_null's frames are all zeros, so every packet lands in \
         subport 0, pipe 0, traffic class 0: one active pipe out of 4096, not the many-pipe \
         load the scheduler is built for."
            .into(),
        format!(
            "stock profile.cfg caps each pipe at 305175 B/s, so TX is that one pipe's shaped rate \
             (305175 / (64 + 24 B overhead) ≈ 3.5 kpps) and the rest is dropped: correct shaping, \
             not a throughput figure. \"open pipes\" raises every pipe rate to the subport rate \
             ({rate} B/s) so the scheduler itself is the limit."
        ),
        "One direction (port 0 → port 1), RX on one core and worker+TX on the other: not \
         comparable 1:1 with the bridge rows. No Sluice ratio: the workloads differ (Sluice's \
         scheduler is measured by `pipeline` and `congestion`)."
            .into(),
    ];
    notes.push(load.finish());
    if let Some(c) = &layout.caveat {
        notes.insert(0, format!("Layout: {c}"));
    }
    Ok(ScenarioReport {
        name: "qos_sched".into(),
        title: "DPDK qos_sched example (rte_sched) on net_null, 64 B".into(),
        tables: vec![table],
        notes,
        commands: std::mem::take(&mut bench.commands),
        files: vec![],
        inputs: std::mem::take(&mut bench.inputs),
        data: json!({ "ran": true, "rows": data }),
    })
}

/// Repository root (the workspace), for the git revision.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_note_names_each_figure_and_flags_a_busy_machine() {
        let o = OtherLoad {
            other_cpus: 0.77,
            steal_cpus: 0.0,
            secs: 266.0,
        };
        let (note, busy) = load_note("1.16 2.07 1.99", "4.09 2.89 2.30", Some(o));
        assert!(busy);
        assert!(
            note.contains("Other processes used 0.77 CPU on average over the scenario's 266 s (hypervisor steal 0.00 CPU)."),
            "{note}"
        );
        assert!(note.contains("WARNING"));
        let quiet = OtherLoad {
            other_cpus: 0.01,
            ..o
        };
        let (note, busy) = load_note("a", "b", Some(quiet));
        assert!(!busy && !note.contains("WARNING"), "{note}");
        let (note, busy) = load_note("a", "b", None);
        assert!(!busy && note.ends_with("adds ~1)."));
    }

    #[test]
    fn tool_labels() {
        assert_eq!(Tool::Sluice.label(), "sluice");
        assert_eq!(Tool::Testpmd(FwdMode::Io).label(), "testpmd io");
    }
}
