//! Counters. Each worker is the single writer of its own [`WorkerCounters`]
//! (updated once per burst, never per packet); the main lcore reads them
//! with relaxed loads for live and final reports.
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crossbeam_utils::CachePadded;
use serde::{Deserialize, Serialize};

use crate::dpdk::PortStats;
use crate::flow::FlowCounters;
use crate::packet::{Action, Outcome, ParseError};
use crate::tables::Source;

/// Which way a packet crosses the appliance.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Received on the subscriber port, sent out of the upstream port.
    #[default]
    Upstream,
    /// Received on the upstream port, sent out of the subscriber port.
    Downstream,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Upstream, Direction::Downstream];

    pub fn index(self) -> usize {
        self as usize
    }
}

/// One direction's counters on one worker.
#[derive(Default)]
pub struct LaneCounters {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Packets the egress PMD refused (its ring was full); freed and counted.
    pub tx_full_drops: AtomicU64,
    /// Packets the egress scheduler dropped (a full level, AQM).
    pub sched_drops: AtomicU64,
    /// Packets still queued in the scheduler at shutdown, freed.
    pub drained: AtomicU64,
    /// Control packets consumed (handed to the control thread, not
    /// forwarded: coupon redemptions), including those dropped because the
    /// ring to the control thread was full (`punt_drops`).
    pub punted: AtomicU64,
    /// Copies for the control thread not made (ring full, pool empty), and
    /// consumed packets dropped for a full ring.
    pub punt_drops: AtomicU64,
    /// Copies handed to the control thread (DNS answers); the originals
    /// are forwarded.
    pub punt_copies: AtomicU64,
    /// Frames the control thread sent out of this lane's port (redemption
    /// answers): sent, but never received.
    pub injected: AtomicU64,
    /// Per packet, rx to tx ([`latency_bucket`]), on an unshaped egress
    /// (a shaped one counts it in its sojourn histograms).
    pub latency: LatencyHistogram,
}

/// Latency buckets: four per power of two of nanoseconds above 64 ns
/// (within 19 % of any value), up to about 19 hours: the sojourn buckets'
/// scheme, 16 times finer.
pub struct LatencyHistogram(pub [AtomicU64; SOJOURN_BUCKETS]);

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

/// The latency bucket of `ns`.
#[inline]
pub fn latency_bucket(ns: u64) -> usize {
    sojourn_bucket(ns.saturating_mul(16))
}

/// The smallest latency, in ns, that falls into `bucket`.
pub fn latency_bucket_floor(bucket: usize) -> u64 {
    sojourn_bucket_floor(bucket) / 16
}

/// The first latency, in ns, above `bucket` (the next used bucket's floor).
pub fn latency_upper_ns(bucket: usize) -> u64 {
    let floor = latency_bucket_floor(bucket);
    (bucket + 1..SOJOURN_BUCKETS)
        .map(latency_bucket_floor)
        .find(|&f| f > floor)
        .unwrap_or(u64::MAX >> 8)
}

/// Percentiles (ns) of bucket counts, each at its bucket's upper bound
/// (`upper`), so a percentile is never understated: the `q` quantile is the
/// upper bound of the first bucket whose cumulative count reaches
/// `ceil(q * total)` (at least one packet). A walk over the buckets, no
/// allocation beyond the answer: `stats` computes this for every level of
/// every shaped egress on each request (an HDR histogram per call made a
/// `stats` round trip ~0.1 ms slower).
fn bucket_percentiles(buckets: &[u64], upper: fn(usize) -> u64, qs: &[f64]) -> Vec<u64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return vec![0; qs.len()];
    }
    qs.iter()
        .map(|&q| {
            let target = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).clamp(1, total);
            let mut seen = 0u64;
            buckets
                .iter()
                .position(|&n| {
                    seen += n;
                    seen >= target
                })
                .map_or(0, upper)
        })
        .collect()
}

/// One direction's rx-to-tx latency over a run (also read back from
/// `--stats-json` by the benchmark runner).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub direction: Direction,
    pub packets: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
}

impl LatencySummary {
    /// From the merged buckets of one direction.
    pub fn of(direction: Direction, buckets: &[u64]) -> LatencySummary {
        let q = bucket_percentiles(buckets, latency_upper_ns, &[0.5, 0.9, 0.99, 0.999, 1.0]);
        LatencySummary {
            direction,
            packets: buckets.iter().sum(),
            p50_ns: q[0],
            p90_ns: q[1],
            p99_ns: q[2],
            p999_ns: q[3],
            max_ns: q[4],
        }
    }
}

/// A single-writer add: the owning worker is the only writer, so a plain
/// load+store avoids a locked read-modify-write on the fast path.
#[inline]
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

impl LaneCounters {
    #[inline]
    pub fn add_rx(&self, packets: u64, bytes: u64) {
        bump(&self.rx_packets, packets);
        bump(&self.rx_bytes, bytes);
    }

