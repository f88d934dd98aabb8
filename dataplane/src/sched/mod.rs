//! The egress scheduler: where Sluice decides who waits when a port is
//! congested. Pure arithmetic over an injected clock (nanoseconds), generic
//! over the packet handle, so every behaviour is tested deterministically;
//! the worker instantiates it with mbufs and the TSC.
//!
//! # Service discipline (per egress port, per worker)
//! Eight levels, numbered as in the policy model (0 highest):
//! - **Strict levels** (default 0-3: network control, voice, interactive,
//!   premium) are served first, highest first, each within its own
//!   **ceiling** (a token bucket, default 50 % of the port rate for
//!   premium, less above), so that they cannot starve the rest.
//! - **Shared levels** (default 4-7: standard, best effort, bulk,
//!   scavenger) share what is left by **deficit round robin** with weights
//!   (default 8, 4, 2, 1 MTU-sized quanta per round).
//! - **Work-conserving**: a strict level over its ceiling may still send
//!   when no shared level has anything to send (it borrows idle capacity;
//!   the ceiling only protects the others).
//! - **Flow fairness**: a level with `flow_queues > 1` hashes flows into
//!   that many sub-queues served by DRR with one-MTU quanta, so one bulk
//!   flow cannot starve another, nor delay a ping behind its queue (the
//!   reason people deploy CAKE/fq_codel). Defaults: 32 in best effort, 8
//!   in every other level but scavenger. A premium TCP flow held to its
//!   ceiling fills only its own sub-queue, not its level's.
//! - **AQM**: levels marked elastic (default: the shared ones) run CoDel
//!   (RFC 8289) per queue on the sojourn time, measured from each packet's
//!   enqueue timestamp. Defaults: target 5 ms, interval 100 ms.
//! - **Shaper**: with a port rate, nothing leaves faster than that rate,
//!   counting the Ethernet framing overhead per packet (preamble + SFD 8,
//!   inter-frame gap 12, FCS 4: 24 bytes by default; the frame length the
//!   port sees excludes the FCS). The bucket holds at most `burst_ns` of
//!   the rate (default 1 ms), at least one maximum-size frame. With no
//!   rate, the port's own backpressure rules: the worker asks for only as
//!   many packets as its TX ring took.
//! - **Bounded**: each level holds at most `max_packets` and `max_bytes`;
//!   a packet that would exceed them is refused at enqueue (tail drop,
//!   counted) and handed back to the caller to free.
//!
//! Every drop is counted by level and reason ([`DropReason`]); nothing
//! is ever held outside a queue, so a full scheduler loses no buffer.
use std::collections::VecDeque;

use thiserror::Error;

pub mod meter;

pub use meter::{Meter, MeterColor, MeterConfig, MeterTable, WorkerMeters};

/// Number of levels.
pub const LEVELS: usize = 8;

/// Bytes on the wire per frame beyond what the port counts: preamble and
/// SFD (8), inter-frame gap (12), FCS (4).
pub const ETHERNET_OVERHEAD: u32 = 24;

/// The largest frame the shaper must always be able to pass.
const MAX_FRAME: f64 = 1518.0 + ETHERNET_OVERHEAD as f64;

/// How a packet was lost in the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The level's packet or byte limit (tail drop).
    QueueFull,
    /// CoDel dropped it at dequeue.
    Aqm,
}

/// One level's configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LevelConfig {
    /// Served before every shared level (within its ceiling).
    pub strict: bool,
    /// Strict levels: the rate above which the level yields to the shared
    /// ones, bits/s. `None`: no ceiling.
    pub ceiling_bps: Option<u64>,
    /// Shared levels: DRR weight (quanta of one maximum frame per round).
    pub weight: u32,
    /// CoDel on this level's queues.
    pub aqm: bool,
    /// Sub-queues flows are hashed into (1: one FIFO).
    pub flow_queues: u32,
    pub max_packets: u32,
    pub max_bytes: u32,
}

/// CoDel parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodelConfig {
    pub target_ns: u64,
    pub interval_ns: u64,
}

impl Default for CodelConfig {
    fn default() -> Self {
        CodelConfig {
            target_ns: 5_000_000,
            interval_ns: 100_000_000,
        }
    }
}

