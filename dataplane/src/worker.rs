//! The poll-mode worker: one per configured core, running as a DPDK lcore.
//!
//! Each worker owns one rx queue and one tx queue on each port (its
//! "lanes"): subscriber rx -> upstream tx, and upstream rx -> subscriber tx.
//! With symmetric RSS both directions of a flow land on the same worker,
//! which is why each worker can own its flow table outright.
//!
//! Per burst the worker picks the cheapest path that gives the same result
//! ([`Pipeline::mode`]):
//! - **bridge**: no static rule, the policy tables are inert (no binding,
//!   no SP prefix, a default that rewrites nothing), no flow holds
//!   reverse state and no control packet is punted ([`crate::punt`]):
//!   packets are not even parsed;
//! - **stateless**: the same, but with a few DSCP-only static rules,
//!   matched per packet without the flow table;
//! - **flows**: parse -> flow-table lookup (an established flow keeps its
//!   decision while its stamp is current; a reply gets the reverse
//!   rewrite) -> on a miss, classify (static rules first, then the policy
//!   tables) and insert -> rewrite with incremental checksums -> forward.
//!
//! The loop never locks, allocates, blocks or logs; counters are
//! single-writer atomics.
//!
//! # Decisions written down here
//! - **Static `[[rules]]` come first.** They are the operator's config;
//!   a flow they match is pinned to that decision for its life. Flows no
//!   rule matches are classified by the policy tables and re-checked on
//!   every forward packet ([`TablesReader::revalidate`]: one compare while
//!   the policy's epoch stands).
//! - **A remap from the policy applies only to a flow whose first packet
//!   this worker sees opens it** (a TCP SYN without ACK; any UDP packet).
//!   A TCP connection already running when a remap coupon arrives (or
//!   when the appliance restarts) is left on its server: moving it would
//!   reset it.
//! - **A policy change re-classifies a running flow**, but only its level,
//!   DSCP and MSS clamp change; its remaps stay what they were when it
//!   started (its replies are rewritten back by the reverse state kept at
//!   insert, which a new remap would not match).
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use crate::classify::StaticRules;
use crate::dpdk::{self, Burst, Mbuf, Mempool, RxQueue, TxQueue, MAX_BURST};
use crate::flow::NO_METER;
use crate::flow::{FlowDecision, FlowTable, Probe, Side};
use crate::packet::{self, ActionSet, ApplyReport, FlowKey, Fragment, Parsed, ReverseRewrite};
use crate::packet::{PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_SYN};
use crate::punt::{PuntAction, PuntRings, PuntRules, Punted, PUNT_CONSUME};
use crate::sched::{MeterColor, Packet as SchedPacket, Scheduler, WorkerMeters};
use crate::stats::{Direction, PathCounters, WorkerCounters};
use crate::tables::BEST_EFFORT;
use crate::tables::{TablesReader, Validity};

/// One direction through the appliance on one worker.
pub struct Lane {
    pub direction: Direction,
    pub rx: RxQueue,
    pub tx: TxQueue,
    /// The egress scheduler, when the tx port is shaped.
    pub sched: Option<LaneSched>,
}

/// Classification and per-flow state.
pub struct Pipeline {
    pub rules: Arc<StaticRules>,
    pub tables: TablesReader,
    pub flows: FlowTable,
    /// Bursts and idle passes since the last sweep ([`Pipeline::tick_sweep`]).
    pub since_sweep: u32,
    /// Per-binding meters (rates from the policy).
    pub meters: WorkerMeters,
    /// Red packets are dropped (else sent at best effort).
    pub drop_red: bool,
    /// Converts the TSC to the meters' nanoseconds.
    pub ns_per_tsc: f64,
    /// The current burst's time in nanoseconds (for the meters).
    now_ns: u64,
    /// Control packets to hand to the control thread, if any.
    pub punt: Option<PuntPath>,
    /// Copies made (and not made) in the current burst.
    copies: (u64, u64),
}

