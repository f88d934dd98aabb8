//! `sluice-perf`: parses arguments, runs the chosen scenarios, prints a
//! table per scenario, and records the results in RESULTS.md. Exit codes:
//! 0 ok, 1 a measurement failed, 2 bad usage or nothing that can run.
use std::path::PathBuf;
use std::process::ExitCode;

/// The appliance's allocator (see `src/bin/sluice.rs`), so that the
/// in-process scenarios (`control`, `classify`) measure what it runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::time::SystemTime;

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser};
use sluice_perf::bench::{self, Bench, Options};
use sluice_perf::machine::Machine;
use sluice_perf::process::{on_path, shell_quote};
use sluice_perf::report::{self, ScenarioReport};
use sluice_perf::scenario::{self, Availability, Scenario};
use sluice_perf::sluice;
use sluice_perf::testpmd::FwdMode;

/// Benchmark runner for Sluice: runs the appliance and a reference
/// (dpdk-testpmd, qos_sched) side by side, prints the figures and their
/// ratios, and appends them to perf/RESULTS.md.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Scenarios to run: names from the list below, `all` (every available
    /// one), or `list`.
    #[arg(value_name = "SCENARIO", default_value = "list")]
    scenarios: Vec<String>,

    /// Interleaved rounds per measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,

    /// Steady-state window of each run, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 4.0)]
    window: f64,

    /// Start-up excluded before the window, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    warmup: f64,

    /// Frame sizes for `sizes`.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "64,128,256,512,1024,1518"
    )]
    sizes: Vec<u32>,

    /// testpmd engines compared at each size in `sizes` (macswap, io).
    #[arg(long, value_delimiter = ',', default_value = "macswap")]
    size_peers: Vec<String>,

    /// The sluice binary. Default: `sluice` next to this executable.
    #[arg(long, value_name = "PATH", env = "SLUICE_BIN")]
    sluice: Option<PathBuf>,

    /// The dpdk-testpmd binary.
    #[arg(
        long,
        value_name = "PATH",
        env = "TESTPMD_BIN",
        default_value = "dpdk-testpmd"
    )]
    testpmd: String,

    /// qos_sched example sources (copied to a scratch dir and built there).
    #[arg(long, value_name = "DIR", default_value = sluice_perf::qos_sched::DEFAULT_SRC)]
    qos_sched_src: PathBuf,

    /// Results file to append to.
    #[arg(long, value_name = "FILE", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/RESULTS.md"))]
    results: PathBuf,

    /// Before each scenario, wait up to SECS for other processes to leave
    /// the machine alone (under 0.1 CPU for 5 s); 0 does not wait.
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    wait_quiet: f64,

    /// Rows per request of the `updates` storm: each request is one
    /// journal record and one `fdatasync`, so larger requests sync less
    /// often per row.
    #[arg(long, value_name = "ROWS", default_value_t = sluice_perf::updates::STORM_BATCH,
          value_parser = clap::value_parser!(u32).range(1000..=i64::from(sluice_perf::updates::MAX_STORM_ROWS)))]
    storm_rows: u32,

    /// Do not append to the results file.
    #[arg(long)]
    no_record: bool,

    /// Also write every figure as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

fn scenario_list() -> String {
    let mut s = String::from("Scenarios:\n");
    for sc in Scenario::ALL {
        s.push_str(&sc.help_line());
        s.push('\n');
    }
    s
}

fn parse_peers(names: &[String]) -> Result<Vec<FwdMode>, String> {
    names
        .iter()
        .map(|n| match n.as_str() {
            "macswap" => Ok(FwdMode::Macswap),
            "io" => Ok(FwdMode::Io),
            other => Err(format!("--size-peers {other}: expected macswap or io")),
        })
        .collect()
}