/// A scheduler's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedConfig {
    /// The port's shaped rate, bits/s on the wire. `None`: unshaped.
    pub rate_bps: Option<u64>,
    /// Framing bytes counted per packet by the shaper and ceilings.
    pub overhead_bytes: u32,
    /// The shaper's bucket depth, in nanoseconds of the rate.
    pub burst_ns: u64,
    pub levels: [LevelConfig; LEVELS],
    pub codel: CodelConfig,
}

impl SchedConfig {
    /// The reference discipline of the module doc for a port shaped to
    /// `rate_bps` (or unshaped), with `queue_packets` per level.
    pub fn reference(rate_bps: Option<u64>, queue_packets: u32) -> SchedConfig {
        let ceiling = |pct: u64| rate_bps.map(|r| r / 100 * pct);
        let strict = |pct| LevelConfig {
            strict: true,
            ceiling_bps: ceiling(pct),
            weight: 1,
            aqm: false,
            flow_queues: 8,
            max_packets: queue_packets,
            max_bytes: queue_packets.saturating_mul(1600),
        };
        let shared = |weight, flow_queues| LevelConfig {
            strict: false,
            ceiling_bps: None,
            weight,
            aqm: true,
            flow_queues,
            max_packets: queue_packets,
            max_bytes: queue_packets.saturating_mul(1600),
        };
        SchedConfig {
            rate_bps,
            overhead_bytes: ETHERNET_OVERHEAD,
            burst_ns: 1_000_000,
            levels: [
                strict(10),
                strict(30),
                strict(40),
                strict(50),
                shared(8, 8),
                shared(4, 32),
                shared(2, 8),
                shared(1, 1),
            ],
            codel: CodelConfig::default(),
        }
    }
}

/// A configuration the scheduler cannot run.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SchedError {
    #[error("level {level}: {what}")]
    Level { level: usize, what: &'static str },
    #[error("{0}")]
    Config(&'static str),
}

/// What the scheduler needs to know of a packet.
pub trait Packet {
    /// Frame length in bytes as the port counts it (no FCS).
    fn frame_len(&self) -> u32;
}

/// A token bucket in bytes over the injected clock.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    bytes_per_ns: f64,
    depth: f64,
    tokens: f64,
    last: u64,
}

impl Bucket {
    fn new(bps: u64, burst_ns: u64) -> Bucket {
        let bytes_per_ns = bps as f64 / 8e9;
        let depth = (bytes_per_ns * burst_ns as f64).max(MAX_FRAME);
        // Empty at start: the first packets go at the rate, not in a burst.
        Bucket {
            bytes_per_ns,
            depth,
            tokens: 0.0,
            last: 0,
        }
    }

    #[inline]
    fn refill(&mut self, now: u64) {
        if now > self.last {
            self.tokens =
                (self.tokens + (now - self.last) as f64 * self.bytes_per_ns).min(self.depth);
            self.last = now;
        }
    }

    /// Whether `bytes` may go now (the bucket may go negative by one
    /// packet: it is charged after, so a packet larger than what is left
    /// waits only until the balance is positive).
    #[inline]
    fn allows(&self) -> bool {
        self.tokens > 0.0
    }

    #[inline]
    fn charge(&mut self, bytes: f64) {
        self.tokens -= bytes;
    }
}

/// A queued packet with its enqueue time.
struct Queued<P> {
    p: P,
    at: u64,
    len: u32,
}

/// CoDel state of one queue (RFC 8289, section 5).
#[derive(Debug, Clone, Copy, Default)]
struct Codel {
    first_above: u64,
    drop_next: u64,
    count: u32,
    last_count: u32,
    dropping: bool,
}

impl Codel {
    fn control_law(&self, t: u64, interval: u64) -> u64 {
        t + (interval as f64 / f64::from(self.count.max(1)).sqrt()) as u64
    }