/// A worker's side of the punt rings ([`crate::punt`]).
pub struct PuntPath {
    pub rules: PuntRules,
    pub rings: Arc<PuntRings>,
    /// Copies (of DNS answers) come from here.
    pub pool: Arc<Mempool>,
}

/// The level [`Pipeline::process_burst`] gives a packet its meter drops.
pub const METER_DROP: u8 = u8::MAX;

/// How a burst is handled; see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Bridge,
    Stateless,
    Flows,
}

/// The idle sweep runs once every `EXPIRE_EVERY` bursts over
/// `EXPIRE_BUDGET` consecutive flow-table slots (4 per flow of capacity,
/// mostly empty; consecutive, so the hardware prefetcher streams them). It
/// is housekeeping only: a lookup or insert that meets an expired flow
/// treats it as gone, and a full table evicts expired flows first. Run per
/// burst it cost ~15 % of the rule path (a cache miss per entry looked at,
/// when entries were 192 bytes apart), so it runs rarely.
const EXPIRE_EVERY: u32 = 256;

/// Frames handled together by [`Pipeline::process_burst`]: enough misses
/// in flight to hide the memory latency (each group pays at least one
/// round trip to the flow table: with the `classify` benchmark's burst,
/// `BURST` in perf/src/lookup.rs, set to 16 a flow hit at 4M flows cost
/// 123 cycles against 84-93 at 32, measured on the table before the
/// current one), few enough that the lines prefetched per frame (the home
/// slot and the next; the validity line while the policy changes; a
/// forward slot and a two-line tail for rewritten flows; 4-8 KiB a group)
/// are still in L1.
const GROUP: usize = 32;
// A group's consumed frames are a bit mask in a u32.
const _: () = assert!(GROUP <= 32);
const EXPIRE_BUDGET: usize = 256;

impl Pipeline {
    /// Counts a burst or an idle pass; every [`EXPIRE_EVERY`]th sweeps
    /// [`EXPIRE_BUDGET`] flow-table slots.
    fn tick_sweep(&mut self, now: u64) {
        self.since_sweep += 1;
        if self.since_sweep >= EXPIRE_EVERY {
            self.since_sweep = 0;
            self.flows.expire(now, EXPIRE_BUDGET);
        }
    }

    pub fn new(
        rules: Arc<StaticRules>,
        tables: TablesReader,
        flows: FlowTable,
        meters: WorkerMeters,
        drop_red: bool,
        ns_per_tsc: f64,
    ) -> Pipeline {
        Pipeline {
            rules,
            tables,
            flows,
            since_sweep: 0,
            meters,
            drop_red,
            ns_per_tsc,
            now_ns: 0,
            punt: None,
            copies: (0, 0),
        }
    }

    /// Punts control packets per `punt` (see [`crate::punt`]).
    pub fn with_punt(mut self, punt: PuntPath) -> Pipeline {
        self.punt = (!punt.rules.is_off()).then_some(punt);
        self
    }

    /// Copies (and failed copies) of the last burst, reset.
    #[inline]
    pub fn take_copies(&mut self) -> (u64, u64) {
        std::mem::take(&mut self.copies)
    }

    /// What to do with parsed frame `m` for the control thread: `true` if
    /// it is consumed. A copy is made here.
    #[inline]
    fn punt(&mut self, m: &Mbuf, p: &Parsed, dir: Direction) -> bool {
        let Some(pp) = &self.punt else {
            return false;
        };
        if p.proto() != PROTO_UDP || p.fragment() == Fragment::NonFirst {
            return false;
        }
        match pp
            .rules
            .action(dir == Direction::Upstream, p.src_port(), p.dst_port())
        {
            PuntAction::Forward => false,
            PuntAction::Consume => true,
            PuntAction::Copy => {
                // No copy made only to be freed again.
                let room = !pp.rings.to_control.is_full();
                let copied = room.then(|| m.copy_into(&pp.pool)).flatten().and_then(|c| {
                    pp.rings
                        .to_control
                        .push(Punted {
                            mbuf: c,
                            consumed: false,
                        })
                        .ok()
                });
                if copied.is_some() {
                    self.copies.0 += 1;
                } else {
                    self.copies.1 += 1;
                }
                false
            }
        }
    }

