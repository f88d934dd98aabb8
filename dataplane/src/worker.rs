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
//!   no SP prefix, a default that rewrites nothing) and no flow holds
//!   reverse state: packets are not even parsed;
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
//!   every forward packet ([`TablesReader::is_current`]).
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
use crate::dpdk::{self, Burst, RxQueue, TxQueue};
use crate::flow::{FlowDecision, FlowTable, Side};
use crate::packet::{self, ActionSet, ApplyReport, FlowKey, Fragment, ReverseRewrite};
use crate::packet::{PROTO_TCP, TCP_ACK, TCP_SYN};
use crate::stats::{Direction, PathCounters, WorkerCounters};
use crate::tables::TablesReader;

/// One direction through the appliance on one worker.
pub struct Lane {
    pub direction: Direction,
    pub rx: RxQueue,
    pub tx: TxQueue,
}

/// Classification and per-flow state.
pub struct Pipeline {
    pub rules: Arc<StaticRules>,
    pub tables: TablesReader,
    pub flows: FlowTable,
    /// Bursts since the last idle sweep.
    pub since_sweep: u32,
}

/// How a burst is handled; see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Bridge,
    Stateless,
    Flows,
}

/// The idle sweep runs once every `EXPIRE_EVERY` bursts over
/// `EXPIRE_BUDGET` consecutive entries. It is housekeeping only: a lookup
/// or insert that meets an expired entry treats it as gone, and a full
/// table evicts expired entries first. Run per burst it cost ~15 % of the
/// rule path (a cache miss per entry looked at), so it runs rarely.
const EXPIRE_EVERY: u32 = 256;
const EXPIRE_BUDGET: usize = 64;

impl Pipeline {
    pub fn new(rules: Arc<StaticRules>, tables: TablesReader, flows: FlowTable) -> Pipeline {
        Pipeline {
            rules,
            tables,
            flows,
            since_sweep: 0,
        }
    }