    /// RFC 8289 `dodequeue`'s verdict for a packet of this sojourn: may it
    /// count toward dropping (`ok_to_drop`)?
    fn ok_to_drop(&mut self, sojourn: u64, now: u64, backlog_bytes: u64, c: &CodelConfig) -> bool {
        if sojourn < c.target_ns || backlog_bytes <= MAX_FRAME as u64 {
            self.first_above = 0;
            return false;
        }
        if self.first_above == 0 {
            self.first_above = now + c.interval_ns;
            return false;
        }
        now >= self.first_above
    }
}

/// One FIFO with its CoDel state.
struct Fifo<P> {
    q: VecDeque<Queued<P>>,
    bytes: u64,
    codel: Codel,
    deficit: i64,
}

/// The index after `i` in a ring of `n` (no division on the fast path).
#[inline]
fn next(i: usize, n: usize) -> usize {
    if i + 1 >= n {
        0
    } else {
        i + 1
    }
}

/// Ways of the set-associative flow-queue lookup.
const WAYS: usize = 8;

/// The flow queue of `hash` among `fifos`: set-associative, as CAKE does.
/// The hash picks a home queue and its set of [`WAYS`] neighbours; the
/// flow goes to the queue of the set already holding it, else to an empty
/// one, else (more than eight busy flows in the set) shares its home
/// queue. So two flows share a queue only when a set is full, not on
/// every hash collision.
#[inline]
fn flow_queue(tags: &[u64], hash: u32) -> usize {
    let n = tags.len();
    if n <= 1 {
        return 0;
    }
    let home = ((u64::from(hash) * n as u64) >> 32) as usize;
    let want = BUSY | u64::from(hash);
    // The common case first: the flow is already in its home queue.
    if tags.get(home) == Some(&want) {
        return home;
    }
    // `n` is a multiple of WAYS (checked at construction): the set is the
    // aligned group of WAYS around `home` (one cache line of tags).
    let base = home & !(WAYS - 1);
    let mut empty = None;
    for k in 0..WAYS {
        let i = base + ((home + k) & (WAYS - 1));
        match tags.get(i) {
            Some(&0) => {
                empty.get_or_insert(i);
            }
            Some(&t) if t == want => return i,
            _ => {}
        }
    }
    empty.unwrap_or(home)
}

/// A [`Level::tags`] entry's mark of a non-empty queue.
const BUSY: u64 = 1 << 32;

impl<P> Fifo<P> {
    fn new(cap: usize) -> Fifo<P> {
        Fifo {
            q: VecDeque::with_capacity(cap),
            bytes: 0,
            codel: Codel::default(),
            deficit: 0,
        }
    }

    fn pop(&mut self) -> Option<Queued<P>> {
        let x = self.q.pop_front()?;
        self.bytes -= u64::from(x.len);
        Some(x)
    }
}

/// What [`Scheduler::take`] did.
enum Taken<P> {
    Sent(Queued<P>),
    Dropped,
    Empty,
}

/// Per-level counters (the worker publishes them; `stats` reads them back
/// into a [`crate::stats::SchedLevelSnapshot`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LevelCounters {
    pub enqueued: u64,
    pub enqueued_bytes: u64,
    pub sent: u64,
    pub sent_bytes: u64,
    pub dropped_full: u64,
    pub dropped_aqm: u64,
    pub depth: u64,
    pub depth_bytes: u64,
}

impl LevelCounters {
    /// The counters as an array, in field order (how workers publish them).
    pub fn to_array(self) -> [u64; 8] {
        [
            self.enqueued,
            self.enqueued_bytes,
            self.sent,
            self.sent_bytes,
            self.dropped_full,
            self.dropped_aqm,
            self.depth,
            self.depth_bytes,
        ]
    }

    /// The inverse of [`LevelCounters::to_array`].
    pub fn from_array(a: [u64; 8]) -> LevelCounters {
        let [enqueued, enqueued_bytes, sent, sent_bytes, dropped_full, dropped_aqm, depth, depth_bytes] =
            a;
        LevelCounters {
            enqueued,
            enqueued_bytes,
            sent,
            sent_bytes,
            dropped_full,
            dropped_aqm,
            depth,
            depth_bytes,
        }
    }

    /// Another worker's counters of the same level, added.
    pub fn add(&mut self, o: &LevelCounters) {
        let (a, b) = (self.to_array(), o.to_array());
        *self = LevelCounters::from_array(std::array::from_fn(|i| a[i] + b[i]));
    }

