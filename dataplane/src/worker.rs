//! The poll-mode worker: one per configured core, running as a DPDK lcore.
//!
//! Each worker owns one rx queue and one tx queue on each port (its
//! "lanes"): subscriber rx -> upstream tx, and upstream rx -> subscriber tx.
//! With symmetric RSS both directions of a flow land on the same worker,
//! which is why each worker can own its flow table outright.
//!
//! Per packet, when there are rules: parse -> flow-table lookup (an
//! established flow keeps its decision; a reply gets the reverse rewrite)
//! -> on a miss, classify and insert -> rewrite with incremental checksums
//! -> forward. Without rules the worker is a plain bridge and does not parse.
//! The loop never locks, allocates, blocks or logs; counters are
//! single-writer atomics.
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use crate::classify::StaticRules;
use crate::dpdk::{self, Burst, RxQueue, TxQueue};
use crate::flow::{FlowDecision, FlowTable, Side};
use crate::packet::{self, ApplyReport, Fragment, ReverseRewrite};
use crate::stats::{Direction, PathCounters, WorkerCounters};

/// One direction through the appliance on one worker.
pub struct Lane {
    pub direction: Direction,
    pub rx: RxQueue,
    pub tx: TxQueue,
}

/// Classification and per-flow state: present when there is anything to
/// do to packets.
pub struct Pipeline {
    pub rules: Arc<StaticRules>,
    pub flows: FlowTable,
    /// Bursts since the last idle sweep.
    pub since_sweep: u32,
    /// Classify every packet and skip the flow table
    /// ([`StaticRules::stateless`]).
    pub stateless: bool,
}

/// The idle sweep runs once every `EXPIRE_EVERY` bursts over
/// `EXPIRE_BUDGET` consecutive entries. It is housekeeping only: a lookup
/// or insert that meets an expired entry treats it as gone, and a full
/// table evicts expired entries first. Run per burst it cost ~15 % of the
/// rule path (a cache miss per entry looked at), so it runs rarely.
const EXPIRE_EVERY: u32 = 256;
const EXPIRE_BUDGET: usize = 64;

impl Pipeline {
    /// Handles one frame travelling in `dir`; `now` is the burst's TSC.
    #[inline]
    pub fn process(&mut self, frame: &mut [u8], dir: Direction, now: u64, c: &PathCounters) {
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
        if self.stateless {
            if let Some((rule, actions)) = self.rules.classify(&key) {
                c.rule_hit(rule);
                for (a, o) in packet::apply_forward(frame, &p, &actions).requested() {
                    c.action(a, o);
                }
            }
            return;
        }
        let report = match self.flows.lookup(&key, p.tcp_flags(), now) {
            Some(hit) if hit.side == Side::Forward => {
                packet::apply_forward(frame, &p, &hit.decision.actions)
            }
            Some(hit) => packet::apply_reverse(frame, &p, hit.reverse),
            None => {
                let decided = self.rules.classify(&key);
                if let Some((rule, _)) = decided {
                    c.rule_hit(rule);
                }
                let actions = decided.map(|(_, a)| a).unwrap_or_default();
                if p.fragment() == Fragment::NonFirst {
                    // No ports: not a flow of its own. IP-header actions still apply.
                    packet::apply_forward(frame, &p, &actions)
                } else {
                    let reverse = ReverseRewrite::for_forward(&key, &actions);
                    let decision = FlowDecision {
                        generation: 0,
                        actions,
                    };
                    match self
                        .flows
                        .insert(key, reverse, decision, p.tcp_flags(), now)
                    {
                        Ok(_) => packet::apply_forward(frame, &p, &actions),
                        // Another flow owns the reply key: a remap would make the
                        // two indistinguishable, so this one goes unrewritten
                        // (counted in the table's conflicts).
                        Err(_) => ApplyReport::default(),
                    }
                }
            }
        };
        for (a, o) in report.requested() {
            c.action(a, o);
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
                let now = dpdk::rdtsc();
                let path = &self.counters.path;
                for m in burst.as_mut_slice() {
                    pipe.process(m.data_mut(), lane.direction, now, path);
                }
                pipe.since_sweep += 1;
                if pipe.since_sweep >= EXPIRE_EVERY {
                    pipe.since_sweep = 0;
                    pipe.flows.expire(now, EXPIRE_BUDGET);
                }
                path.publish_flows(&pipe.flows.counters(), pipe.flows.len());
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