    #[inline]
    pub fn add_tx(&self, packets: u64, bytes: u64, full_drops: u64) {
        bump(&self.tx_packets, packets);
        bump(&self.tx_bytes, bytes);
        bump(&self.tx_full_drops, full_drops);
    }

    #[inline]
    pub fn add_sched_drops(&self, n: u64) {
        if n > 0 {
            bump(&self.sched_drops, n);
        }
    }

    pub fn add_drained(&self, n: u64) {
        bump(&self.drained, n);
    }

    /// `consumed` packets taken off the path (of which `dropped` found the
    /// ring full), `copies` copies made and `copy_drops` not made.
    #[inline]
    pub fn add_punts(&self, consumed: u64, dropped: u64, copies: u64, copy_drops: u64) {
        if consumed | dropped | copies | copy_drops != 0 {
            bump(&self.punted, consumed);
            bump(&self.punt_drops, dropped + copy_drops);
            bump(&self.punt_copies, copies);
        }
    }

    #[inline]
    pub fn add_injected(&self, n: u64) {
        bump(&self.injected, n);
    }

    /// `n` packets sent `ns` after they were received.
    #[inline]
    pub fn add_latency(&self, ns: u64, n: u64) {
        if let Some(c) = self.latency.0.get(latency_bucket(ns)) {
            bump(c, n);
        }
    }

    /// The latency buckets, read.
    pub fn latency_buckets(&self) -> Vec<u64> {
        self.latency.0.iter().map(|c| c.load(Relaxed)).collect()
    }

    pub fn snapshot(&self, direction: Direction) -> LaneSnapshot {
        LaneSnapshot {
            direction,
            rx_packets: self.rx_packets.load(Relaxed),
            rx_bytes: self.rx_bytes.load(Relaxed),
            tx_packets: self.tx_packets.load(Relaxed),
            tx_bytes: self.tx_bytes.load(Relaxed),
            tx_full_drops: self.tx_full_drops.load(Relaxed),
            sched_drops: self.sched_drops.load(Relaxed),
            drained: self.drained.load(Relaxed),
            punted: self.punted.load(Relaxed),
            punt_drops: self.punt_drops.load(Relaxed),
            punt_copies: self.punt_copies.load(Relaxed),
            injected: self.injected.load(Relaxed),
        }
    }
}

/// Counters of the packet path beyond forwarding: parse failures, what
/// each action did, rule hits and the flow table.
pub struct PathCounters {
    pub parse_errors: [AtomicU64; ParseError::COUNT],
    pub actions: [[AtomicU64; Outcome::COUNT]; Action::COUNT],
    pub rule_hits: Box<[AtomicU64]>,
    pub flow_hits: AtomicU64,
    pub flow_misses: AtomicU64,
    pub flow_inserts: AtomicU64,
    pub flow_evictions: AtomicU64,
    pub flow_expirations: AtomicU64,
    pub flow_conflicts: AtomicU64,
    pub flows_active: AtomicU64,
    /// Per priority level: packets and bytes forwarded (both directions).
    pub levels: [[AtomicU64; 2]; LEVELS],
    /// New flows by the policy step that classified them
    /// ([`Source::index`]).
    pub classified: [AtomicU64; Source::COUNT],
    /// Flows whose cached decision went stale and were classified again.
    pub reclassified: AtomicU64,
    /// Per priority level: flows the policy tables classified into it (new
    /// or again), and the TSC of the latest. A policy change takes effect
    /// on its subscriber's first packet after it, which re-classifies the
    /// flow: this is when a change reached the traffic (`sluice-perf
    /// updates` times ack -> effect with it).
    pub entered: [[AtomicU64; 2]; LEVELS],
    /// Metered packets: green, yellow, red dropped, red demoted.
    pub metered: [AtomicU64; 4],
}

/// The number of priority levels.
pub const LEVELS: usize = 8;

impl PathCounters {
    pub fn new(rules: usize) -> PathCounters {
        PathCounters {
            parse_errors: Default::default(),
            actions: Default::default(),
            rule_hits: (0..rules).map(|_| AtomicU64::new(0)).collect(),
            flow_hits: AtomicU64::new(0),
            flow_misses: AtomicU64::new(0),
            flow_inserts: AtomicU64::new(0),
            flow_evictions: AtomicU64::new(0),
            flow_expirations: AtomicU64::new(0),
            flow_conflicts: AtomicU64::new(0),
            flows_active: AtomicU64::new(0),
            levels: Default::default(),
            classified: Default::default(),
            reclassified: AtomicU64::new(0),
            entered: Default::default(),
            metered: Default::default(),
        }
    }

    /// Counts a metered packet by color (and the fate of a red one).
    #[inline]
    pub fn metered(&self, c: crate::sched::MeterColor, drop_red: bool) {
        use crate::sched::MeterColor::*;
        let i = match c {
            Green => 0,
            Yellow => 1,
            Red if drop_red => 2,
            Red => 3,
        };
        bump(&self.metered[i], 1);
    }