    /// What happened since `prev`; the depths stay current.
    pub fn since(&self, prev: &LevelCounters) -> LevelCounters {
        let (a, b) = (self.to_array(), prev.to_array());
        LevelCounters {
            depth: self.depth,
            depth_bytes: self.depth_bytes,
            ..LevelCounters::from_array(std::array::from_fn(|i| a[i].saturating_sub(b[i])))
        }
    }
}

struct Level<P> {
    cfg: LevelConfig,
    fifos: Vec<Fifo<P>>,
    /// Per flow queue: `BUSY | flow hash` while it holds packets, else 0
    /// (what [`flow_queue`] scans: a set is one cache line).
    tags: Vec<u64>,
    /// Round-robin position among `fifos` (flow queues).
    next: usize,
    /// The flow queue at `next` has not had its quantum for this turn.
    flow_fresh: bool,
    ceiling: Option<Bucket>,
    packets: u32,
    bytes: u64,
    deficit: i64,
    counters: LevelCounters,
}

/// The scheduler of one egress port on one worker.
pub struct Scheduler<P> {
    cfg: SchedConfig,
    levels: Vec<Level<P>>,
    shaper: Option<Bucket>,
    /// DRR position among the shared levels.
    drr_next: usize,
    /// The level at `drr_next` has not had its quantum for this turn.
    drr_fresh: bool,
    queued: u32,
}

impl<P: Packet> Scheduler<P> {
    /// Allocates every queue up front (nothing allocates afterwards).
    pub fn new(cfg: SchedConfig) -> Result<Scheduler<P>, SchedError> {
        if cfg.rate_bps == Some(0) {
            return Err(SchedError::Config("port rate must be above 0 bit/s"));
        }
        let mut levels = Vec::with_capacity(LEVELS);
        for (i, l) in cfg.levels.iter().enumerate() {
            let bad = |what| SchedError::Level { level: i, what };
            if l.max_packets == 0 || l.max_bytes < MAX_FRAME as u32 {
                return Err(bad("queue limits must hold at least one full-size frame"));
            }
            let fq = l.flow_queues as usize;
            if !(fq == 1 || (fq.is_multiple_of(WAYS) && (WAYS..=1024).contains(&fq))) {
                return Err(bad("flow queues must be 1, or a multiple of 8 up to 1024"));
            }
            if !l.strict && l.weight == 0 {
                return Err(bad("a shared level needs a weight of at least 1"));
            }
            if l.ceiling_bps == Some(0) {
                return Err(bad("a ceiling must be above 0 bit/s"));
            }
            // One flow may hold up to a quarter of its level (the level's
            // limits still bound the total).
            let per = if l.flow_queues == 1 {
                l.max_packets as usize
            } else {
                (l.max_packets as usize / 4).max(16)
            };
            levels.push(Level {
                cfg: *l,
                fifos: (0..l.flow_queues).map(|_| Fifo::new(per)).collect(),
                tags: vec![0; l.flow_queues as usize],
                next: 0,
                flow_fresh: true,
                ceiling: l.ceiling_bps.map(|r| Bucket::new(r, cfg.burst_ns)),
                packets: 0,
                bytes: 0,
                deficit: 0,
                counters: LevelCounters::default(),
            });
        }
        Ok(Scheduler {
            shaper: cfg.rate_bps.map(|r| Bucket::new(r, cfg.burst_ns)),
            cfg,
            levels,
            drr_next: 0,
            drr_fresh: true,
            queued: 0,
        })
    }

    pub fn config(&self) -> &SchedConfig {
        &self.cfg
    }

    /// Packets queued over all levels.
    pub fn len(&self) -> u32 {
        self.queued
    }

    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    pub fn counters(&self, level: usize) -> LevelCounters {
        self.levels
            .get(level)
            .map_or_else(LevelCounters::default, |l| LevelCounters {
                depth: u64::from(l.packets),
                depth_bytes: l.bytes,
                ..l.counters
            })
    }

