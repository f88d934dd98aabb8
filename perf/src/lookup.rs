//! The `classify` benchmark: what the worker pays per packet to find a
//! flow's treatment, at the scale (1M coupon + 1M login bindings,
//! 4M flows), in process on one core, timed with the TSC.
//!
//! Variants, all over keys in random order (so nearly every table access
//! misses the caches, as on a busy appliance):
//! - **flow hit, one by one**: `FlowTable::lookup` + `TablesReader::is_current`
//!   per packet, the way a worker without batching would;
//! - **flow hit, bulk**: the worker's path: a burst of 32 keys hashed and
//!   their home slots prefetched, then what each key needs next
//!   prefetched (nothing, for a forward hit without a tail, but its
//!   validity line if its stamp is behind the policy epoch), then looked
//!   up and revalidated ([`FlowTable::prefetch`],
//!   [`FlowTable::prefetch_entry`], [`TablesReader::prefetch_stamp`],
//!   [`TablesReader::revalidate`]);
//! - **flow hit, bulk, one binding write per burst**: the same with another
//!   subscriber's binding written before each burst (untimed), so that
//!   every stamp needs its line and a restamp: the update-storm case;
//! - **flow miss**: `TablesReader::classify` of a new flow (once per flow);
//! - **reference**: a read of one random 64-byte line per packet from an
//!   array as large as the flow table, the floor any hash table with data
//!   this size pays without prefetching, and the same read with bulk
//!   prefetching.
//!
//! It also reports the tables' memory per binding, as the appliance
//! computes it and as the process RSS grew.
use std::net::{IpAddr, Ipv4Addr};

use hdrhistogram::Histogram;
use serde::Serialize;
use sluice_dataplane::dpdk::{prefetch, rdtsc};
use sluice_dataplane::flow::{FlowDecision, FlowTable, FlowTableConfig, Probe};
use sluice_dataplane::packet::{ActionSet, Dscp, FlowKey, ReverseRewrite, PROTO_TCP};
use sluice_dataplane::stats::Direction;
use sluice_dataplane::tables::{
    Binding, Grant, Op, PrefixPolicy, Table, TablesConfig, TablesReader, TablesWriter, Validity,
};

const BURST: usize = 32;

/// Cycles per packet of one variant.
#[derive(Debug, Clone, Serialize)]
pub struct LookupResult {
    pub name: &'static str,
    pub p50_cycles: f64,
    pub p99_cycles: f64,
    pub mean_cycles: f64,
}

/// Everything the scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct LookupReport {
    pub coupons: u32,
    pub logins: u32,
    pub flows: u32,
    pub results: Vec<LookupResult>,
    pub insert_per_sec: f64,
    /// What the tables report ([`TablesWriter::memory_bytes`]) per binding
    /// of capacity.
    pub bytes_per_binding: f64,
    /// Process RSS growth while building and filling the tables, per
    /// binding.
    pub rss_bytes_per_binding: f64,
    /// Flow table bytes per flow of capacity (RSS growth).
    pub rss_bytes_per_flow: f64,
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// A tiny deterministic generator (xorshift*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn subscriber(i: u32) -> IpAddr {
    // Coupons on 10/8, logins on 11/8.
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
}

fn flow_key(rng: &mut Rng, bindings: u32) -> FlowKey {
    let r = rng.next();
    let sub = subscriber((r as u32) % (2 * bindings));
    let dst = IpAddr::V4(Ipv4Addr::from(0xc633_0000 | ((r >> 32) as u32 & 0xffff)));
    FlowKey::new(
        (sub, 1024 + (r >> 48) as u16 % 60000),
        (dst, 443),
        PROTO_TCP,
        0,
        Direction::Upstream,
    )
    .expect("same family")
}

fn percentiles(name: &'static str, h: &Histogram<u64>, total: f64, n: usize) -> LookupResult {
    LookupResult {
        name,
        p50_cycles: h.value_at_quantile(0.5) as f64 / 100.0,
        p99_cycles: h.value_at_quantile(0.99) as f64 / 100.0,
        mean_cycles: total / n as f64,
    }
}