/// Where the sluice binary is and when it was built, with a warning when
/// it is older than the checked-out commit (then the recorded git revision
/// does not describe what was measured).
fn binary_line(bin: &std::path::Path) -> String {
    let built = std::fs::metadata(bin).and_then(|m| m.modified()).ok();
    let head = sluice_perf::process::output_of(
        "git",
        &[
            "-C",
            &bench::repo_root().to_string_lossy(),
            "log",
            "-1",
            "--format=%ct",
        ],
    )
    .and_then(|s| s.parse::<u64>().ok())
    .map(|secs| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs));
    let mut line = format!("{}", bin.display());
    if let Some(b) = built {
        line.push_str(&format!(", built {}", report::utc_stamp(b)));
        if head.is_some_and(|h| b < h) {
            line.push_str(
                " — OLDER than the HEAD commit: the git revision recorded here is not what ran",
            );
        }
    }
    line
}

enum Failure {
    Usage(String),
    Run(anyhow::Error),
}

fn real_main(args: Args) -> Result<(), Failure> {
    if args.scenarios.iter().any(|s| s == "list") {
        print!("{}", scenario_list());
        return Ok(());
    }
    let wanted = scenario::resolve(&args.scenarios).map_err(Failure::Usage)?;
    let explicit_all = args.scenarios.iter().any(|s| s == "all");
    let mut runnable = Vec::new();
    for s in wanted {
        match s.availability() {
            Availability::Available => runnable.push(s),
            Availability::NeedsFeature(f) => {
                println!("{}: not yet available: needs {f}", s.name());
            }
            Availability::NotHere(why) => println!("{}: not run: {why}", s.name()),
        }
    }
    if runnable.is_empty() {
        return Err(Failure::Usage(
            "nothing to run: the requested scenarios cannot run (yet, or here)".into(),
        ));
    }
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if args.rounds == 0 || !positive(args.window) || !(args.warmup == 0.0 || positive(args.warmup))
    {
        return Err(Failure::Usage(
            "--rounds must be ≥ 1, --window > 0 and --warmup ≥ 0".into(),
        ));
    }
    let size_peers = parse_peers(&args.size_peers).map_err(Failure::Usage)?;
    let needs_sluice = runnable.iter().any(|s| {
        matches!(
            s,
            Scenario::Forward
                | Scenario::Sizes
                | Scenario::Rewrite
                | Scenario::Pipeline
                | Scenario::Congestion
                | Scenario::Updates
                | Scenario::Pktgen
        )
    });
    let needs_testpmd = runnable.iter().any(|s| {
        matches!(
            s,
            Scenario::Forward | Scenario::Sizes | Scenario::Rewrite | Scenario::Pipeline
        )
    });
    let sluice_bin = sluice::locate(args.sluice.as_deref());
    let sluice_bin = match (needs_sluice, sluice_bin) {
        (true, Err(e)) => return Err(Failure::Usage(e)),
        (_, Ok(p)) => p,
        (false, Err(_)) => PathBuf::from("sluice"),
    };
    if needs_testpmd && !on_path(&args.testpmd) {
        return Err(Failure::Usage(format!(
            "{} not found (Debian package dpdk); pass --testpmd PATH",
            args.testpmd
        )));
    }
    if needs_testpmd && !on_path("stdbuf") {
        return Err(Failure::Usage(
            "stdbuf (coreutils) is needed to time testpmd's output line by line".into(),
        ));
    }

    let work_dir = std::env::temp_dir().join(format!("sluice-perf-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("creating {}", work_dir.display()))
        .map_err(Failure::Run)?;
    let results_dir = args
        .results
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let opts = Options {
        rounds: args.rounds,
        window_secs: args.window,
        warmup_secs: args.warmup,
        sizes: args.sizes.clone(),
        size_peers,
        sluice_bin,
        testpmd_bin: args.testpmd.clone(),
        qos_sched_src: args.qos_sched_src.clone(),
        plot_dir: results_dir,
        work_dir: work_dir.clone(),
        storm_rows: args.storm_rows,
    };

    let started = SystemTime::now();
    let machine = Machine::probe(&bench::repo_root());
    println!("machine: {}", machine.summary());
    let mut extra = Vec::new();
    if needs_sluice {
        let line = binary_line(&opts.sluice_bin);
        println!("sluice:  {line}");
        extra.push(format!("sluice binary: {line}"));
    }
    let mut bench = Bench::new(&opts, &machine);
    let mut reports: Vec<ScenarioReport> = Vec::new();
    let mut failure = None;
    for s in &runnable {
        if args.wait_quiet > 0.0 {
            bench::wait_quiet(
                std::time::Duration::try_from_secs_f64(args.wait_quiet)
                    .unwrap_or(std::time::Duration::from_secs(86_400)),
            );
        }
        eprintln!("running {} ...", s.name());
        let r = match s {
            Scenario::Forward => bench::forward(&mut bench),
            Scenario::Sizes => bench::sizes(&mut bench),
            Scenario::QosSched => bench::qos_sched(&mut bench),
            Scenario::Parse => bench::parse(&mut bench),
            Scenario::Rewrite => bench::rewrite(&mut bench),
            Scenario::Classify => bench::classify(&mut bench),
            Scenario::Pipeline => sluice_perf::pipeline::pipeline(&mut bench),
            Scenario::Congestion => sluice_perf::pipeline::congestion(&mut bench),
            Scenario::Updates => sluice_perf::updates::updates(&mut bench),
            Scenario::Control => sluice_perf::control_path::control(&mut bench),
            Scenario::Pktgen => sluice_perf::pktgen::pktgen(&mut bench),
            _ => unreachable!("only available scenarios are run"),
        };
        match r {
            Ok(rep) => {
                println!("\n{}", rep.to_text());
                reports.push(rep);
            }
            Err(e) => {
                eprintln!("{} failed: {e:#}", s.name());
                failure = Some(e.context(format!("scenario {}", s.name())));
                break;
            }
        }
    }
    if explicit_all {
        for s in Scenario::ALL {
            let why = match s.availability() {
                Availability::Available => continue,
                Availability::NeedsFeature(f) => format!("not yet available: needs {f}"),
                Availability::NotHere(why) => format!("not run: {why}"),
            };
            {
                reports.push(ScenarioReport {
                    name: s.name().into(),
                    title: s.about().into(),
                    tables: vec![],
                    notes: vec![why],
                    commands: vec![],
                    files: vec![],
                    inputs: vec![],
                    data: serde_json::Value::Null,
                });
            }
        }
    }
    let _ = std::fs::remove_dir_all(&work_dir);

    let measured = reports
        .iter()
        .any(|r| !r.tables.is_empty() || !r.commands.is_empty());
    if !args.no_record && measured {
        let invocation = std::iter::once("sluice-perf".to_owned())
            .chain(std::env::args().skip(1).map(|a| shell_quote(&a)))
            .collect::<Vec<_>>()
            .join(" ");
        let entry = report::results_entry(started, &machine, &invocation, &extra, &reports);
        report::append_results(&args.results, &entry)
            .with_context(|| format!("appending to {}", args.results.display()))
            .map_err(Failure::Run)?;
        println!("appended to {}", args.results.display());
    }
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "date": report::utc_stamp(started),
            "machine": machine,
            "scenarios": reports.iter().map(|r| serde_json::json!({
                "name": r.name, "data": r.data, "notes": r.notes, "commands": r.commands,
            })).collect::<Vec<_>>(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc).expect("JSON"))
            .with_context(|| format!("writing {}", path.display()))
            .map_err(Failure::Run)?;
    }
    match failure {
        Some(e) => Err(Failure::Run(e)),
        None => Ok(()),
    }
}

fn main() -> ExitCode {
    // As `sluice` does: the in-process scenarios measure its allocator
    // settings too.
    sluice_dataplane::dpdk::allocator_keep_freed_memory();
    let cmd = Args::command().after_help(scenario_list());
    let args = match Args::from_arg_matches(&cmd.get_matches()) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    match real_main(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => {
            eprintln!("sluice-perf: error: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Run(e)) => {
            eprintln!("sluice-perf: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
