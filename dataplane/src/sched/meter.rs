//! Per-binding meters: a two-rate three-color meter (RFC 2698, color
//! blind) over the injected clock. A binding's committed rate is its
//! guarantee, its peak rate its ceiling:
//! - **green** (within committed): the binding's own level;
//! - **yellow** (above committed, within peak): still its own level
//!   (counted);
//! - **red** (above peak): dropped, or demoted to best effort, as
//!   `scheduler.over_peak` says (the worker decides). Counted either way.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// The meters' rates, shared: the control thread (the one writer) sets a
/// meter's committed and peak rate and bumps its generation; each worker
/// keeps its own bucket state per meter ([`WorkerMeters`]) and restarts it
/// when it sees a new generation. A meter therefore meters one worker's
/// share of a binding's traffic (with symmetric RSS, a flow stays on one
/// worker; a binding with flows on several workers gets the rate on each).
pub struct MeterTable {
    slots: Box<[MeterSlot]>,
}

#[derive(Default)]
struct MeterSlot {
    committed: AtomicU64,
    peak: AtomicU64,
    generation: AtomicU32,
}

impl MeterTable {
    pub fn new(capacity: u32) -> Arc<MeterTable> {
        Arc::new(MeterTable {
            slots: (0..capacity).map(|_| MeterSlot::default()).collect(),
        })
    }

    pub fn capacity(&self) -> u32 {
        self.slots.len() as u32
    }

    /// Sets meter `i`'s rates (the single writer only): the rates first,
    /// then the generation (release), so a worker that sees the new
    /// generation (acquire) sees the new rates.
    pub fn set(&self, i: u32, committed_bps: u64, peak_bps: u64) {
        if let Some(s) = self.slots.get(i as usize) {
            s.committed.store(committed_bps, Ordering::Relaxed);
            s.peak.store(peak_bps, Ordering::Relaxed);
            let g = s.generation.load(Ordering::Relaxed);
            s.generation.store(g.wrapping_add(1), Ordering::Release);
        }
    }

    /// Meter `i`'s generation and rates.
    #[inline]
    fn get(&self, i: u32) -> Option<(u32, u64, u64)> {
        let s = self.slots.get(i as usize)?;
        let g = s.generation.load(Ordering::Acquire);
        Some((
            g,
            s.committed.load(Ordering::Relaxed),
            s.peak.load(Ordering::Relaxed),
        ))
    }

    /// Bytes of the shared rates.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.slots)
    }
}

/// One worker's bucket state for every meter of a [`MeterTable`].
pub struct WorkerMeters {
    table: Arc<MeterTable>,
    state: Vec<(u32, Meter)>,
    burst_ns: u64,
}

impl WorkerMeters {
    /// Preallocates a state per meter (never allocates afterwards).
    pub fn new(table: Arc<MeterTable>, burst_ns: u64) -> WorkerMeters {
        let idle = Meter::new(MeterConfig {
            committed_bps: 1,
            peak_bps: 1,
            burst_ns,
        });
        WorkerMeters {
            state: vec![(u32::MAX, idle); table.capacity() as usize],
            table,
            burst_ns,
        }
    }

    /// Colors a packet of `bytes` charged to meter `i` at `now` (ns); a
    /// meter the table does not have passes everything (green).
    #[inline]
    pub fn color(&mut self, i: u32, bytes: u32, now: u64) -> MeterColor {
        let Some((g, c, p)) = self.table.get(i) else {
            return MeterColor::Green;
        };
        let Some(st) = self.state.get_mut(i as usize) else {
            return MeterColor::Green;
        };
        if st.0 != g {
            *st = (
                g,
                Meter::new(MeterConfig {
                    committed_bps: c,
                    peak_bps: p,
                    burst_ns: self.burst_ns,
                }),
            );
            st.1.last = now;
        }
        st.1.color(bytes, now)
    }
}

/// How a meter treats its binding's packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeterConfig {
    pub committed_bps: u64,
    pub peak_bps: u64,
    /// Bucket depths, in nanoseconds of each rate (at least one frame).
    pub burst_ns: u64,
}

/// A packet's color.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeterColor {
    Green,
    Yellow,
    Red,
}

/// One meter's state.
#[derive(Debug, Clone, Copy)]
pub struct Meter {
    c_rate: f64,
    p_rate: f64,
    c_depth: f64,
    p_depth: f64,
    c: f64,
    p: f64,
    last: u64,
}

/// The largest frame a bucket must always hold.
const MIN_DEPTH: f64 = 1518.0;

impl Meter {
    pub fn new(cfg: MeterConfig) -> Meter {
        let c_rate = cfg.committed_bps as f64 / 8e9;
        let p_rate = cfg.peak_bps.max(cfg.committed_bps) as f64 / 8e9;
        let c_depth = (c_rate * cfg.burst_ns as f64).max(MIN_DEPTH);
        let p_depth = (p_rate * cfg.burst_ns as f64).max(MIN_DEPTH);
        Meter {
            c_rate,
            p_rate,
            c_depth,
            p_depth,
            c: c_depth,
            p: p_depth,
            last: 0,
        }
    }

    /// Colors a packet of `bytes` at `now` (ns) and charges the buckets.
    #[inline]
    pub fn color(&mut self, bytes: u32, now: u64) -> MeterColor {
        if now > self.last {
            let dt = (now - self.last) as f64;
            self.c = (self.c + dt * self.c_rate).min(self.c_depth);
            self.p = (self.p + dt * self.p_rate).min(self.p_depth);
            self.last = now;
        }
        let b = f64::from(bytes);
        if self.p < b {
            MeterColor::Red
        } else if self.c < b {
            self.p -= b;
            MeterColor::Yellow
        } else {
            self.p -= b;
            self.c -= b;
            MeterColor::Green
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter(c: u64, p: u64) -> Meter {
        Meter::new(MeterConfig {
            committed_bps: c,
            peak_bps: p,
            burst_ns: 1_000_000,
        })
    }

    #[test]
    fn offered_twice_the_peak_passes_the_peak_and_colors_the_committed_green() {
        // 10 Mbit/s committed, 20 peak; offer 40 Mbit/s of 1000 B frames
        // (5000 frames/s) for 1 s.
        let mut m = meter(10_000_000, 20_000_000);
        let (mut g, mut y, mut r) = (0u64, 0u64, 0u64);
        for i in 0..5000u64 {
            match m.color(1000, i * 200_000) {
                MeterColor::Green => g += 1,
                MeterColor::Yellow => y += 1,
                MeterColor::Red => r += 1,
            }
        }
        let mbit = |n: u64| n as f64 * 8000.0 / 1e6;
        assert!((mbit(g) - 10.0).abs() < 0.3, "green {} Mbit/s", mbit(g));
        assert!(
            (mbit(g + y) - 20.0).abs() < 0.4,
            "green+yellow {}",
            mbit(g + y)
        );
        assert!((mbit(r) - 20.0).abs() < 0.5, "red {}", mbit(r));
    }

    #[test]
    fn under_the_committed_rate_everything_is_green() {
        let mut m = meter(10_000_000, 10_000_000);
        for i in 0..1000u64 {
            // 8 Mbit/s.
            assert_eq!(m.color(1000, i * 1_000_000), MeterColor::Green);
        }
    }
}
