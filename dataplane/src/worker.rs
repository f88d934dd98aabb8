//! The poll-mode worker: one per configured core, running as a DPDK lcore.
//!
//! Each worker owns one rx queue and one tx queue on each port (its
//! "lanes"): subscriber rx -> upstream tx, and upstream rx -> subscriber tx.
//! With symmetric RSS both directions of a flow land on the same worker.
//! The loop never locks, allocates, blocks or logs; counters are published
//! once per burst.
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use crate::dpdk::{Burst, RxQueue, TxQueue};
use crate::stats::{Direction, WorkerCounters};

/// One direction through the appliance on one worker.
pub struct Lane {
    pub direction: Direction,
    pub rx: RxQueue,
    pub tx: TxQueue,
}

/// A worker's whole state. Moved onto its lcore by [`crate::dpdk::launch`].
pub struct Worker {
    pub lcore: u32,
    pub lanes: Vec<Lane>,
    pub burst: usize,
    pub counters: Arc<WorkerCounters>,
    pub stop: Arc<AtomicBool>,
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
