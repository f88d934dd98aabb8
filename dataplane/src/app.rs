//! Bring-up, run and shutdown of the appliance.
//!
//! Order matters and is the one DPDK wants:
//! 1. EAL init (args derived from the config), then the mempool, then the
//!    two ports (configured with one queue pair per worker, started).
//! 2. One [`Worker`] launched per worker lcore; the control thread
//!    (policy, coupons, the punted control packets) beside the main lcore.
//! 3. The main lcore waits for SIGINT/SIGTERM or the requested duration,
//!    printing live counters meanwhile.
//! 4. Stop: raise the flag, wait for every worker, read port counters,
//!    stop and close the ports, then count the pool: in-use must be zero.
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_control::config::{Config, OverPeak, PortConfig, SchedMode, SchedulerConfig};
use sluice_control::coupons::{Coupons, CouponsError};
use sluice_control::policy::store::{StoreError, StoreOptions};
use sluice_control::policy::Policy;
use sluice_control::policy::{PolicyState, Touched};
use sluice_control::server::{ControlServer, Dataplane, PuntedFrame, ServerError};
use thiserror::Error;

use crate::classify::StaticRules;
use crate::dpdk::{self, DpdkError, Eal, Mempool, Port, PortSetup};
use crate::flow::{FlowTable, FlowTableConfig, FlowTableError};
use crate::mirror::Mirror;
use crate::punt::{PuntRings, PuntRules};
use crate::sched::{CodelConfig, MeterTable, SchedConfig, SchedError, Scheduler, WorkerMeters};
use crate::stats::{Direction, PortReport, RunReport, WorkerCounters};
use crate::tables::{Table, TableError, TablesConfig};
use crate::worker::{Lane, LaneSched, Pipeline, PuntPath, Worker};

