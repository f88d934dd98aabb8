//! `sluice`: the appliance. Parses arguments, loads the config, runs the
//! data plane, prints the final counters and maps the outcome to an exit
//! code (0 ok, 1 runtime error, 2 bad usage or config, 3 packets or buffers
//! unaccounted for at exit).
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sluice_control::config::{Config, DEFAULT_TOML};
use sluice_dataplane::app::{self, RunOptions};

/// mimalloc rather than glibc's malloc for the control thread's batches:
/// a 10k-row update request allocates and frees tens of thousands of small
/// rows, and glibc's trimming returned multi-megabyte buffers to the
/// kernel only to fault them in again on the next request. `sluice-perf
/// control` measured the control path about 1.3x faster per row with it.
/// DPDK's own memory (mbufs, rings) does not come from here, and workers
/// do not allocate on the fast path. It never returns freed memory to the
/// kernel (`dpdk::allocator_keep_freed_memory`): doing so interrupted the
/// workers with TLB shootdowns.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sluice: a transparent DPDK bump-in-the-wire that gives each packet the
/// treatment its owner paid for.
///
/// EAL arguments: lcores, the port devices and a per-process file prefix are
/// derived from the config. Anything after `--` is passed to EAL unchanged,
/// after the derived arguments, e.g. `sluice -c my.toml -- --log-level=pmd.net.tap:debug`.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// TOML config file. Without it, the embedded default is used (a net_tap
    /// pair `sl-sub`/`sl-up`, one worker on core 1, no hugepages).
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Print the embedded default config (the documented example) and exit.
    #[arg(long)]
    print_default_config: bool,

    /// Validate the config, print the EAL arguments it implies, and exit.
    #[arg(long)]
    check_config: bool,

    /// Print live counters every SECS seconds (0 turns them off).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    stats_interval: f64,

    /// Stop by itself after SECS seconds, as if SIGTERM had arrived.
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,

    /// Create FILE once the ports are started and the workers run (and remove
    /// it at exit). Scripts wait for it before moving net_tap interfaces into
    /// namespaces: the tap PMD configures its interface by name while starting.
    #[arg(long, value_name = "FILE")]
    ready_file: Option<PathBuf>,

    /// Also write the final report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    stats_json: Option<PathBuf>,

    /// EAL arguments, after `--`.
    #[arg(last = true, value_name = "EAL_ARGS")]
    eal: Vec<String>,
}

fn secs(name: &str, v: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v)
        .map_err(|_| anyhow::anyhow!("--{name} {v}: expected a non-negative number of seconds"))
}

enum Failure {
    Usage(anyhow::Error),
    Runtime(anyhow::Error),
    Unaccounted,
}

fn real_main(args: Args) -> Result<(), Failure> {
    if args.print_default_config {
        print!("{DEFAULT_TOML}");
        return Ok(());
    }
    let cfg = match &args.config {
        Some(p) => Config::load(p),
        None => Ok(Config::embedded_default()),
    }
    .map_err(|e| Failure::Usage(e.into()))?;
    let stats_interval = secs("stats-interval", args.stats_interval).map_err(Failure::Usage)?;
    let duration = args
        .duration
        .map(|d| secs("duration", d))
        .transpose()
        .map_err(Failure::Usage)?;
    if args.check_config {
        println!(
            "config ok; EAL arguments: {}",
            cfg.eal_args("sluice", std::process::id(), &args.eal)
                .join(" ")
        );
        return Ok(());
    }
    let opts = RunOptions {
        extra_eal: args.eal,
        stats_interval: (!stats_interval.is_zero()).then_some(stats_interval),
        duration,
        ready_file: args.ready_file,
    };
    let report = app::run(&cfg, &opts).map_err(|e| Failure::Runtime(e.into()))?;
    println!("{report}");
    if let Some(path) = &args.stats_json {
        let json = serde_json::to_string_pretty(&report).expect("report serialises");
        std::fs::write(path, json)
            .with_context(|| format!("writing --stats-json {}", path.display()))
            .map_err(Failure::Runtime)?;
    }
    if !report.conserved() || !report.pool_full() {
        return Err(Failure::Unaccounted);
    }
    Ok(())
}

fn main() -> ExitCode {
    sluice_dataplane::dpdk::allocator_keep_freed_memory();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    match real_main(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => {
            eprintln!("sluice: error: {e:#}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("sluice: error: {e:#}");
            ExitCode::from(1)
        }
        Err(Failure::Unaccounted) => {
            eprintln!(
                "sluice: error: packets or buffers unaccounted for at exit (see the report above)"
            );
            ExitCode::from(3)
        }
    }
}
