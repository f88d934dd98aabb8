//! The `parse` micro-benchmark: parse + one rewrite + incremental checksum
//! on 64-byte TCP/IPv4 frames, in process (no DPDK), timed per burst of 32
//! with the TSC-free `Instant` clock over many bursts. The floor it is
//! compared with is the cheapest thing a forwarder does to a packet it
//! touches: read the destination MAC and write one byte.
use std::hint::black_box;
use std::time::Instant;

use hdrhistogram::Histogram;
use sluice_dataplane::packet::{self, ActionSet, Dscp};

/// Per-packet cost percentiles of one variant, in nanoseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MicroResult {
    pub name: &'static str,
    pub p50_ns: f64,
    pub p90_ns: f64,
    pub p99_ns: f64,
    pub mean_ns: f64,
}

const BURST: usize = 32;

fn measure(
    name: &'static str,
    frames: &mut [Vec<u8>],
    bursts: usize,
    mut f: impl FnMut(&mut [u8], usize),
) -> MicroResult {
    // Hundredths of a nanosecond per packet, per burst.
    let mut h = Histogram::<u64>::new_with_bounds(1, 1_000_000, 3).expect("histogram bounds");
    let n = frames.len();
    let mut total_ns = 0f64;
    for b in 0..bursts {
        let base = (b * BURST) % n;
        let t = Instant::now();
        for k in 0..BURST {
            let i = (base + k) % n;
            f(&mut frames[i], b);
        }
        let ns = t.elapsed().as_nanos() as f64 / BURST as f64;
        total_ns += ns;
        let _ = h.record(((ns * 100.0) as u64).clamp(1, 1_000_000));
    }
    let q = |p: f64| h.value_at_quantile(p) as f64 / 100.0;
    MicroResult {
        name,
        p50_ns: q(0.50),
        p90_ns: q(0.90),
        p99_ns: q(0.99),
        mean_ns: total_ns / bursts as f64,
    }
}

/// Runs every variant over `flows` distinct frames for `bursts` bursts.
pub fn run(flows: u32, bursts: usize) -> Vec<MicroResult> {
    let mut frames = crate::corpus::tcp_flows(flows);
    let dscp = [
        Dscp::new(46).expect("46 < 64"),
        Dscp::new(0).expect("0 < 64"),
    ];
    let port = [8080u16, 80];
    let mut out = Vec::new();
    // Warm caches and branch predictors once.
    for f in frames.iter_mut() {
        black_box(packet::parse(f).ok());
    }
    out.push(measure(
        "floor: read dst MAC, write 1 byte",
        &mut frames,
        bursts,
        |f, b| {
            let v = black_box(f[0]) ^ (b as u8);
            f[63] = v;
        },
    ));
    out.push(measure("parse", &mut frames, bursts, |f, _| {
        if let Ok(p) = packet::parse(f) {
            black_box(p);
        }
    }));
    out.push(measure(
        "parse + set DSCP (IPv4 csum)",
        &mut frames,
        bursts,
        |f, b| {
            if let Ok(p) = packet::parse(f) {
                // Alternate the value so every call really rewrites.
                let a = ActionSet {
                    dscp: Some(dscp[b & 1]),
                    ..Default::default()
                };
                black_box(packet::apply_forward(f, &p, &a));
            }
        },
    ));
    out.push(measure(
        "parse + dst port remap (TCP csum)",
        &mut frames,
        bursts,
        |f, b| {
            if let Ok(p) = packet::parse(f) {
                let a = ActionSet {
                    dst_port: Some(port[b & 1]),
                    ..Default::default()
                };
                black_box(packet::apply_forward(f, &p, &a));
            }
        },
    ));
    out
}