    /// Counts `packets` of `bytes` forwarded at `level`.
    #[inline]
    pub fn level(&self, level: u8, packets: u64, bytes: u64) {
        if let Some([p, b]) = self.levels.get(usize::from(level)) {
            bump(p, packets);
            bump(b, bytes);
        }
    }

    /// Counts a classification by the policy tables.
    #[inline]
    pub fn classified(&self, s: Source, again: bool, level: u8, tsc: u64) {
        if let Some(c) = self.classified.get(s.index()) {
            bump(c, 1);
        }
        if again {
            bump(&self.reclassified, 1);
        }
        if let Some([n, at]) = self.entered.get(usize::from(level)) {
            bump(n, 1);
            at.store(tsc, Relaxed);
        }
    }

    #[inline]
    pub fn parse_error(&self, e: ParseError) {
        if let Some(c) = self.parse_errors.get(e.index()) {
            bump(c, 1);
        }
    }

    #[inline]
    pub fn action(&self, a: Action, o: Outcome) {
        if let Some(c) = self
            .actions
            .get(a.index())
            .and_then(|row| row.get(o.index()))
        {
            bump(c, 1);
        }
    }

    #[inline]
    pub fn rule_hit(&self, rule: usize) {
        if let Some(c) = self.rule_hits.get(rule) {
            bump(c, 1);
        }
    }

    /// Publishes the flow table's own counters (once per burst).
    #[inline]
    pub fn publish_flows(&self, f: &FlowCounters, active: usize) {
        self.flow_hits.store(f.hits, Relaxed);
        self.flow_misses.store(f.misses, Relaxed);
        self.flow_inserts.store(f.inserts, Relaxed);
        self.flow_evictions.store(f.evictions, Relaxed);
        self.flow_expirations.store(f.expirations, Relaxed);
        self.flow_conflicts.store(f.conflicts, Relaxed);
        self.flows_active.store(active as u64, Relaxed);
    }

    fn snapshot(&self, rule_names: &[String]) -> PathSnapshot {
        let nonzero = |c: &AtomicU64| Some(c.load(Relaxed)).filter(|&v| v > 0);
        PathSnapshot {
            parse_errors: ParseError::ALL
                .iter()
                .filter_map(|e| {
                    Some((e.name().to_owned(), nonzero(&self.parse_errors[e.index()])?))
                })
                .collect(),
            actions: Action::ALL
                .iter()
                .filter_map(|a| {
                    let row: BTreeMap<String, u64> = Outcome::ALL
                        .iter()
                        .filter_map(|o| {
                            Some((
                                o.name().to_owned(),
                                nonzero(&self.actions[a.index()][o.index()])?,
                            ))
                        })
                        .collect();
                    (!row.is_empty()).then(|| (a.name().to_owned(), row))
                })
                .collect(),
            rule_hits: rule_names
                .iter()
                .zip(self.rule_hits.iter())
                .map(|(n, c)| (n.clone(), c.load(Relaxed)))
                .collect(),
            levels: (0..LEVELS as u8)
                .filter_map(|l| {
                    let [p, b] = &self.levels[usize::from(l)];
                    let [n, at] = &self.entered[usize::from(l)];
                    let (packets, entered) = (p.load(Relaxed), n.load(Relaxed));
                    (packets > 0 || entered > 0).then(|| LevelSnapshot {
                        level: l,
                        packets,
                        bytes: b.load(Relaxed),
                        flows_entered: entered,
                        last_entered_tsc: at.load(Relaxed),
                    })
                })
                .collect(),
            classified: Source::ALL
                .iter()
                .filter_map(|s| Some((s.name().to_owned(), nonzero(&self.classified[s.index()])?)))
                .collect(),
            reclassified: self.reclassified.load(Relaxed),
            metered: MeteredSnapshot {
                green: self.metered[0].load(Relaxed),
                yellow: self.metered[1].load(Relaxed),
                red_dropped: self.metered[2].load(Relaxed),
                red_demoted: self.metered[3].load(Relaxed),
            },
            flows: FlowSnapshot {
                hits: self.flow_hits.load(Relaxed),
                misses: self.flow_misses.load(Relaxed),
                inserts: self.flow_inserts.load(Relaxed),
                evictions: self.flow_evictions.load(Relaxed),
                expirations: self.flow_expirations.load(Relaxed),
                conflicts: self.flow_conflicts.load(Relaxed),
                active: self.flows_active.load(Relaxed),
            },
        }
    }
}

/// Sojourn-time buckets: four per power of two of nanoseconds above 1 µs
/// (so within 19 % of any value), up to about 18 minutes.
pub const SOJOURN_BUCKETS: usize = 4 * 30 + 1;

/// The bucket of a sojourn of `ns`.
#[inline]
pub fn sojourn_bucket(ns: u64) -> usize {
    let us = ns >> 10;
    if us == 0 {
        return 0;
    }
    let octave = 63 - us.leading_zeros() as usize;
    let sub = if octave >= 2 {
        (us >> (octave - 2)) & 3
    } else {
        (us << (2 - octave)) & 3
    } as usize;
    (1 + octave * 4 + sub).min(SOJOURN_BUCKETS - 1)
}