    /// Queues `p` at `level` (clamped to the lowest), in the sub-queue of
    /// `flow_hash`. Refused (tail drop, counted) when the level is full:
    /// the packet comes back for the caller to free.
    #[inline]
    pub fn enqueue(&mut self, p: P, level: u8, flow_hash: u32, now: u64) -> Result<(), P> {
        let li = usize::from(level).min(LEVELS - 1);
        let len = p.frame_len();
        let Some(l) = self.levels.get_mut(li) else {
            return Err(p);
        };
        if l.packets >= l.cfg.max_packets || l.bytes + u64::from(len) > u64::from(l.cfg.max_bytes) {
            l.counters.dropped_full += 1;
            return Err(p);
        }
        let fi = flow_queue(&l.tags, flow_hash);
        let Some(f) = l.fifos.get_mut(fi) else {
            return Err(p);
        };
        if f.q.len() == f.q.capacity() {
            // One flow filled its share of a flow-queued level.
            l.counters.dropped_full += 1;
            return Err(p);
        }
        if f.q.is_empty() {
            if let Some(t) = l.tags.get_mut(fi) {
                *t = BUSY | u64::from(flow_hash);
            }
        }
        f.q.push_back(Queued { p, at: now, len });
        f.bytes += u64::from(len);
        l.packets += 1;
        l.bytes += u64::from(len);
        l.counters.enqueued += 1;
        l.counters.enqueued_bytes += u64::from(len);
        self.queued += 1;
        Ok(())
    }

    /// Takes up to `max` packets that may leave now, in service order,
    /// passing each to `send(packet, level, sojourn_ns)`; packets CoDel
    /// drops go to `drop(packet, level)`. Returns how many were sent.
    pub fn dequeue(
        &mut self,
        now: u64,
        max: usize,
        mut send: impl FnMut(P, u8, u64),
        mut drop: impl FnMut(P, u8),
    ) -> usize {
        let mut sent = 0;
        if let Some(s) = &mut self.shaper {
            s.refill(now);
        }
        for l in &mut self.levels {
            if let Some(c) = &mut l.ceiling {
                c.refill(now);
            }
        }
        while sent < max && self.queued > 0 {
            if self.shaper.as_ref().is_some_and(|s| !s.allows()) {
                break;
            }
            let Some(li) = self.pick() else { break };
            match self.take(li, now, &mut drop) {
                Taken::Sent(q) => {
                    let wire = f64::from(q.len + self.cfg.overhead_bytes);
                    if let Some(s) = &mut self.shaper {
                        s.charge(wire);
                    }
                    let l = &mut self.levels[li];
                    if let Some(c) = &mut l.ceiling {
                        c.charge(wire);
                    }
                    l.counters.sent += 1;
                    l.counters.sent_bytes += u64::from(q.len);
                    send(q.p, li as u8, now.saturating_sub(q.at));
                    sent += 1;
                }
                Taken::Dropped => {}
                // Counts out of step: never expected; stop rather than spin.
                Taken::Empty => break,
            }
        }
        sent
    }

    /// The level to serve next (see the module doc).
    fn pick(&mut self) -> Option<usize> {
        // 1. Strict levels within their ceiling, highest first.
        for (i, l) in self.levels.iter().enumerate() {
            if l.cfg.strict && l.packets > 0 && l.ceiling.as_ref().is_none_or(Bucket::allows) {
                return Some(i);
            }
        }
        // 2. Shared levels by deficit round robin: a level's turn adds its
        //    quantum once; it is served while its deficit covers its next
        //    packet, then the turn passes.
        if self.levels.iter().any(|l| !l.cfg.strict && l.packets > 0) {
            let n = self.levels.len();
            loop {
                let i = if self.drr_next < n { self.drr_next } else { 0 };
                let fresh = self.drr_fresh;
                let l = &mut self.levels[i];
                if l.cfg.strict || l.packets == 0 {
                    l.deficit = 0;
                    self.drr_next = next(i, n);
                    self.drr_fresh = true;
                    continue;
                }
                if fresh {
                    l.deficit += i64::from(l.cfg.weight) * MAX_FRAME as i64;
                    self.drr_fresh = false;
                }
                if l.deficit >= Self::head_len(l) {
                    return Some(i);
                }
                self.drr_next = next(i, n);
                self.drr_fresh = true;
            }
        }
        // 3. Work conservation: strict levels over their ceiling.
        self.levels
            .iter()
            .position(|l| l.cfg.strict && l.packets > 0)
    }