    /// The level a packet of flow decision `d` leaves at, after its meter
    /// (if any): [`METER_DROP`] for a red packet when those are dropped.
    #[inline]
    fn metered(&mut self, d: &FlowDecision, len: usize, c: &PathCounters) -> u8 {
        let meter = d.meter();
        if meter == NO_METER {
            return d.level();
        }
        let color = self.meters.color(meter, len as u32, self.now_ns);
        c.metered(color, self.drop_red);
        match color {
            MeterColor::Red if self.drop_red => METER_DROP,
            MeterColor::Red => BEST_EFFORT,
            _ => d.level(),
        }
    }

    /// The path for the next burst (after [`TablesReader::refresh`]). A
    /// `scheduled` lane always takes the flow path: the scheduler needs
    /// every packet's level and flow.
    #[inline]
    pub fn mode(&self, scheduled: bool) -> Mode {
        if scheduled || !self.tables.is_inert() || !self.flows.is_empty() || self.punt.is_some() {
            Mode::Flows
        } else if self.rules.is_empty() {
            Mode::Bridge
        } else if self.rules.stateless() {
            Mode::Stateless
        } else {
            Mode::Flows
        }
    }

    /// The level of traffic nothing classified.
    #[inline]
    pub fn default_level(&self) -> u8 {
        self.tables.snapshot().default().level
    }

    /// Handles one frame per static rules only, no flow state (the
    /// stateless mode). With [`StaticRules::stateless`] rules the only
    /// action is a DSCP, so the packet is matched on its parsed fields
    /// (no flow key unless a rule has a prefix) and the DSCP set directly.
    #[inline]
    pub fn process_stateless(&mut self, frame: &mut [u8], dir: Direction, c: &PathCounters) {
        let p = match packet::parse(frame) {
            Ok(p) => p,
            Err(e) => {
                c.parse_error(e);
                return;
            }
        };
        if !self.rules.stateless() {
            return self.process_stateless_any(frame, p, dir, c);
        }
        if let Some((rule, dscp)) = self.rules.classify_dscp(&p, frame, dir) {
            c.rule_hit(rule);
            if let Some(d) = dscp {
                c.action(packet::Action::Dscp, packet::set_dscp(frame, &p, d));
            }
        }
    }

    /// [`Pipeline::process_stateless`] with rules that have more than a
    /// DSCP (the stateless mode never has them): every action of the
    /// matching rule, through the flow key.
    #[cold]
    #[inline(never)]
    fn process_stateless_any(
        &self,
        frame: &mut [u8],
        p: packet::Parsed,
        dir: Direction,
        c: &PathCounters,
    ) {
        let Some(key) = p.flow_key(frame, dir) else {
            return;
        };
        if let Some((rule, actions)) = self.rules.classify(&key) {
            c.rule_hit(rule);
            for (a, o) in packet::apply_forward(frame, &p, &actions).requested() {
                c.action(a, o);
            }
        }
    }

