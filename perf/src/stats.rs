//! The arithmetic of a benchmark: steady-state rates from cumulative
//! counters, medians over rounds, ratios and unit conversions.
//!
//! Every tool is measured the same way: the runner stamps each counter line
//! with its own monotonic clock as the line arrives, and a run's rate is the
//! difference of two cumulative packet counts divided by the time between
//! them ([`window_rate`]).
use serde::Serialize;
use thiserror::Error;

/// Ethernet preamble + start-of-frame delimiter (8 B) plus the minimum
/// inter-frame gap (12 B): what a frame costs on the wire beyond its bytes.
pub const WIRE_OVERHEAD_BYTES: u32 = 20;

/// Why a run's output could not be turned into a rate.
#[derive(Debug, Error, PartialEq)]
pub enum StatsError {
    #[error("only {got} counter samples; need at least 2 after the {warmup_secs} s warm-up")]
    TooFewSamples { got: usize, warmup_secs: f64 },
    #[error("measurement window is {secs:.2} s; expected at least {min_secs} s")]
    WindowTooShort { secs: f64, min_secs: f64 },
    #[error("cumulative counter went backwards ({from} -> {to})")]
    CounterWentBackwards { from: u64, to: u64 },
}

/// One reading of a cumulative packet counter at a runner timestamp.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Seconds since the tool was spawned, by the runner's clock.
    pub t: f64,
    /// Packets sent so far, summed over ports/directions.
    pub packets: u64,
}

/// The steady-state rate of one run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WindowRate {
    pub pps: f64,
    pub secs: f64,
    pub packets: u64,
}

/// Steady-state rate: skip samples taken less than `warmup_secs` after the
/// first one (forwarding start-up), then take the counter difference
/// between the first remaining sample and the last one.
pub fn window_rate(
    samples: &[Sample],
    warmup_secs: f64,
    min_window_secs: f64,
) -> Result<WindowRate, StatsError> {
    let Some(first) = samples.first() else {
        return Err(StatsError::TooFewSamples {
            got: 0,
            warmup_secs,
        });
    };
    // A small tolerance, as counter lines arrive a few ms late or early.
    let start_t = first.t + warmup_secs - 0.05;
    let kept: Vec<&Sample> = samples.iter().filter(|s| s.t >= start_t).collect();
    if kept.len() < 2 {
        return Err(StatsError::TooFewSamples {
            got: kept.len(),
            warmup_secs,
        });
    }
    let (a, b) = (kept[0], kept[kept.len() - 1]);
    if b.packets < a.packets {
        return Err(StatsError::CounterWentBackwards {
            from: a.packets,
            to: b.packets,
        });
    }
    let secs = b.t - a.t;
    if secs + 0.05 < min_window_secs {
        return Err(StatsError::WindowTooShort {
            secs,
            min_secs: min_window_secs,
        });
    }
    let packets = b.packets - a.packets;
    Ok(WindowRate {
        pps: packets as f64 / secs,
        secs,
        packets,
    })
}

/// Median of `xs` (mean of the two middle values for an even count).
pub fn median(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() || xs.iter().any(|x| x.is_nan()) {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Median, minimum and maximum of the rounds of one measurement.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Summary {
    pub fn of(xs: &[f64]) -> Option<Summary> {
        let median = median(xs)?;
        Some(Summary {
            median,
            min: xs.iter().copied().fold(f64::INFINITY, f64::min),
            max: xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            n: xs.len(),
        })
    }
}

/// `a / b`, or `None` when `b` is not a positive finite number.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b.is_finite() && b > 0.0 && a.is_finite()).then(|| a / b)
}

pub fn mpps(pps: f64) -> f64 {
    pps / 1e6
}

/// Wall-clock nanoseconds per packet on the one forwarding core.
pub fn ns_per_packet(pps: f64) -> f64 {
    1e9 / pps
}

/// TSC cycles per packet on the one forwarding core. A poll-mode core
/// spins all the time, so every TSC cycle of the window belongs to some
/// packet: cycles = tsc_hz × seconds / packets = tsc_hz / pps.
pub fn cycles_per_packet(pps: f64, tsc_hz: f64) -> f64 {
    tsc_hz / pps
}

/// Gbit/s on the wire for `frame_bytes` frames, counting the 20 B of
/// preamble and inter-frame gap each frame also occupies.
pub fn wire_gbps(pps: f64, frame_bytes: u32) -> f64 {
    pps * f64::from(frame_bytes + WIRE_OVERHEAD_BYTES) * 8.0 / 1e9
}

/// Frames per second a link of `gbps` carries at `frame_bytes` (line rate).
pub fn line_rate_pps(gbps: f64, frame_bytes: u32) -> f64 {
    gbps * 1e9 / (f64::from(frame_bytes + WIRE_OVERHEAD_BYTES) * 8.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: f64, packets: u64) -> Sample {
        Sample { t, packets }
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn summary_keeps_the_spread_of_rounds() {
        let s = Summary::of(&[28.0, 31.0, 14.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (28.0, 14.0, 31.0, 3));
    }

    #[test]
    fn ratio_refuses_a_zero_denominator() {
        assert_eq!(ratio(28.0, 32.0), Some(0.875));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(1.0, f64::NAN), None);
    }

    #[test]
    fn units_at_64_bytes() {
        // 10 GbE line rate at 64 B is the textbook 14.88 Mpps.
        assert!((mpps(line_rate_pps(10.0, 64)) - 14.880_952).abs() < 1e-5);
        assert!((wire_gbps(14_880_952.38, 64) - 10.0).abs() < 1e-6);
        assert!((ns_per_packet(25e6) - 40.0).abs() < 1e-9);
        assert!((cycles_per_packet(26e6, 2.6e9) - 100.0).abs() < 1e-9);
        // 1518 B frames: 1538 B on the wire.
        assert!((wire_gbps(1e6, 1518) - 12.304).abs() < 1e-9);
    }

    #[test]
    fn window_skips_the_warm_up_and_uses_counter_differences() {
        // Start-up is slow (first second), then 10 Mpps.
        let samples = [
            s(0.5, 0),
            s(1.5, 2_000_000),
            s(2.5, 12_000_000),
            s(3.5, 22_000_000),
            s(4.5, 32_000_000),
        ];
        let w = window_rate(&samples, 1.0, 2.0).unwrap();
        assert_eq!(w.packets, 30_000_000);
        assert!((w.secs - 3.0).abs() < 1e-9);
        assert!((w.pps - 10e6).abs() < 1e-3);
    }

    #[test]
    fn window_tolerates_slightly_early_lines() {
        let samples = [s(1.0, 0), s(1.98, 100), s(3.0, 200)];
        let w = window_rate(&samples, 1.0, 1.0).unwrap();
        assert_eq!(w.packets, 100);
    }

    #[test]
    fn window_errors_are_explicit() {
        assert_eq!(
            window_rate(&[], 1.0, 1.0),
            Err(StatsError::TooFewSamples {
                got: 0,
                warmup_secs: 1.0
            })
        );
        assert!(matches!(
            window_rate(&[s(0.0, 0), s(0.5, 10)], 1.0, 1.0),
            Err(StatsError::TooFewSamples { got: 0, .. })
        ));
        assert!(matches!(
            window_rate(&[s(0.0, 0), s(1.0, 10), s(2.0, 20)], 1.0, 4.0),
            Err(StatsError::WindowTooShort { .. })
        ));
        assert!(matches!(
            window_rate(&[s(0.0, 0), s(1.0, 10), s(2.0, 5)], 1.0, 1.0),
            Err(StatsError::CounterWentBackwards { from: 10, to: 5 })
        ));
    }
}