/// The smallest sojourn, in ns, that falls into `bucket`.
pub fn sojourn_bucket_floor(bucket: usize) -> u64 {
    if bucket == 0 {
        return 0;
    }
    let octave = (bucket - 1) / 4;
    let sub = ((bucket - 1) % 4) as u64;
    ((4 + sub) << octave >> 2) << 10
}

/// The largest sojourn, in ns, that falls into `bucket` (below 4 µs some
/// buckets are never used, so this is the next used bucket's floor − 1).
pub fn sojourn_upper_ns(bucket: usize) -> u64 {
    let floor = sojourn_bucket_floor(bucket);
    (bucket + 1..SOJOURN_BUCKETS)
        .map(sojourn_bucket_floor)
        .find(|&f| f > floor)
        .map_or(u64::MAX >> 4, |f| f - 1)
}

/// One egress scheduler's counters, published by its worker: the
/// scheduler's own per-level counters (copied each pass) and sojourn-time
/// histograms (bumped per packet sent).
pub struct SchedCounters {
    /// Per level: enqueued, enqueued bytes, sent, sent bytes, dropped
    /// (full), dropped (AQM), depth, depth bytes.
    pub levels: [[AtomicU64; 8]; LEVELS],
    pub sojourn: [[AtomicU64; SOJOURN_BUCKETS]; LEVELS],
    /// Whether a scheduler runs on this egress at all.
    pub active: std::sync::atomic::AtomicBool,
}

impl Default for SchedCounters {
    fn default() -> Self {
        SchedCounters {
            levels: Default::default(),
            sojourn: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            active: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl SchedCounters {
    /// Counts one packet of `level` sent after `ns` in the queue.
    #[inline]
    pub fn record(&self, level: u8, ns: u64) {
        if let Some(h) = self.sojourn.get(usize::from(level)) {
            if let Some(c) = h.get(sojourn_bucket(ns)) {
                bump(c, 1);
            }
        }
    }

    /// Copies the scheduler's counters (`of(level)`).
    #[inline]
    pub fn publish(&self, of: impl Fn(usize) -> crate::sched::LevelCounters) {
        self.active.store(true, Relaxed);
        for (l, row) in self.levels.iter().enumerate() {
            let v = of(l).to_array();
            for (a, x) in row.iter().zip(v) {
                a.store(x, Relaxed);
            }
        }
    }

    /// A copy, or `None` if no scheduler ran here.
    pub fn snapshot(&self) -> Option<SchedSnapshot> {
        if !self.active.load(Relaxed) {
            return None;
        }
        Some(SchedSnapshot {
            levels: (0..LEVELS)
                .map(|l| {
                    let r = &self.levels[l];
                    SchedLevelSnapshot {
                        level: l as u8,
                        counters: crate::sched::LevelCounters::from_array(std::array::from_fn(
                            |i| r[i].load(Relaxed),
                        )),
                        sojourn: self.sojourn[l].iter().map(|c| c.load(Relaxed)).collect(),
                    }
                })
                .collect(),
        })
    }
}

/// One level of an egress scheduler, as read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SchedLevelSnapshot {
    pub level: u8,
    #[serde(flatten)]
    pub counters: crate::sched::LevelCounters,
    /// Packets per sojourn bucket ([`sojourn_bucket`]); in JSON as
    /// `sojourn_hist`: `[upper_ns, packets]` of each non-empty bucket.
    #[serde(rename = "sojourn_hist", serialize_with = "sojourn_pairs")]
    pub sojourn: Vec<u64>,
}

fn sojourn_pairs<S: serde::Serializer>(v: &[u64], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(None)?;
    for (b, &n) in v.iter().enumerate().filter(|x| *x.1 > 0) {
        seq.serialize_element(&[sojourn_upper_ns(b).saturating_add(1), n])?;
    }
    seq.end()
}

impl SchedLevelSnapshot {
    /// Adds another worker's counters of the same level.
    pub fn add(&mut self, o: &SchedLevelSnapshot) {
        self.counters.add(&o.counters);
        if self.sojourn.len() < o.sojourn.len() {
            self.sojourn.resize(o.sojourn.len(), 0);
        }
        for (a, b) in self.sojourn.iter_mut().zip(&o.sojourn) {
            *a += b;
        }
    }

    /// What happened since `prev` (an earlier copy of the same level);
    /// depth stays current.
    pub fn since(&self, prev: &SchedLevelSnapshot) -> SchedLevelSnapshot {
        SchedLevelSnapshot {
            level: self.level,
            counters: self.counters.since(&prev.counters),
            sojourn: self
                .sojourn
                .iter()
                .enumerate()
                .map(|(i, &n)| n.saturating_sub(prev.sojourn.get(i).copied().unwrap_or(0)))
                .collect(),
        }
    }

    /// Sojourn percentiles (ns) from the buckets, each at its bucket's upper
    /// bound (the next bucket's floor), so a percentile is never
    /// understated.
    pub fn sojourn_percentiles(&self, qs: &[f64]) -> Vec<u64> {
        bucket_percentiles(&self.sojourn, |b| sojourn_upper_ns(b).saturating_add(1), qs)
    }
}

/// An egress scheduler's counters, as read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SchedSnapshot {
    pub levels: Vec<SchedLevelSnapshot>,
}

/// The egress scheduler of direction `d` summed over workers, per level;
/// `None` if that egress is not shaped.
pub fn sched_totals(
    workers: &[(u32, std::sync::Arc<WorkerCounters>)],
    d: Direction,
) -> Option<Vec<SchedLevelSnapshot>> {
    let mut total: Option<Vec<SchedLevelSnapshot>> = None;
    for (_, w) in workers {
        if let Some(s) = w.sched(d).snapshot() {
            match &mut total {
                None => total = Some(s.levels),
                Some(t) => {
                    for (a, b) in t.iter_mut().zip(&s.levels) {
                        a.add(b);
                    }
                }
            }
        }
    }
    total
}

/// All counters of one worker, one cache line per direction so that the
/// reader never shares a line with the other direction's writes.
pub struct WorkerCounters {
    pub lanes: [CachePadded<LaneCounters>; 2],
    pub path: CachePadded<PathCounters>,
    /// The egress scheduler of each direction's tx port.
    pub scheds: [CachePadded<SchedCounters>; 2],
}

impl WorkerCounters {
    /// Counters for a worker applying `rules` static rules.
    pub fn new(rules: usize) -> WorkerCounters {
        WorkerCounters {
            lanes: Default::default(),
            path: CachePadded::new(PathCounters::new(rules)),
            scheds: Default::default(),
        }
    }