/// A failure while bringing the appliance up or running it.
#[derive(Debug, Error)]
pub enum AppError {
    #[error(transparent)]
    Dpdk(#[from] DpdkError),
    #[error("{source}; EAL arguments were: {args}")]
    Eal { source: DpdkError, args: String },
    #[error("EAL has worker lcores {found:?} but the config asks for {wanted:?}; do not pass -l/--lcores after `--`")]
    Lcores { wanted: Vec<u32>, found: Vec<u32> },
    #[error("cannot install signal handler: {0}")]
    Signal(std::io::Error),
    #[error("policy store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Control(#[from] ServerError),
    #[error(transparent)]
    Coupons(#[from] CouponsError),
    #[error("flow table: {0}")]
    Flows(#[from] FlowTableError),
    #[error("policy tables: {0}")]
    Tables(#[from] TableError),
    #[error("scheduler: {0}")]
    Sched(#[from] SchedError),
    #[error("worker on lcore {lcore} failed with code {code}")]
    Worker { lcore: u32, code: i32 },
}

/// How one run behaves, beyond the config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// EAL arguments given after `--` on the command line.
    pub extra_eal: Vec<String>,
    /// Print live counters this often.
    pub stats_interval: Option<Duration>,
    /// Stop by itself after this long (as if SIGTERM had arrived).
    pub duration: Option<Duration>,
    /// Created once the ports are started and the workers launched;
    /// removed at shutdown.
    pub ready_file: Option<PathBuf>,
}

/// Runs the appliance until a signal (or `opts.duration`), then shuts down
/// and returns the final report.
pub fn run(cfg: &Config, opts: &RunOptions) -> Result<RunReport, AppError> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(AppError::Signal)?;
    }

    // The durable policy is loaded and the control socket bound before any
    // DPDK resource exists, so a bad store or a second instance fails fast.
    let (mut policy, loaded) = Policy::open(&cfg.control.state_dir, StoreOptions::default())?;
    log::info!(
        "policy loaded from {}: seq {} ({:?})",
        cfg.control.state_dir.display(),
        policy.state().seq(),
        loaded
    );
    let mut coupons = Coupons::open(
        &cfg.coupons,
        &cfg.coupons.keys_dir(&cfg.control),
        &cfg.control.state_dir,
    )?;
    let mut server = ControlServer::bind(&cfg.control.socket)?;

    let args = cfg.eal_args("sluice", std::process::id(), &opts.extra_eal);
    log::info!("EAL arguments: {}", args.join(" "));
    let eal = Eal::init(&args).map_err(|source| AppError::Eal {
        source,
        args: args.join(" "),
    })?;
    let found = dpdk::worker_lcores();
    if found != cfg.workers.cores {
        return Err(AppError::Lcores {
            wanted: cfg.workers.cores.clone(),
            found,
        });
    }

    let m = &cfg.mempool;
    let pool = Arc::new(Mempool::new("sluice_pool", m.mbufs, m.cache, m.data_room)?);
    let (sub_dev, up_dev) = cfg.devices();
    let queues = cfg.workers.cores.len() as u16;
    let mut ports = Vec::with_capacity(2);
    for (dev, pc) in [
        (&sub_dev, &cfg.ports.subscriber),
        (&up_dev, &cfg.ports.upstream),
    ] {
        let mut port = Port::by_name(dev.port_name())?;
        let setup = PortSetup {
            queues,
            rx_desc: pc.rx_desc,
            tx_desc: pc.tx_desc,
        };
        port.configure(setup, &pool)?;
        port.start()?;
        ports.push(port);
    }
    for p in &ports {
        if let Ok(l) = p.link() {
            log::info!(
                "port {} ({}): link {} {} Mbit/s",
                p.name(),
                p.id(),
                if l.up { "up" } else { "down" },
                l.speed_mbps
            );
        }
    }

    // The stored policy is in the workers' tables before any packet moves.
    let meter_table = MeterTable::new(cfg.tables.meters);
    let mirror = Mirror::load(
        TablesConfig {
            // The policy has no row keyed by the subscriber for a provider.
            sp_address_capacity: 1,
            coupon_capacity: cfg.tables.coupons,
            login_capacity: cfg.tables.logins,
            seed: dpdk::rdtsc() | 1,
            ..TablesConfig::default()
        },
        Arc::clone(&meter_table),
        policy.state(),
    )?;
    log::info!(
        "policy tables: {} coupon and {} login bindings published ({} MB preallocated)",
        mirror.writer().len(Table::Coupon),
        mirror.writer().len(Table::Login),
        mirror.writer().memory_bytes() >> 20
    );
    let rules = Arc::new(StaticRules::from_config(&cfg.rules));
    let rule_names: Vec<String> = rules.names().map(str::to_owned).collect();
    let hz = dpdk::tsc_hz();
    let flow_cfg = FlowTableConfig {
        capacity: cfg.flows.capacity,
        idle_timeout: cfg.flows.idle_timeout_secs as u64 * hz,
        closing_timeout: cfg.flows.closing_timeout_secs as u64 * hz,
        seed: dpdk::rdtsc() | 1,
    };
    // Control packets (coupon redemptions, DNS answers) to the control
    // thread, its answers back.
    let rings = Arc::new(PuntRings::default());
    let punt_rules = PuntRules {
        redeem_port: cfg.coupons.redeem_port,
        snoop_dns: cfg.coupons.snoop_dns,
    };
    // Built here, on the main lcore, so a bad size fails before any worker starts.
    let mut pipelines = Vec::new();
    for _ in &cfg.workers.cores {
        pipelines.push(Some(
            Pipeline::new(
                Arc::clone(&rules),
                mirror.reader(),
                FlowTable::new(flow_cfg)?,
                // Buckets of 50 ms of each rate: TCP through a policer needs room
                // for a window's burst.
                WorkerMeters::new(Arc::clone(&meter_table), 50_000_000),
                cfg.scheduler.over_peak == OverPeak::Drop,
                1e9 / hz as f64,
            )
            .with_punt(PuntPath {
                rules: punt_rules,
                rings: Arc::clone(&rings),
                pool: Arc::clone(&pool),
            }),
        ));
    }

    let started = Instant::now();
    let mut counters = Vec::new();
    let mut launch_error = None;
    for ((q, &lcore), pipeline) in cfg.workers.cores.iter().enumerate().zip(pipelines) {
        let q = q as u16;
        let c = Arc::new(WorkerCounters::new(rules.len()));
        let lane_sched = |port: &PortConfig| -> Result<Option<LaneSched>, AppError> {
            let Some(rate) = port.rate_bps else {
                return Ok(None);
            };
            let sc = sched_config(&cfg.scheduler, rate / u64::from(queues));
            Ok(Some(LaneSched {
                sched: Scheduler::new(sc)?,
                out: dpdk::Burst::new(),
                ns_per_tsc: 1e9 / hz as f64,
                fifo: cfg.scheduler.mode == SchedMode::Fifo,
                passes: 0,
            }))
        };
        let worker = Worker {
            lcore,
            lanes: vec![
                Lane {
                    direction: Direction::Upstream,
                    rx: ports[0].rx_queue(q),
                    tx: ports[1].tx_queue(q),
                    sched: lane_sched(&cfg.ports.upstream)?,
                },
                Lane {
                    direction: Direction::Downstream,
                    rx: ports[1].rx_queue(q),
                    tx: ports[0].tx_queue(q),
                    sched: lane_sched(&cfg.ports.subscriber)?,
                },
            ],
            burst: cfg.workers.burst,
            counters: Arc::clone(&c),
            stop: Arc::clone(&stop),
            pipeline,
            ns_per_tsc: 1e9 / hz as f64,
        };
        if let Err(e) = dpdk::launch(lcore, move || worker.run()) {
            launch_error = Some(e);
            stop.store(true, Ordering::SeqCst);
            break;
        }
        counters.push((lcore, c));
    }
    let control = {
        let stop = Arc::clone(&stop);
        let mut dp = AppDataplane {
            mirror,
            workers: counters.clone(),
            rings: Arc::clone(&rings),
            pool: Arc::clone(&pool),
        };
        std::thread::Builder::new()
            .name("sluice-control".into())
            .spawn(move || server.run_with(&mut policy, Some(&mut coupons), &stop, &mut dp))
            .expect("spawn the control thread")
    };
    if launch_error.is_none() {
        println!(
            "sluice: forwarding {} <-> {} on {} worker(s) (lcores {:?}); Ctrl-C stops",
            ports[0].name(),
            ports[1].name(),
            counters.len(),
            cfg.workers.cores
        );
        if let Some(p) = &opts.ready_file {
            if let Err(e) = std::fs::write(p, format!("{}\n", std::process::id())) {
                log::warn!("cannot write ready file {}: {e}", p.display());
            }
        }
        main_loop(&stop, started, opts, &counters);
        if let Some(p) = &opts.ready_file {
            let _ = std::fs::remove_file(p);
        }
    }

    // Shutdown: workers first, then ports, then the pool check.
    stop.store(true, Ordering::SeqCst);
    if control.join().is_err() {
        log::error!("the control thread panicked");
    }
    let mut worker_error = None;
    for (lcore, _) in &counters {
        let code = dpdk::wait(*lcore);
        if code != 0 {
            worker_error = Some(AppError::Worker {
                lcore: *lcore,
                code,
            });
        }
    }
    let elapsed_secs = started.elapsed().as_secs_f64();
    let mut port_reports = Vec::new();
    for (role, p) in ["subscriber", "upstream"].into_iter().zip(&mut ports) {
        let s = p.stats()?;
        port_reports.push(PortReport::new(role, p.name(), s));
        p.stop();
    }
    drop(ports);
    // What the rings still hold goes back to the pool before it is counted.
    rings.clear();
    let workers: Vec<_> = counters
        .iter()
        .map(|(l, c)| c.snapshot(*l, &rule_names))
        .collect();
    let report = RunReport {
        elapsed_secs,
        ports: port_reports,
        latency: RunReport::latency_of(&workers),
        workers,
        pool_size: pool.size(),
        pool_in_use: pool.in_use(),
    };
    drop(pool);
    drop(eal);
    if let Some(e) = launch_error {
        return Err(e.into());
    }
    if let Some(e) = worker_error {
        return Err(e);
    }
    Ok(report)
}

fn main_loop(
    stop: &AtomicBool,
    started: Instant,
    opts: &RunOptions,
    counters: &[(u32, Arc<WorkerCounters>)],
) {
    let tick = Duration::from_millis(50);
    let mut last_print = started;
    let mut last_totals = [(0u64, 0u64); 2];
    let mut last_sched: [Option<Vec<crate::stats::SchedLevelSnapshot>>; 2] = [None, None];
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(tick);
        let now = Instant::now();
        if opts
            .duration
            .is_some_and(|d| now.duration_since(started) >= d)
        {
            break;
        }
        let Some(every) = opts.stats_interval else {
            continue;
        };
        if now.duration_since(last_print) < every {
            continue;
        }
        let dt = now.duration_since(last_print).as_secs_f64();
        last_print = now;
        let mut line = format!("[{:7.1}s]", now.duration_since(started).as_secs_f64());
        let mut drops = 0;
        for d in Direction::ALL {
            let (mut pk, mut by) = (0u64, 0u64);
            for (_, c) in counters {
                let s = c.lane(d).snapshot(d);
                pk += s.tx_packets;
                by += s.tx_bytes;
                drops += s.tx_full_drops;
            }
            let (lp, lb) = last_totals[d.index()];
            last_totals[d.index()] = (pk, by);
            line.push_str(&format!(
                "  {:<10} {:>12} pkts {:>10.1} kpps {:>9.2} Mbit/s",
                format!("{d:?}").to_lowercase(),
                pk,
                (pk - lp) as f64 / dt / 1e3,
                (by - lb) as f64 * 8.0 / dt / 1e6
            ));
        }
        line.push_str(&format!("  txq-full drops {drops}"));
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        for (d, port) in [
            (Direction::Upstream, "upstream"),
            (Direction::Downstream, "subscriber"),
        ] {
            let Some(now_levels) = crate::stats::sched_totals(counters, d) else {
                continue;
            };
            let prev = last_sched[d.index()].take().unwrap_or_default();
            let mut parts = Vec::new();
            for l in &now_levels {
                let p = prev.get(usize::from(l.level)).cloned().unwrap_or_default();
                let dl = l.since(&p);
                if dl.counters.sent == 0 && dl.counters.dropped_full + dl.counters.dropped_aqm == 0
                {
                    continue;
                }
                let q = dl.sojourn_percentiles(&[0.5, 0.99]);
                parts.push(format!(
                    "L{} {:.1} Mbit/s delay p50 {:.2} p99 {:.2} ms drop {}",
                    l.level,
                    dl.counters.sent_bytes as f64 * 8.0 / dt / 1e6,
                    q[0] as f64 / 1e6,
                    q[1] as f64 / 1e6,
                    dl.counters.dropped_full + dl.counters.dropped_aqm
                ));
            }
            last_sched[d.index()] = Some(now_levels);
            if !parts.is_empty() {
                let _ = writeln!(out, "           egress {port:<10} {}", parts.join(" | "));
            }
        }
        let _ = out.flush();
    }
}

/// What the control thread drives: the mirror of the policy in the
/// workers' tables, and the workers' counters for `stats`.
struct AppDataplane {
    mirror: Mirror,
    workers: Vec<(u32, Arc<WorkerCounters>)>,
    rings: Arc<PuntRings>,
    pool: Arc<Mempool>,
}

impl Dataplane for AppDataplane {
    fn applied(&mut self, state: &PolicyState, touched: &Touched) {
        self.mirror.sync(state, touched);
    }