    /// Handles a burst travelling in `dir` through the flow table, `now`
    /// being the burst's TSC, in groups of [`GROUP`] frames: every frame of
    /// a group is parsed and its flow key packed, hashed and its home slots
    /// prefetched ([`FlowTable::prefetch`]), then what each key needs next
    /// is prefetched ([`FlowTable::prefetch_entry`], and the validity line
    /// of a forward hit whose stamp is behind the policy epoch:
    /// [`TablesReader::prefetch_stamp`]), then each frame is handled. The
    /// table's cache misses (a few million flows do not fit in any cache)
    /// then overlap instead of following one another.
    /// Counts each packet at its level.
    #[inline]
    pub fn process_burst(
        &mut self,
        bufs: &mut [Mbuf],
        dir: Direction,
        now: u64,
        c: &PathCounters,
        meta: &mut Meta,
    ) {
        self.now_ns = (now as f64 * self.ns_per_tsc) as u64;
        // Per-level packets and bytes of this burst, published once.
        let mut per_level = [(0u64, 0u64); crate::stats::LEVELS];
        for (gi, group) in bufs.chunks_mut(GROUP).enumerate() {
            let mut pre: [Option<(Parsed, FlowKey, Probe)>; GROUP] = [None; GROUP];
            // Frames the control thread takes (bit i: frame i of the group).
            let mut consumed = 0u32;
            for (i, (m, slot)) in group.iter_mut().zip(pre.iter_mut()).enumerate() {
                match packet::parse(m.data()) {
                    Ok(p) => {
                        if self.punt(m, &p, dir) {
                            consumed |= 1 << i;
                            continue;
                        }
                        if let Some(k) = p.flow_key(m.data(), dir) {
                            *slot = Some((p, k, self.flows.prefetch(&k)));
                        }
                    }
                    Err(e) => c.parse_error(e),
                }
            }
            for (_, _, probe) in pre.iter_mut().flatten() {
                // A forward hit's stamp, if behind the epoch, reads its
                // validity line: fetch it with the rest of the group.
                if let Some(d) = self.flows.prefetch_entry(probe) {
                    if !d.pinned() {
                        self.tables.prefetch_stamp(d.stamp());
                    }
                }
            }
            for (i, (m, slot)) in group.iter_mut().zip(pre.iter()).enumerate() {
                if consumed & (1 << i) != 0 {
                    if let Some(x) = meta.get_mut(gi * GROUP + i) {
                        *x = (PUNT_CONSUME, 0);
                    }
                    continue;
                }
                let len = u64::from(m.pkt_len());
                let (level, hash) = match slot {
                    Some((p, k, probe)) => (
                        self.process_parsed(m.data_mut(), p, k, probe, now, c),
                        (probe.hash() >> 16) as u32,
                    ),
                    None => (self.default_level(), 0),
                };
                if let Some(x) = per_level.get_mut(usize::from(level)) {
                    x.0 += 1;
                    x.1 += len;
                }
                if let Some(x) = meta.get_mut(gi * GROUP + i) {
                    *x = (level, hash);
                }
            }
        }
        for (l, &(p, b)) in per_level.iter().enumerate() {
            if p > 0 {
                c.level(l as u8, p, b);
            }
        }
    }

    /// Handles one parsed frame (its flow key hashed by
    /// [`FlowTable::prefetch`]); returns the packet's level.
    #[inline]
    fn process_parsed(
        &mut self,
        frame: &mut [u8],
        p: &Parsed,
        key: &FlowKey,
        probe: &Probe,
        now: u64,
        c: &PathCounters,
    ) -> u8 {
        let flags = p.tcp_flags();
        let (report, level) = match self.flows.lookup_probed(probe, flags, now) {
            Some(hit) if hit.side == Side::Forward => {
                let mut d = hit.decision;
                let mut actions = d.actions(&hit);
                let handle = hit.handle;
                if !d.pinned() {
                    match self.tables.revalidate(d.stamp()) {
                        Validity::Current => {}
                        Validity::Restamped => {
                            d = d.with_stamp(self.tables.restamp(d.stamp()));
                            self.flows.set_decision(handle, d);
                        }
                        Validity::Stale => {
                            let had_remaps = d.remaps();
                            let fresh = self.tables.classify(key);
                            c.classified(fresh.source, true, fresh.decision.level, now);
                            actions = ActionSet {
                                // Remaps are fixed at the flow's start.
                                dst_port: actions.dst_port,
                                dst_addr: actions.dst_addr,
                                ..fresh.decision.actions
                            };
                            d = FlowDecision::new(
                                &actions,
                                fresh.decision.level,
                                false,
                                fresh.decision.meter.unwrap_or(NO_METER),
                                fresh.stamp,
                            );
                            self.flows.set_decision(handle, d);
                            if d.remaps() || had_remaps {
                                self.flows.set_actions(handle, actions);
                            }
                        }
                    }
                }
                let level = self.metered(&d, frame.len(), c);
                (packet::apply_forward(frame, p, &actions), level)
            }
            Some(hit) => {
                let d = hit.decision;
                let report = packet::apply_reverse(frame, p, hit.reverse);
                (report, self.metered(&d, frame.len(), c))
            }
            None => {
                let (d, actions) = self.decide(key, flags, now, c);
                let level = self.metered(&d, frame.len(), c);
                if p.fragment() == Fragment::NonFirst {
                    // No ports: not a flow of its own. IP-header actions still apply.
                    (packet::apply_forward(frame, p, &actions), level)
                } else {
                    let reverse = ReverseRewrite::for_forward(key, &actions);
                    match self.flows.insert(*key, reverse, actions, d, flags, now) {
                        Ok(_) => (packet::apply_forward(frame, p, &actions), level),
                        // Another flow owns the reply key: a remap would make the
                        // two indistinguishable, so this one goes unrewritten
                        // (counted in the table's conflicts, as is the `NoRoom`
                        // a table smaller than a probe window could give).
                        Err(_) => (ApplyReport::default(), level),
                    }
                }
            }
        };
        for (a, o) in report.requested() {
            c.action(a, o);
        }
        level
    }