    pub fn lane(&self, d: Direction) -> &LaneCounters {
        &self.lanes[d.index()]
    }

    /// The scheduler counters of the egress `d` sends out of.
    pub fn sched(&self, d: Direction) -> &SchedCounters {
        &self.scheds[d.index()]
    }

    pub fn snapshot(&self, lcore: u32, rule_names: &[String]) -> WorkerSnapshot {
        WorkerSnapshot {
            lcore,
            lanes: Direction::ALL.map(|d| self.lane(d).snapshot(d)).to_vec(),
            path: self.path.snapshot(rule_names),
            scheds: Direction::ALL.map(|d| self.sched(d).snapshot()).to_vec(),
            latency: Direction::ALL
                .map(|d| {
                    let mut b = self.lane(d).latency_buckets();
                    // A shaped egress counts its packets' latency in the
                    // per-level sojourn histograms (rx to dequeue): the same
                    // buckets, four octaves (16x) coarser.
                    if let Some(s) = self.sched(d).snapshot() {
                        for l in &s.levels {
                            for (i, &n) in l.sojourn.iter().enumerate() {
                                // At the bucket's upper end: never understated.
                                let at = latency_bucket(sojourn_upper_ns(i));
                                if let Some(x) = b.get_mut(at) {
                                    *x += n;
                                }
                            }
                        }
                    }
                    b
                })
                .to_vec(),
        }
    }
}

/// Flow-table counters of one worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FlowSnapshot {
    pub hits: u64,
    pub misses: u64,
    pub inserts: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub conflicts: u64,
    pub active: u64,
}

/// A point-in-time copy of one worker's packet-path counters; zero
/// counters are left out of the maps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PathSnapshot {
    pub parse_errors: BTreeMap<String, u64>,
    /// action name -> outcome name -> packets.
    pub actions: BTreeMap<String, BTreeMap<String, u64>>,
    /// rule name -> classifications it won: one per new flow, or one per
    /// packet when the rules are stateless (DSCP only, see
    /// `StaticRules::stateless`).
    pub rule_hits: BTreeMap<String, u64>,
    /// Packets and bytes per priority level (levels with traffic only).
    pub levels: Vec<LevelSnapshot>,
    /// policy step (coupon, login, sp-prefix, default, ...) -> new flows.
    pub classified: BTreeMap<String, u64>,
    pub reclassified: u64,
    pub metered: MeteredSnapshot,
    pub flows: FlowSnapshot,
}

/// Packets of metered bindings, by color.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MeteredSnapshot {
    pub green: u64,
    pub yellow: u64,
    pub red_dropped: u64,
    pub red_demoted: u64,
}

/// One level's traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LevelSnapshot {
    /// 0 (network control) ..= 7 (scavenger); 5 is best effort.
    pub level: u8,
    pub packets: u64,
    pub bytes: u64,
    /// Flows classified into this level ([`PathCounters::entered`]).
    pub flows_entered: u64,
    /// The TSC of the latest of those (0: none yet).
    pub last_entered_tsc: u64,
}

