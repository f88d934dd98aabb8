//! Per-binding meters: a two-rate three-color meter (RFC 2698, color
//! blind) over the injected clock. A binding's committed rate is its
//! guarantee, its peak rate its ceiling:
//! - **green** (within committed): the binding's own level;
//! - **yellow** (above committed, within peak): still its own level, but
//!   first to suffer (the worker may lower it one level; see
//!   [`MeterConfig::demote_yellow`]);
//! - **red** (above peak): dropped, or demoted to best effort, as the
//!   binding's meter is configured. Counted either way.

/// How a meter treats its binding's packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeterConfig {
    pub committed_bps: u64,
    pub peak_bps: u64,
    /// Bucket depths, in nanoseconds of each rate (at least one frame).
    pub burst_ns: u64,
    /// Red packets are dropped (true) or sent at best effort (false).
    pub drop_red: bool,
    /// Yellow packets go one level lower.
    pub demote_yellow: bool,
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
    cfg: MeterConfig,
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
            cfg,
            c_rate,
            p_rate,
            c_depth,
            p_depth,
            c: c_depth,
            p: p_depth,
            last: 0,
        }
    }

    pub fn config(&self) -> &MeterConfig {
        &self.cfg
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
            drop_red: true,
            demote_yellow: false,
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