    /// Classifies a new flow: static rules, then the policy tables. Returns
    /// its decision and its forward actions.
    #[inline]
    fn decide(
        &self,
        key: &FlowKey,
        flags: u8,
        now: u64,
        c: &PathCounters,
    ) -> (FlowDecision, ActionSet) {
        if let Some((rule, actions)) = self.rules.classify(key) {
            c.rule_hit(rule);
            let d = FlowDecision::new(
                &actions,
                self.default_level(),
                true,
                NO_METER,
                Default::default(),
            );
            return (d, actions);
        }
        let cl = self.tables.classify(key);
        c.classified(cl.source, false, cl.decision.level, now);
        let mut actions = cl.decision.actions;
        let opens = key.proto != PROTO_TCP || flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        if !opens {
            actions.dst_port = None;
            actions.dst_addr = None;
        }
        let d = FlowDecision::new(
            &actions,
            cl.decision.level,
            false,
            cl.decision.meter.unwrap_or(NO_METER),
            cl.stamp,
        );
        (d, actions)
    }
}

/// A shaped egress: the scheduler of the lane's tx port, and the burst it
/// fills for tx.
pub struct LaneSched {
    pub sched: Scheduler<Mbuf>,
    pub out: Burst,
    /// Converts the TSC to the scheduler's nanoseconds.
    pub ns_per_tsc: f64,
    /// Plain FIFO (the comparison mode): every packet at best effort, one
    /// queue.
    pub fifo: bool,
    /// Passes since start (throttles counter publication).
    pub passes: u32,
}

impl SchedPacket for Mbuf {
    #[inline]
    fn frame_len(&self) -> u32 {
        self.pkt_len()
    }
}

/// Per-packet scheduling input: level and flow hash, by burst position.
pub type Meta = [(u8, u32); MAX_BURST];

/// A worker's whole state. Moved onto its lcore by [`crate::dpdk::launch`].
pub struct Worker {
    pub lcore: u32,
    pub lanes: Vec<Lane>,
    pub burst: usize,
    pub counters: Arc<WorkerCounters>,
    pub stop: Arc<AtomicBool>,
    pub pipeline: Option<Pipeline>,
    /// Converts the TSC to nanoseconds (rx-to-tx latency).
    pub ns_per_tsc: f64,
}