/// A point-in-time copy of one direction's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LaneSnapshot {
    pub direction: Direction,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_full_drops: u64,
    pub sched_drops: u64,
    pub drained: u64,
    pub punted: u64,
    pub punt_drops: u64,
    pub punt_copies: u64,
    pub injected: u64,
}

impl LaneSnapshot {
    /// Packets received (or injected by the control thread) but neither
    /// sent, consumed by the control thread nor counted as dropped. Zero
    /// after a clean shutdown; anything else is a bug.
    pub fn unaccounted(&self) -> i128 {
        self.rx_packets as i128 + self.injected as i128
            - self.punted as i128
            - self.tx_packets as i128
            - self.tx_full_drops as i128
            - self.sched_drops as i128
            - self.drained as i128
    }
}

/// A point-in-time copy of one worker's counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerSnapshot {
    pub lcore: u32,
    pub lanes: Vec<LaneSnapshot>,
    pub path: PathSnapshot,
    /// Per direction (as `lanes`): its egress scheduler, if shaped.
    pub scheds: Vec<Option<SchedSnapshot>>,
    /// Per direction (as `lanes`): rx-to-tx latency buckets
    /// ([`latency_bucket`]); summarised in [`RunReport::latency`].
    #[serde(skip)]
    pub latency: Vec<Vec<u64>>,
}

/// One port's final report.
#[derive(Debug, Clone, Serialize)]
pub struct PortReport {
    pub role: &'static str,
    pub name: String,
    pub ipackets: u64,
    pub opackets: u64,
    pub ibytes: u64,
    pub obytes: u64,
    pub imissed: u64,
    pub ierrors: u64,
    pub oerrors: u64,
    pub rx_nombuf: u64,
}

impl PortReport {
    pub fn new(role: &'static str, name: &str, s: PortStats) -> PortReport {
        PortReport {
            role,
            name: name.to_owned(),
            ipackets: s.ipackets,
            opackets: s.opackets,
            ibytes: s.ibytes,
            obytes: s.obytes,
            imissed: s.imissed,
            ierrors: s.ierrors,
            oerrors: s.oerrors,
            rx_nombuf: s.rx_nombuf,
        }
    }
}

/// Everything printed (and optionally written as JSON) at shutdown.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub elapsed_secs: f64,
    pub ports: Vec<PortReport>,
    pub workers: Vec<WorkerSnapshot>,
    pub pool_size: u32,
    pub pool_in_use: u32,
    /// Per direction that sent anything: rx-to-tx latency over all
    /// workers (see [`RunReport::latency_of`]).
    pub latency: Vec<LatencySummary>,
}

impl RunReport {
    /// The latency summaries of `workers`' directions that sent anything.
    pub fn latency_of(workers: &[WorkerSnapshot]) -> Vec<LatencySummary> {
        Direction::ALL
            .iter()
            .filter_map(|&d| {
                let mut total = vec![0u64; SOJOURN_BUCKETS];
                for w in workers {
                    for (a, b) in total.iter_mut().zip(w.latency.get(d.index())?) {
                        *a += b;
                    }
                }
                let s = LatencySummary::of(d, &total);
                (s.packets > 0).then_some(s)
            })
            .collect()
    }

    /// Per-direction totals over all workers.
    pub fn totals(&self) -> [LaneSnapshot; 2] {
        let mut t = Direction::ALL.map(|direction| LaneSnapshot {
            direction,
            ..Default::default()
        });
        for w in &self.workers {
            for l in &w.lanes {
                let s = &mut t[l.direction.index()];
                s.rx_packets += l.rx_packets;
                s.rx_bytes += l.rx_bytes;
                s.tx_packets += l.tx_packets;
                s.tx_bytes += l.tx_bytes;
                s.tx_full_drops += l.tx_full_drops;
                s.sched_drops += l.sched_drops;
                s.drained += l.drained;
                s.punted += l.punted;
                s.punt_drops += l.punt_drops;
                s.punt_copies += l.punt_copies;
                s.injected += l.injected;
            }
        }
        t
    }

    /// True when every received packet was sent or counted as dropped.
    pub fn conserved(&self) -> bool {
        self.totals().iter().all(|l| l.unaccounted() == 0)
    }