    fn punted(&mut self, max: usize) -> Vec<PuntedFrame> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(p) = self.rings.to_control.pop() else {
                break;
            };
            out.push(PuntedFrame {
                bytes: p.mbuf.data().to_vec(),
                consumed: p.consumed,
            });
        }
        out
    }

    fn send(&mut self, frame: &[u8]) -> bool {
        self.pool
            .frame(frame)
            .is_some_and(|m| self.rings.replies.push(m).is_ok())
    }

    fn stats(&self) -> Option<serde_json::Value> {
        let w = self.mirror.writer();
        let tables: Vec<serde_json::Value> = Table::ALL
            .iter()
            .map(|&t| {
                serde_json::json!({
                    "table": t.name(),
                    "bindings": w.len(t),
                    "capacity": w.capacity(t),
                })
            })
            .collect();
        let capacity: u64 = Table::ALL.iter().map(|&t| u64::from(w.capacity(t))).sum();
        let snap = w.snapshot();
        // packets, bytes, flows entered, latest entry (TSC) per level.
        let mut levels = [[0u64; 4]; crate::stats::LEVELS];
        let mut classified = std::collections::BTreeMap::<String, u64>::new();
        let (mut reclassified, mut flows) = (0, 0);
        for (lcore, c) in &self.workers {
            let s = c.snapshot(*lcore, &[]).path;
            for l in s.levels {
                if let Some(x) = levels.get_mut(usize::from(l.level)) {
                    x[0] += l.packets;
                    x[1] += l.bytes;
                    x[2] += l.flows_entered;
                    x[3] = x[3].max(l.last_entered_tsc);
                }
            }
            for (k, v) in s.classified {
                *classified.entry(k).or_default() += v;
            }
            reclassified += s.reclassified;
            flows += s.flows.active;
        }
        let levels: Vec<serde_json::Value> = levels
            .iter()
            .enumerate()
            .map(|(i, [p, b, n, at])| {
                serde_json::json!({"level": i, "packets": p, "bytes": b,
                    "flows_entered": n, "last_entered_tsc": at})
            })
            .collect();
        Some(serde_json::json!({
            "tables": tables,
            "memory_bytes": w.memory_bytes(),
            "bytes_per_binding": w.memory_bytes() as u64 / capacity.max(1),
            "snapshot": {
                "generation": snap.generation(),
                "bytes": snap.bytes(),
                "sp_prefixes": snap.sp_prefixes(),
            },
            "mirror": self.mirror.stats(),
            "levels": levels,
            "classified": classified,
            "reclassified": reclassified,
            "flows_active": flows,
            "egress": egress_json(&self.workers),
        }))
    }
}