impl Worker {
    /// Polls until the stop flag is raised, then empties the schedulers
    /// (their packets are freed and counted as drained) and returns 0.
    /// Once this returns, every received packet has been sent or counted.
    pub fn run(mut self) -> i32 {
        let mut burst = Burst::new();
        let mut meta: Meta = [(BEST_EFFORT, 0); MAX_BURST];
        while !self.stop.load(Relaxed) {
            self.poll(&mut burst, &mut meta);
        }
        for lane in &mut self.lanes {
            if let Some(ls) = &mut lane.sched {
                let mut n = 0u64;
                ls.sched.drain(|m| {
                    n += 1;
                    drop(m);
                });
                ls.out.clear();
                let c = self.counters.lane(lane.direction);
                c.add_drained(n);
                self.counters
                    .sched(lane.direction)
                    .publish(|l| ls.sched.counters(l));
            }
        }
        0
    }

    /// One pass over every lane; returns the packets received.
    #[inline]
    pub fn poll(&mut self, burst: &mut Burst, meta: &mut Meta) -> usize {
        let mut total = 0;
        for lane in &mut self.lanes {
            let n = lane.rx.rx(burst, self.burst);
            // Each received packet's latency runs from here to its tx.
            let rx_tsc = if n > 0 { dpdk::rdtsc() } else { 0 };
            let scheduled = lane.sched.is_some();
            let counters = self.counters.lane(lane.direction);
            let mut bytes = 0;
            let mut metering = false;
            if n > 0 {
                total += n;
                bytes = burst
                    .as_slice()
                    .iter()
                    .map(|m| u64::from(m.pkt_len()))
                    .sum();
                counters.add_rx(n as u64, bytes);
                if let Some(pipe) = &mut self.pipeline {
                    let path = &self.counters.path;
                    pipe.tables.refresh();
                    let level = pipe.default_level();
                    match pipe.mode(scheduled) {
                        Mode::Bridge => path.level(level, n as u64, bytes),
                        Mode::Stateless => {
                            for m in burst.as_mut_slice() {
                                pipe.process_stateless(m.data_mut(), lane.direction, path);
                            }
                            path.level(level, n as u64, bytes);
                        }
                        Mode::Flows => {
                            let now = rx_tsc;
                            pipe.process_burst(
                                burst.as_mut_slice(),
                                lane.direction,
                                now,
                                path,
                                meta,
                            );
                            metering = true;
                            pipe.tick_sweep(now);
                            path.publish_flows(&pipe.flows.counters(), pipe.flows.len());
                        }
                    }
                }
            }
            // Consumed control packets leave for the control thread (a full
            // ring drops them); copies were made while processing.
            let punt = self.pipeline.as_mut().and_then(|p| {
                let copies = p.take_copies();
                // Borrowed, not cloned: an Arc clone per pass would bounce
                // its shared counter between the cores.
                let p: &Pipeline = p;
                p.punt.as_ref().map(|pp| (&*pp.rings, copies))
            });
            let mut consumed = (0u64, 0u64);
            let mut give = |m: Mbuf| {
                consumed.0 += 1;
                if let Some((rings, _)) = &punt {
                    if rings
                        .to_control
                        .push(Punted {
                            mbuf: m,
                            consumed: true,
                        })
                        .is_err()
                    {
                        consumed.1 += 1;
                    }
                }
            };
            // Answers from the control thread leave by the subscriber port.
            let replies = punt
                .as_ref()
                .filter(|_| lane.direction == Direction::Downstream)
                .map(|(r, _)| &r.replies)
                .filter(|r| !r.is_empty());
            let mut injected = 0u64;
            match &mut lane.sched {
                None => {
                    if let Some(r) = replies {
                        while burst.len() < MAX_BURST {
                            let Some(m) = r.pop() else { break };
                            bytes += u64::from(m.pkt_len());
                            // Past the processed frames: meta never covers them.
                            meta[burst.len()] = (0, 0);
                            let _ = burst.push(m);
                            injected += 1;
                        }
                    }
                    if n > 0 || injected > 0 {
                        if metering {
                            // Red packets of metered bindings go no further;
                            // consumed control packets leave for the control
                            // thread.
                            let mut red = 0u64;
                            burst.extract(
                                |i| meta.get(i).is_some_and(|m| m.0 >= PUNT_CONSUME),
                                |i, m| {
                                    if meta.get(i).is_some_and(|x| x.0 == PUNT_CONSUME) {
                                        give(m);
                                    } else {
                                        red += 1;
                                    }
                                },
                            );
                            counters.add_sched_drops(red);
                            bytes = burst
                                .as_slice()
                                .iter()
                                .map(|m| u64::from(m.pkt_len()))
                                .sum();
                        }
                        let out = lane.tx.tx(burst);
                        counters.add_tx(
                            out.sent as u64,
                            bytes - out.dropped_bytes,
                            out.dropped as u64,
                        );
                        if n > 0 {
                            let ns = (dpdk::rdtsc().wrapping_sub(rx_tsc) as f64 * self.ns_per_tsc)
                                as u64;
                            counters.add_latency(ns, (out.sent as u64).saturating_sub(injected));
                        }
                    }
                }
                Some(ls) => {
                    if n == 0 && ls.sched.is_empty() && replies.is_none() {
                        continue;
                    }
                    let now = (dpdk::rdtsc() as f64 * ls.ns_per_tsc) as u64;
                    // Stamped with their rx time: the sojourn is rx to dequeue.
                    let rx_ns = (rx_tsc as f64 * ls.ns_per_tsc) as u64;
                    let mut refused = 0u64;
                    burst.drain(|i, m| {
                        let (level, hash) = match meta.get(i) {
                            Some(&(METER_DROP, _)) => {
                                // Red, over its binding's peak: freed here.
                                refused += 1;
                                return;
                            }
                            Some(&(PUNT_CONSUME, _)) => return give(m),
                            Some(&m) if !ls.fifo => m,
                            _ => (BEST_EFFORT, 0),
                        };
                        if ls.sched.enqueue(m, level, hash, rx_ns).is_err() {
                            // Handed back by a full level: freed here.
                            refused += 1;
                        }
                    });
                    if let Some(r) = replies {
                        while let Some(m) = r.pop() {
                            // Network control: ahead of everything queued.
                            if ls.sched.enqueue(m, 0, 0, now).is_err() {
                                refused += 1;
                            }
                            injected += 1;
                        }
                    }
                    let mut aqm = 0u64;
                    let out = &mut ls.out;
                    let sojourn = self.counters.sched(lane.direction);
                    ls.sched.dequeue(
                        now,
                        self.burst,
                        |m, level, ns| {
                            sojourn.record(level, ns);
                            // At most `burst` packets: the burst has room.
                            let _ = out.push(m);
                        },
                        |_, _| aqm += 1,
                    );
                    counters.add_sched_drops(refused + aqm);
                    if !out.is_empty() {
                        let bytes: u64 =
                            out.as_slice().iter().map(|m| u64::from(m.pkt_len())).sum();
                        let sent = lane.tx.tx(out);
                        counters.add_tx(
                            sent.sent as u64,
                            bytes - sent.dropped_bytes,
                            sent.dropped as u64,
                        );
                    }
                    // The level counters are copied every 16th pass (and at
                    // exit): a few microseconds stale, 64 stores saved per burst.
                    ls.passes = ls.passes.wrapping_add(1);
                    if ls.passes % 16 == 0 {
                        sojourn.publish(|l| ls.sched.counters(l));
                    }
                }
            }
            if let Some((_, (copies, copy_drops))) = punt {
                counters.add_punts(consumed.0, consumed.1, copies, copy_drops);
                if injected > 0 {
                    counters.add_injected(injected);
                }
            }
        }
        // An idle pass sweeps too, so that every entry is looked at well
        // within the flow table's clock range whatever the traffic (see
        // `flow::TIMEOUT_QUANTA`): 256 slots every 256 idle passes.
        if total == 0 {
            if let Some(pipe) = &mut self.pipeline {
                pipe.tick_sweep(dpdk::rdtsc());
            }
        }
        total
    }
}