    /// True when every buffer is back in the pool.
    pub fn pool_full(&self) -> bool {
        self.pool_in_use == 0
    }
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "sluice ran {:.2} s", self.elapsed_secs)?;
        writeln!(
            f,
            "{:<10} {:<12} {:>14} {:>14} {:>16} {:>16} {:>9} {:>9} {:>9} {:>10}",
            "port",
            "device",
            "rx pkts",
            "tx pkts",
            "rx bytes",
            "tx bytes",
            "missed",
            "rx err",
            "tx err",
            "rx nombuf"
        )?;
        for p in &self.ports {
            writeln!(
                f,
                "{:<10} {:<12} {:>14} {:>14} {:>16} {:>16} {:>9} {:>9} {:>9} {:>10}",
                p.role,
                p.name,
                p.ipackets,
                p.opackets,
                p.ibytes,
                p.obytes,
                p.imissed,
                p.ierrors,
                p.oerrors,
                p.rx_nombuf
            )?;
        }
        writeln!(
            f,
            "{:<8} {:<11} {:>14} {:>14} {:>16} {:>14}",
            "worker", "direction", "rx pkts", "tx pkts", "tx bytes", "txq-full drop"
        )?;
        for w in &self.workers {
            for l in &w.lanes {
                writeln!(
                    f,
                    "{:<8} {:<11} {:>14} {:>14} {:>16} {:>14}",
                    format!("lcore{}", w.lcore),
                    format!("{:?}", l.direction).to_lowercase(),
                    l.rx_packets,
                    l.tx_packets,
                    l.tx_bytes,
                    l.tx_full_drops
                )?;
            }
        }
        for w in &self.workers {
            write_path(f, w.lcore, &w.path)?;
        }
        for (i, port) in [(0, "upstream"), (1, "subscriber")] {
            let mut total: Option<Vec<SchedLevelSnapshot>> = None;
            for w in &self.workers {
                if let Some(Some(s)) = w.scheds.get(i) {
                    match &mut total {
                        None => total = Some(s.levels.clone()),
                        Some(t) => t.iter_mut().zip(&s.levels).for_each(|(a, b)| a.add(b)),
                    }
                }
            }
            let Some(levels) = total else { continue };
            writeln!(
                f,
                "egress {port}: {:<6} {:>12} {:>10} {:>11} {:>9} {:>9} {:>9}",
                "level", "sent pkts", "Mbit/s", "queue full", "AQM drop", "p50 ms", "p99 ms"
            )?;
            for l in levels.iter().filter(|l| l.counters.enqueued > 0) {
                let q = l.sojourn_percentiles(&[0.5, 0.99]);
                writeln!(
                    f,
                    "egress {port}: {:<6} {:>12} {:>10.2} {:>11} {:>9} {:>9.2} {:>9.2}",
                    l.level,
                    l.counters.sent,
                    l.counters.sent_bytes as f64 * 8.0 / self.elapsed_secs.max(1e-9) / 1e6,
                    l.counters.dropped_full,
                    l.counters.dropped_aqm,
                    q[0] as f64 / 1e6,
                    q[1] as f64 / 1e6
                )?;
            }
        }
        for l in &self.latency {
            writeln!(
                f,
                "latency rx->tx {:<10} p50 {:.1} us  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1} ({} packets)",
                format!("{:?}", l.direction).to_lowercase(),
                l.p50_ns as f64 / 1e3,
                l.p90_ns as f64 / 1e3,
                l.p99_ns as f64 / 1e3,
                l.p999_ns as f64 / 1e3,
                l.max_ns as f64 / 1e3,
                l.packets
            )?;
        }
        let t = self.totals();
        let (punted, injected) = (t[0].punted + t[1].punted, t[0].injected + t[1].injected);
        let (copies, punt_drops) = (
            t[0].punt_copies + t[1].punt_copies,
            t[0].punt_drops + t[1].punt_drops,
        );
        if punted + injected + copies + punt_drops > 0 {
            writeln!(
                f,
                "control packets: {punted} consumed (coupon redemptions), {copies} copied (DNS answers), {punt_drops} dropped (ring full), {injected} answers sent"
            )?;
        }
        let conserved = if self.conserved() {
            "yes (rx + answers sent = tx + consumed + counted drops)"
        } else {
            "NO: packets unaccounted for"
        };
        writeln!(f, "packets conserved: {conserved}")?;
        if self.pool_full() {
            write!(f, "mempool: all {} buffers returned", self.pool_size)
        } else {
            write!(
                f,
                "mempool: LEAK: {} of {} buffers still in use at exit",
                self.pool_in_use, self.pool_size
            )
        }
    }
}