    /// The path for the next burst (after [`TablesReader::refresh`]).
    #[inline]
    pub fn mode(&self) -> Mode {
        if !self.tables.is_inert() || !self.flows.is_empty() {
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
    /// stateless mode).
    #[inline]
    pub fn process_stateless(&mut self, frame: &mut [u8], dir: Direction, c: &PathCounters) {
        let p = match packet::parse(frame) {
            Ok(p) => p,
            Err(e) => {
                c.parse_error(e);
                return;
            }
        };
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

    /// Handles one frame travelling in `dir` through the flow table; `now`
    /// is the burst's TSC. Returns the packet's level.
    #[inline]
    pub fn process(&mut self, frame: &mut [u8], dir: Direction, now: u64, c: &PathCounters) -> u8 {
        let p = match packet::parse(frame) {
            Ok(p) => p,
            Err(e) => {
                c.parse_error(e);
                return self.default_level();
            }
        };
        let Some(key) = p.flow_key(frame, dir) else {
            return self.default_level();
        };
        let flags = p.tcp_flags();
        let (report, level) = match self.flows.lookup(&key, flags, now) {
            Some(hit) if hit.side == Side::Forward => {
                let mut d = *hit.decision;
                let handle = hit.handle;
                if !d.pinned && !self.tables.is_current(d.stamp) {
                    let fresh = self.tables.classify(&key);
                    c.classified(fresh.source, true);
                    d = FlowDecision {
                        actions: ActionSet {
                            // Remaps are fixed at the flow's start.
                            dst_port: d.actions.dst_port,
                            dst_addr: d.actions.dst_addr,
                            ..fresh.decision.actions
                        },
                        level: fresh.decision.level,
                        pinned: false,
                        stamp: fresh.stamp,
                    };
                    self.flows.set_decision(handle, d);
                }
                (packet::apply_forward(frame, &p, &d.actions), d.level)
            }
            Some(hit) => (
                packet::apply_reverse(frame, &p, hit.reverse),
                hit.decision.level,
            ),
            None => {
                let d = self.decide(&key, flags, c);
                if p.fragment() == Fragment::NonFirst {
                    // No ports: not a flow of its own. IP-header actions still apply.
                    (packet::apply_forward(frame, &p, &d.actions), d.level)
                } else {
                    let reverse = ReverseRewrite::for_forward(&key, &d.actions);
                    match self.flows.insert(key, reverse, d, flags, now) {
                        Ok(_) => (packet::apply_forward(frame, &p, &d.actions), d.level),
                        // Another flow owns the reply key: a remap would make the
                        // two indistinguishable, so this one goes unrewritten
                        // (counted in the table's conflicts).
                        Err(_) => (ApplyReport::default(), d.level),
                    }
                }
            }
        };
        for (a, o) in report.requested() {
            c.action(a, o);
        }
        level
    }

    /// Classifies a new flow: static rules, then the policy tables.
    #[inline]
    fn decide(&self, key: &FlowKey, flags: u8, c: &PathCounters) -> FlowDecision {
        if let Some((rule, actions)) = self.rules.classify(key) {
            c.rule_hit(rule);
            return FlowDecision {
                actions,
                level: self.default_level(),
                pinned: true,
                stamp: Default::default(),
            };
        }
        let cl = self.tables.classify(key);
        c.classified(cl.source, false);
        let mut actions = cl.decision.actions;
        let opens = key.proto != PROTO_TCP || flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        if !opens {
            actions.dst_port = None;
            actions.dst_addr = None;
        }
        FlowDecision {
            actions,
            level: cl.decision.level,
            pinned: false,
            stamp: cl.stamp,
        }
    }
}

/// A worker's whole state. Moved onto its lcore by [`crate::dpdk::launch`].
pub struct Worker {
    pub lcore: u32,
    pub lanes: Vec<Lane>,
    pub burst: usize,
    pub counters: Arc<WorkerCounters>,
    pub stop: Arc<AtomicBool>,
    pub pipeline: Option<Pipeline>,
}

impl Worker {
    /// Polls until the stop flag is raised, then returns 0. Nothing is held
    /// between bursts, so once the loop ends every received packet has been
    /// sent or counted as dropped.
    pub fn run(mut self) -> i32 {
        let mut burst = Burst::new();
        while !self.stop.load(Relaxed) {
            self.poll(&mut burst);
        }
        0
    }

    /// One pass over every lane; returns the packets received.
    #[inline]
    pub fn poll(&mut self, burst: &mut Burst) -> usize {
        let mut total = 0;
        for lane in &mut self.lanes {
            let n = lane.rx.rx(burst, self.burst);
            if n == 0 {
                continue;
            }
            total += n;
            let bytes: u64 = burst.as_slice().iter().map(|m| m.pkt_len() as u64).sum();
            let counters = self.counters.lane(lane.direction);
            counters.add_rx(n as u64, bytes);
            if let Some(pipe) = &mut self.pipeline {
                let path = &self.counters.path;
                pipe.tables.refresh();
                match pipe.mode() {
                    Mode::Bridge => path.level(pipe.default_level(), n as u64, bytes),
                    Mode::Stateless => {
                        for m in burst.as_mut_slice() {
                            pipe.process_stateless(m.data_mut(), lane.direction, path);
                        }
                        path.level(pipe.default_level(), n as u64, bytes);
                    }
                    Mode::Flows => {
                        let now = dpdk::rdtsc();
                        for m in burst.as_mut_slice() {
                            let len = m.pkt_len() as u64;
                            let level = pipe.process(m.data_mut(), lane.direction, now, path);
                            path.level(level, 1, len);
                        }
                        pipe.since_sweep += 1;
                        if pipe.since_sweep >= EXPIRE_EVERY {
                            pipe.since_sweep = 0;
                            pipe.flows.expire(now, EXPIRE_BUDGET);
                        }
                        path.publish_flows(&pipe.flows.counters(), pipe.flows.len());
                    }
                }
            }
            let out = lane.tx.tx(burst);
            counters.add_tx(
                out.sent as u64,
                bytes - out.dropped_bytes,
                out.dropped as u64,
            );
        }
        total
    }
}