/// The scheduler of one shaped egress on one worker (its share `rate_bps`
/// of the port's rate).
fn sched_config(c: &SchedulerConfig, rate_bps: u64) -> SchedConfig {
    let mut s = SchedConfig::reference(Some(rate_bps), c.queue_packets);
    s.overhead_bytes = c.overhead_bytes;
    s.codel = CodelConfig {
        target_ns: c.codel_target_us * 1000,
        interval_ns: c.codel_interval_us * 1000,
    };
    if c.mode == SchedMode::Fifo {
        // One tail-drop FIFO holding what all the levels would (the worker
        // puts every packet in best effort).
        let l = &mut s.levels[crate::tables::BEST_EFFORT as usize];
        l.aqm = false;
        l.flow_queues = 1;
        l.max_packets = c.queue_packets * 8;
        l.max_bytes = l.max_packets.saturating_mul(1600);
    }
    s
}

/// Per shaped egress (named by the port it leaves), per level: what the
/// scheduler did and the sojourn percentiles.
fn egress_json(workers: &[(u32, Arc<WorkerCounters>)]) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for (d, port) in [
        (Direction::Upstream, "upstream"),
        (Direction::Downstream, "subscriber"),
    ] {
        let Some(levels) = crate::stats::sched_totals(workers, d) else {
            continue;
        };
        let rows: Vec<serde_json::Value> = levels
            .iter()
            .map(|l| {
                let p = l.sojourn_percentiles(&[0.5, 0.9, 0.99, 1.0]);
                serde_json::json!({
                    "level": l.level,
                    "enqueued": l.counters.enqueued,
                    "sent": l.counters.sent,
                    "sent_bytes": l.counters.sent_bytes,
                    "dropped_full": l.counters.dropped_full,
                    "dropped_aqm": l.counters.dropped_aqm,
                    "depth": l.counters.depth,
                    "sojourn_us": {"p50": p[0] / 1000, "p90": p[1] / 1000, "p99": p[2] / 1000, "max": p[3] / 1000},
                })
            })
            .collect();
        out.insert(port.to_string(), serde_json::Value::Array(rows));
    }
    serde_json::Value::Object(out)
}