fn write_path(f: &mut fmt::Formatter<'_>, lcore: u32, p: &PathSnapshot) -> fmt::Result {
    let fl = &p.flows;
    if fl.inserts > 0 || fl.misses > 0 {
        writeln!(
            f,
            "lcore{lcore} flows: {} active, {} hits, {} misses, {} inserts, {} evicted, {} expired, {} conflicts",
            fl.active, fl.hits, fl.misses, fl.inserts, fl.evictions, fl.expirations, fl.conflicts
        )?;
    }
    let join = |m: &BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    if p.levels.iter().any(|l| l.packets > 0) {
        let l: Vec<String> = p
            .levels
            .iter()
            .filter(|l| l.packets > 0)
            .map(|l| format!("{}={}", l.level, l.packets))
            .collect();
        writeln!(f, "lcore{lcore} packets per level: {}", l.join(" "))?;
    }
    let m = &p.metered;
    if m.green + m.yellow + m.red_dropped + m.red_demoted > 0 {
        writeln!(
            f,
            "lcore{lcore} metered packets: green {} yellow {} red dropped {} red demoted {}",
            m.green, m.yellow, m.red_dropped, m.red_demoted
        )?;
    }
    if !p.classified.is_empty() {
        writeln!(
            f,
            "lcore{lcore} flows classified by: {} (again when stale: {})",
            join(&p.classified),
            p.reclassified
        )?;
    }
    if !p.rule_hits.is_empty() {
        writeln!(f, "lcore{lcore} rule hits (flows): {}", join(&p.rule_hits))?;
    }
    for (action, outcomes) in &p.actions {
        writeln!(f, "lcore{lcore} action {action}: {}", join(outcomes))?;
    }
    if !p.parse_errors.is_empty() {
        writeln!(
            f,
            "lcore{lcore} not parsed (forwarded untouched): {}",
            join(&p.parse_errors)
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_bucket_upper_bounds_by_cumulative_count() {
        fn upper(b: usize) -> u64 {
            (b as u64 + 1) * 100
        }
        let b = [0, 10, 0, 90];
        let q = bucket_percentiles(&b, upper, &[0.0, 0.05, 0.1, 0.11, 0.5, 1.0]);
        assert_eq!(q, vec![200, 200, 200, 400, 400, 400]);
        assert_eq!(bucket_percentiles(&[0, 0], upper, &[0.5, 1.0]), vec![0, 0]);
        assert_eq!(bucket_percentiles(&[5], upper, &[0.99]), vec![100]);
    }

    #[test]
    fn single_writer_bumps_accumulate() {
        let c = WorkerCounters::new(0);
        c.lane(Direction::Upstream).add_rx(32, 2048);
        c.lane(Direction::Upstream).add_tx(30, 1920, 2);
        c.lane(Direction::Downstream).add_rx(1, 64);
        let s = c.snapshot(1, &[]);
        assert_eq!(s.lanes[0].rx_packets, 32);
        assert_eq!(s.lanes[0].unaccounted(), 0);
        assert_eq!(s.lanes[1].unaccounted(), 1);
    }

    #[test]
    fn report_flags_unconserved_and_leaks() {
        let c = WorkerCounters::new(0);
        c.lane(Direction::Upstream).add_rx(10, 640);
        c.lane(Direction::Upstream).add_tx(9, 576, 0);
        c.lane(Direction::Upstream).add_latency(3_000, 9);
        let workers = vec![c.snapshot(1, &[])];
        let r = RunReport {
            elapsed_secs: 1.0,
            ports: vec![],
            latency: RunReport::latency_of(&workers),
            workers,
            pool_size: 100,
            pool_in_use: 3,
        };
        assert_eq!(r.latency.len(), 1, "only the direction that sent");
        let l = &r.latency[0];
        assert_eq!(l.packets, 9);
        // Reported at the bucket's upper bound: within 19 % above.
        assert!((3_000..=3_600).contains(&l.p50_ns), "{l:?}");
        assert_eq!(l.p50_ns, l.max_ns);
        assert!(!r.conserved());
        assert!(!r.pool_full());
        let text = r.to_string();
        assert!(text.contains("NO: packets unaccounted"), "{text}");
        assert!(text.contains("LEAK: 3 of 100"), "{text}");
    }

    #[test]
    fn a_shaped_egress_reports_its_sojourns_as_latency() {
        let c = WorkerCounters::new(0);
        let s = c.sched(Direction::Upstream);
        s.publish(|_| Default::default());
        for ns in [3_000u64, 40_000, 40_000, 2_000_000] {
            s.record(5, ns);
        }
        let w = vec![c.snapshot(1, &[])];
        let l = &RunReport::latency_of(&w)[0];
        assert_eq!(l.packets, 4);
        assert!((40_000..=48_000).contains(&l.p50_ns), "{l:?}");
        assert!((2_000_000..=2_400_000).contains(&l.max_ns), "{l:?}");
        for ns in [1u64, 500, 1_500, 3_000, 70_000, 9_000_000] {
            let b = sojourn_bucket(ns);
            assert_eq!(sojourn_bucket(sojourn_upper_ns(b)), b, "{ns}");
            assert!(sojourn_upper_ns(b) >= ns, "{ns}");
            assert_ne!(
                sojourn_bucket(sojourn_upper_ns(b) + 1),
                b,
                "{ns}: the upper end"
            );
        }
    }

    #[test]
    fn latency_buckets_are_ordered_and_tight() {
        let mut last = 0;
        for ns in [1u64, 63, 64, 100, 1_000, 10_000, 1_000_000, 5_000_000_000] {
            let b = latency_bucket(ns);
            assert!(b >= last, "{ns}");
            last = b;
            assert!(latency_bucket_floor(b) <= ns, "{ns}");
            if ns >= 64 {
                assert!(
                    latency_bucket_floor(b + 1) as f64 <= ns as f64 * 1.25 + 1.0,
                    "{ns}"
                );
            }
        }
    }
}