/// Times `bursts` bursts of `f` (which handles keys `[i, i + BURST)`),
/// returning cycles per packet.
fn timed(name: &'static str, bursts: usize, n: usize, f: impl FnMut(usize)) -> LookupResult {
    timed_after(name, bursts, n, || {}, f)
}

/// [`timed`], with `before` run untimed before each burst.
fn timed_after(
    name: &'static str,
    bursts: usize,
    n: usize,
    mut before: impl FnMut(),
    mut f: impl FnMut(usize),
) -> LookupResult {
    let mut h = Histogram::<u64>::new_with_bounds(1, 100_000_000, 3).expect("bounds");
    let mut total = 0f64;
    for b in 0..bursts {
        let base = (b * BURST) % (n - BURST);
        before();
        let t0 = rdtsc();
        f(base);
        let c = (rdtsc() - t0) as f64 / BURST as f64;
        total += c;
        let _ = h.record(((c * 100.0) as u64).clamp(1, 100_000_000));
    }
    percentiles(name, &h, total, bursts)
}

/// Builds the tables and flows and measures every variant.
pub fn run(bindings: u32, flows: u32, bursts: usize) -> LookupReport {
    let rss0 = rss_bytes();
    let mut w = TablesWriter::new(TablesConfig {
        sp_address_capacity: 1,
        coupon_capacity: bindings,
        login_capacity: bindings,
        ..TablesConfig::default()
    })
    .expect("table sizes");
    w.publish(&PrefixPolicy {
        tiers: vec![Default::default(); 4],
        ..Default::default()
    })
    .expect("policy");
    let started = std::time::Instant::now();
    let mut ops = Vec::with_capacity(10_000);
    for i in 0..2 * bindings {
        let (table, grant) = if i < bindings {
            (
                Table::Coupon,
                Grant::Level {
                    level: 1,
                    actions: ActionSet {
                        dscp: Dscp::new(46),
                        ..Default::default()
                    },
                },
            )
        } else {
            (Table::Login, Grant::Tier((i % 4) as u16))
        };
        ops.push(Op::Upsert {
            table,
            subscriber: subscriber(i),
            binding: Binding {
                grant,
                meter: None,
                only_to: None,
            },
        });
        if ops.len() == 10_000 {
            w.apply(&ops).expect("fits");
            ops.clear();
        }
    }
    w.apply(&ops).expect("fits");
    let insert_per_sec = f64::from(2 * bindings) / started.elapsed().as_secs_f64();
    let rss1 = rss_bytes();
    let mut reader: TablesReader = w.reader();

    let mut table: FlowTable = FlowTable::new(FlowTableConfig {
        capacity: flows.next_power_of_two(),
        idle_timeout: u64::MAX / 4,
        closing_timeout: u64::MAX / 8,
        seed: 0x5eed,
    })
    .expect("flow table");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut keys = Vec::with_capacity(flows as usize);
    while keys.len() < flows as usize {
        let k = flow_key(&mut rng, bindings);
        let c = reader.classify(&k);
        let actions = c.decision.actions;
        let d = FlowDecision::new(
            &actions,
            c.decision.level,
            false,
            c.decision.meter.unwrap_or(sluice_dataplane::flow::NO_METER),
            c.stamp,
        );
        if table
            .insert(
                k,
                ReverseRewrite::for_forward(&k, &actions),
                actions,
                d,
                0,
                1,
            )
            .is_ok()
        {
            keys.push(k);
        }
    }
    let rss2 = rss_bytes();
    eprintln!(
        "classify: {} bindings and {} flows in place after {:.1} s; measuring",
        2 * bindings,
        keys.len(),
        started.elapsed().as_secs_f64()
    );
    // Look the flows up in another random order than they were inserted.
    for i in (1..keys.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        keys.swap(i, j);
    }
    let n = keys.len();
    let mut results = Vec::new();
    let mut hits = 0u64;
    results.push(timed("flow hit, one by one", bursts, n, |base| {
        for k in &keys[base..base + BURST] {
            if let Some(hit) = table.lookup(k, 0, 2) {
                if reader.is_current(hit.decision.stamp()) {
                    hits += 1;
                }
            }
        }
    }));
    // The worker's path: a burst's home slots prefetched, then what each
    // key needs next (and the validity line of a stamp behind the epoch),
    // then each flow looked up, its stamp checked and, if only the epoch
    // moved, restamped.
    let mut restamped = 0u64;
    let mut bulk = |table: &mut FlowTable, reader: &TablesReader, base: usize| {
        let burst = &keys[base..base + BURST];
        let mut probes: [Probe; BURST] = std::array::from_fn(|i| table.prefetch(&burst[i]));
        for p in probes.iter_mut() {
            if let Some(d) = table.prefetch_entry(p) {
                reader.prefetch_stamp(d.stamp());
            }
        }
        for p in &probes {
            if let Some((d, handle)) = table
                .lookup_probed(p, 0, 2)
                .map(|hit| (hit.decision, hit.handle))
            {
                match reader.revalidate(d.stamp()) {
                    Validity::Current => hits += 1,
                    Validity::Restamped => {
                        hits += 1;
                        restamped += 1;
                        table.set_decision(handle, d.with_stamp(reader.restamp(d.stamp())));
                    }
                    Validity::Stale => {}
                }
            }
        }
    };
    results.push(timed(
        "flow hit, bulk (the worker's path)",
        bursts,
        n,
        |base| bulk(&mut table, &reader, base),
    ));
    // The same while bindings change: one write per burst (another
    // subscriber's binding re-rated), as in an update storm of ~300k
    // writes/s against a core forwarding ~10 Mpps. Every flow then reads
    // its validity line and is restamped.
    let storm_binding = |i: u32| Binding {
        grant: Grant::Level {
            level: 1,
            actions: ActionSet {
                dscp: Dscp::new(if i.is_multiple_of(2) { 46 } else { 34 }),
                ..Default::default()
            },
        },
        meter: None,
        only_to: None,
    };
    let mut writes = 0u32;
    let table_cell = std::cell::RefCell::new(&mut table);
    let reader_cell = std::cell::RefCell::new(&mut reader);
    results.push(timed_after(
        "flow hit, bulk, one binding write per burst",
        bursts,
        n,
        || {
            writes = writes.wrapping_add(1);
            let sub = subscriber(bindings - 1 - writes % 1024);
            w.upsert(Table::Coupon, sub, &storm_binding(writes))
                .expect("fits");
            reader_cell.borrow_mut().refresh();
        },
        |base| bulk(&mut table_cell.borrow_mut(), &reader_cell.borrow(), base),
    ));
    eprintln!("classify: {restamped} hits restamped after a write");
    assert!(hits > 0, "no flow hit");
    let mut misses = 0u64;
    results.push(timed(
        "flow miss: classify (1M coupons + 1M logins)",
        bursts / 8,
        n,
        |base| {
            for k in &keys[base..base + BURST] {
                let mut k = *k;
                k.src_port ^= 1;
                misses += u64::from(reader.classify(&k).decision.level);
            }
        },
    ));
    std::hint::black_box(misses);
    // The floor: one random line per packet from an array the flow
    // table's size.
    let lines: Vec<[u64; 8]> = vec![[1; 8]; (rss2 - rss1).max(64 << 20) as usize / 64];
    let idx: Vec<usize> = (0..n)
        .map(|_| (rng.next() as usize) % lines.len())
        .collect();
    let mut sum = 0u64;
    results.push(timed("reference: 1 random line read", bursts, n, |base| {
        for &i in &idx[base..base + BURST] {
            sum = sum.wrapping_add(lines[i][0]);
        }
    }));
    results.push(timed(
        "reference: 1 random line read, prefetched in bulk",
        bursts,
        n,
        |base| {
            for &i in &idx[base..base + BURST] {
                prefetch(&lines[i]);
            }
            for &i in &idx[base..base + BURST] {
                sum = sum.wrapping_add(lines[i][0]);
            }
        },
    ));
    std::hint::black_box(sum);
    let total = f64::from(2 * bindings);
    LookupReport {
        coupons: bindings,
        logins: bindings,
        flows: n as u32,
        results,
        insert_per_sec,
        bytes_per_binding: w.memory_bytes() as f64 / total,
        rss_bytes_per_binding: rss1.saturating_sub(rss0) as f64 / total,
        rss_bytes_per_flow: rss2.saturating_sub(rss1) as f64 / f64::from(flows.next_power_of_two()),
    }
}