    /// The length of the packet a level would send next (its current flow
    /// queue's head).
    fn head_len(l: &Level<P>) -> i64 {
        let n = l.fifos.len();
        (0..n)
            .map(|k| {
                let i = l.next + k;
                if i >= n {
                    i - n
                } else {
                    i
                }
            })
            .find_map(|k| l.fifos[k].q.front())
            .map_or(0, |q| i64::from(q.len))
    }

    /// The flow queue of level `l` to serve next: deficit round robin with
    /// a quantum of one maximum frame, as for the levels.
    fn pick_flow(l: &mut Level<P>) -> usize {
        let n = l.fifos.len();
        if n == 1 {
            return 0;
        }
        loop {
            let fi = if l.next < n { l.next } else { 0 };
            let fresh = l.flow_fresh;
            let f = &mut l.fifos[fi];
            match f.q.front() {
                None => {
                    f.deficit = 0;
                }
                Some(h) => {
                    if fresh {
                        f.deficit += MAX_FRAME as i64;
                        l.flow_fresh = false;
                    }
                    if f.deficit >= i64::from(h.len) {
                        return fi;
                    }
                }
            }
            l.next = next(fi, n);
            l.flow_fresh = true;
        }
    }

    /// Removes the next packet of level `li` (which has packets): sent, or
    /// dropped by CoDel.
    fn take(&mut self, li: usize, now: u64, drop: &mut impl FnMut(P, u8)) -> Taken<P> {
        let codel_cfg = self.cfg.codel;
        let l = &mut self.levels[li];
        let fi = Self::pick_flow(l);
        let aqm = l.cfg.aqm;
        let strict = l.cfg.strict;
        let f = &mut l.fifos[fi];
        let Some(q) = f.pop() else {
            return Taken::Empty;
        };
        if f.q.is_empty() {
            if let Some(t) = l.tags.get_mut(fi) {
                *t = 0;
            }
        }
        f.deficit -= i64::from(q.len);
        l.packets -= 1;
        l.bytes -= u64::from(q.len);
        self.queued -= 1;
        if !strict {
            l.deficit -= i64::from(q.len);
        }
        if !aqm {
            return Taken::Sent(q);
        }
        // CoDel (RFC 8289 dequeue).
        let sojourn = now.saturating_sub(q.at);
        let ok = f
            .codel
            .ok_to_drop(sojourn, now, f.bytes + u64::from(q.len), &codel_cfg);
        let c = &mut f.codel;
        if c.dropping {
            if !ok {
                c.dropping = false;
                return Taken::Sent(q);
            }
            if now >= c.drop_next {
                c.count += 1;
                c.drop_next = c.control_law(c.drop_next, codel_cfg.interval_ns);
                l.counters.dropped_aqm += 1;
                drop(q.p, li as u8);
                return Taken::Dropped;
            }
            return Taken::Sent(q);
        }
        if ok {
            c.dropping = true;
            let delta = c.count.saturating_sub(c.last_count);
            c.count = if delta > 1 && now.saturating_sub(c.drop_next) < 16 * codel_cfg.interval_ns {
                delta
            } else {
                1
            };
            c.last_count = c.count;
            c.drop_next = c.control_law(now, codel_cfg.interval_ns);
            l.counters.dropped_aqm += 1;
            drop(q.p, li as u8);
            return Taken::Dropped;
        }
        Taken::Sent(q)
    }

    /// Empties every queue (shutdown), passing each packet to `drop`.
    pub fn drain(&mut self, mut drop: impl FnMut(P)) {
        for l in &mut self.levels {
            for f in &mut l.fifos {
                while let Some(q) = f.pop() {
                    drop(q.p);
                }
            }
            l.packets = 0;
            l.bytes = 0;
            l.tags.iter_mut().for_each(|t| *t = 0);
        }
        self.queued = 0;
    }
}

#[cfg(test)]
mod tests;
