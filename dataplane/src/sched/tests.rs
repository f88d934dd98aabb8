//! Deterministic simulations of the scheduler with a fake clock.
use std::cell::Cell;
use std::rc::Rc;

use super::*;

/// A packet that counts its own drops, so a test can prove that every
/// packet ever made ended somewhere (sent, refused, dropped or drained).
#[derive(Debug)]
struct Pkt {
    len: u32,
    flow: u32,
    alive: Rc<Cell<i64>>,
}

impl Pkt {
    fn new(len: u32, flow: u32, alive: &Rc<Cell<i64>>) -> Pkt {
        alive.set(alive.get() + 1);
        Pkt {
            len,
            flow,
            alive: Rc::clone(alive),
        }
    }
}

impl Drop for Pkt {
    fn drop(&mut self) {
        self.alive.set(self.alive.get() - 1);
    }
}

impl Packet for Pkt {
    fn frame_len(&self) -> u32 {
        self.len
    }
}

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;

/// Runs `secs` of simulated time in steps of `step` ns: before each step
/// `offer` may enqueue; each step dequeues what the scheduler lets go.
/// Returns sent (wire bytes incl. overhead, packets) per level.
fn simulate(
    s: &mut Scheduler<Pkt>,
    alive: &Rc<Cell<i64>>,
    until: u64,
    step: u64,
    mut offer: impl FnMut(&mut Scheduler<Pkt>, u64, &Rc<Cell<i64>>),
) -> ([u64; LEVELS], [u64; LEVELS], Vec<(u8, u64)>) {
    let mut bytes = [0u64; LEVELS];
    let mut pkts = [0u64; LEVELS];
    let mut sojourns = Vec::new();
    let overhead = u64::from(s.config().overhead_bytes);
    let mut now = 0;
    while now < until {
        offer(s, now, alive);
        s.dequeue(
            now,
            usize::MAX,
            |p, l, so| {
                bytes[usize::from(l)] += u64::from(p.len) + overhead;
                pkts[usize::from(l)] += 1;
                sojourns.push((l, so));
            },
            |_, _| {},
        );
        now += step;
    }
    (bytes, pkts, sojourns)
}

/// Keeps `level` backlogged with `len`-byte packets of `flows` flows.
fn keep_full(
    s: &mut Scheduler<Pkt>,
    level: u8,
    len: u32,
    now: u64,
    alive: &Rc<Cell<i64>>,
    flows: u32,
) {
    let mut f = 0u32;
    while s.counters(usize::from(level)).depth < 64 {
        let flow = f.wrapping_mul(0x9e37_79b9) % flows.max(1);
        let hash = flow.wrapping_mul(0x9e37_79b9);
        if s.enqueue(Pkt::new(len, flow, alive), level, hash, now)
            .is_err()
        {
            break;
        }
        f += 1;
    }
}

fn plain(rate: Option<u64>) -> SchedConfig {
    let mut c = SchedConfig::reference(rate, 1000);
    for l in &mut c.levels {
        l.aqm = false;
        l.ceiling_bps = None;
    }
    c
}

#[test]
fn the_shaper_holds_its_rate_within_one_percent_from_1_mbit_to_10_gbit() {
    for rate in [
        1_000_000u64,
        10_000_000,
        100_000_000,
        1_000_000_000,
        10_000_000_000,
    ] {
        let alive = Rc::new(Cell::new(0));
        let mut s = Scheduler::new(plain(Some(rate))).unwrap();
        // Steps of 1/1000 of a frame time at 10G, coarser at low rates.
        let step = (1500 * 8 * SEC / rate / 4).max(1_000);
        // Frames small enough that one frame is under 0.2 % of a second.
        let len = if rate < 100_000_000 { 200 } else { 1500 };
        let (bytes, _, _) = simulate(&mut s, &alive, SEC, step, |s, now, a| {
            keep_full(s, 4, len, now, a, 1)
        });
        let got = bytes.iter().sum::<u64>() as f64 * 8.0;
        let err = (got - rate as f64).abs() / rate as f64;
        assert!(
            err < 0.01,
            "{rate} bit/s: sent {got} bit/s ({:.3} %)",
            err * 100.0
        );
        s.drain(drop);
        assert_eq!(alive.get(), 0);
    }
}

#[test]
fn strict_levels_leave_in_priority_order() {
    let alive = Rc::new(Cell::new(0));
    let mut s = Scheduler::new(plain(None)).unwrap();
    for level in [7u8, 3, 5, 1, 0, 2, 6, 4] {
        s.enqueue(Pkt::new(100, 0, &alive), level, 0, 0).unwrap();
    }
    let mut order = Vec::new();
    s.dequeue(0, 100, |_, l, _| order.push(l), |_, _| {});
    // Strict 0-3 in order, then the shared levels by DRR (4 first).
    assert_eq!(&order[..4], &[0, 1, 2, 3]);
    let mut rest = order[4..].to_vec();
    rest.sort();
    assert_eq!(rest, vec![4, 5, 6, 7]);
    assert_eq!(alive.get(), 0);
}

#[test]
fn a_saturating_premium_level_stops_at_its_ceiling_and_borrows_only_idle_capacity() {
    let rate = 100_000_000;
    let alive = Rc::new(Cell::new(0));
    let mut s = Scheduler::new(SchedConfig::reference(Some(rate), 1000)).unwrap();
    let (bytes, _, _) = simulate(&mut s, &alive, SEC, 20_000, |s, now, a| {
        keep_full(s, 3, 1500, now, a, 1);
        keep_full(s, 5, 1500, now, a, 4);
    });
    let mbit = |l: usize| bytes[l] as f64 * 8.0 / 1e6;
    // Premium's ceiling is 50 %: best effort gets the other half.
    assert!((mbit(3) - 50.0).abs() < 1.5, "premium {}", mbit(3));
    assert!((mbit(5) - 50.0).abs() < 1.5, "best effort {}", mbit(5));
    s.drain(drop);

    // Alone, premium uses the whole port (work-conserving).
    let mut s = Scheduler::new(SchedConfig::reference(Some(rate), 1000)).unwrap();
    let (bytes, _, _) = simulate(&mut s, &alive, SEC, 20_000, |s, now, a| {
        keep_full(s, 3, 1500, now, a, 1)
    });
    let got = bytes[3] as f64 * 8.0 / 1e6;
    assert!((got - 100.0).abs() < 1.0, "premium alone {got}");
    s.drain(drop);
    assert_eq!(alive.get(), 0);
}

#[test]
fn shared_levels_split_by_their_weights() {
    let alive = Rc::new(Cell::new(0));
    let mut s = Scheduler::new(plain(Some(100_000_000))).unwrap();
    // Weights: standard 8, best effort 4, bulk 2, scavenger 1.
    let (bytes, _, _) = simulate(&mut s, &alive, SEC, 20_000, |s, now, a| {
        for (l, len) in [(4u8, 1500u32), (5, 700), (6, 1500), (7, 200)] {
            keep_full(s, l, len, now, a, 1);
        }
    });
    let total: u64 = bytes.iter().sum();
    let share = |l: usize| bytes[l] as f64 / total as f64;
    for (l, want) in [
        (4, 8.0 / 15.0),
        (5, 4.0 / 15.0),
        (6, 2.0 / 15.0),
        (7, 1.0 / 15.0),
    ] {
        assert!(
            (share(l) - want).abs() < 0.015,
            "level {l}: share {:.3}, weight share {want:.3}",
            share(l)
        );
    }
    s.drain(drop);
    assert_eq!(alive.get(), 0);
}

#[test]
fn flows_in_best_effort_share_equally_however_hard_one_pushes() {
    let alive = Rc::new(Cell::new(0));
    let mut cfg = plain(Some(100_000_000));
    cfg.levels[5].max_packets = 4000;
    cfg.levels[5].max_bytes = 4000 * 1600;
    let mut s = Scheduler::new(cfg).unwrap();
    let mut per_flow = [0u64; 2];
    let mut now = 0;
    // Flow 0 offers 10 packets for each one of flow 1; both stay backlogged.
    let hashes = [0x1000_0000u32, 0xf000_0000];
    while now < SEC {
        for _ in 0..10 {
            let _ = s.enqueue(Pkt::new(1500, 0, &alive), 5, hashes[0], now);
        }
        let _ = s.enqueue(Pkt::new(1500, 1, &alive), 5, hashes[1], now);
        s.dequeue(
            now,
            usize::MAX,
            |p, _, _| per_flow[p.flow as usize] += 1,
            |_, _| {},
        );
        now += 100_000;
    }
    let ratio = per_flow[0] as f64 / per_flow[1] as f64;
    assert!((ratio - 1.0).abs() < 0.05, "flow shares {per_flow:?}");
    s.drain(drop);
    assert_eq!(alive.get(), 0);
}

#[test]
fn codel_drops_under_a_standing_queue_but_not_for_a_short_burst() {
    let rate = 10_000_000;
    let alive = Rc::new(Cell::new(0));
    // A standing queue: 11 Mbit/s of unresponsive traffic offered into 10
    // for 6 s (CoDel needs a few seconds to find the drop rate an
    // unresponsive overload needs; TCP answers its first drop).
    let mut s = Scheduler::new(SchedConfig::reference(Some(rate), 1000)).unwrap();
    let mut offered = 0u64;
    let (_, _, so) = simulate(&mut s, &alive, 6 * SEC, 100_000, |s, now, a| {
        while offered * 1500 * 8 < now / 1000 * 11 {
            let _ = s.enqueue(Pkt::new(1500, 0, a), 6, 0, now);
            offered += 1;
        }
    });
    let c = s.counters(6);
    assert!(
        c.dropped_aqm > 10,
        "no AQM drops under a standing queue: {c:?}"
    );
    assert_eq!(
        c.dropped_full, 0,
        "the queue overflowed: AQM did not control it"
    );
    // The queue is held down (a plain FIFO's keeps growing, as checked
    // below).
    let late_median = |so: &[(u8, u64)]| {
        let mut late: Vec<u64> = so.iter().skip(so.len() * 2 / 3).map(|x| x.1).collect();
        late.sort();
        late[late.len() / 2]
    };
    let median = late_median(&so);
    assert!(median < 100 * MS, "median sojourn {median} ns");
    s.drain(drop);
    let mut fifo = SchedConfig::reference(Some(rate), 1000);
    fifo.levels[6].aqm = false;
    let mut s = Scheduler::new(fifo).unwrap();
    let mut offered = 0u64;
    let (_, _, so) = simulate(&mut s, &alive, 6 * SEC, 100_000, |s, now, a| {
        while offered * 1500 * 8 < now / 1000 * 11 {
            let _ = s.enqueue(Pkt::new(1500, 0, a), 6, 0, now);
            offered += 1;
        }
    });
    // Without AQM the queue only grows (0.5 s of excess by the end).
    assert!(late_median(&so) > 300 * MS, "{}", late_median(&so));
    s.drain(drop);

    // A 30 ms burst at twice the rate, then nothing: a queue shorter than
    // the interval, never dropped.
    let mut s = Scheduler::new(SchedConfig::reference(Some(rate), 1000)).unwrap();
    let mut offered = 0u64;
    simulate(&mut s, &alive, SEC, 100_000, |s, now, a| {
        while now < 30 * MS && offered * 1500 * 8 < now / 1000 * 20 {
            let _ = s.enqueue(Pkt::new(1500, 0, a), 6, 0, now);
            offered += 1;
        }
    });
    assert_eq!(s.counters(6).dropped_aqm, 0, "{:?}", s.counters(6));
    assert!(s.is_empty());
    assert_eq!(alive.get(), 0);
}

#[test]
fn overflow_hands_every_packet_back_and_nothing_is_lost() {
    let alive = Rc::new(Cell::new(0));
    let mut cfg = SchedConfig::reference(Some(1_000_000), 50);
    cfg.levels[2].max_bytes = 20 * 1600;
    let mut s = Scheduler::new(cfg).unwrap();
    let mut refused = 0;
    for i in 0..1000u32 {
        let level = (i % 8) as u8;
        if let Err(p) = s.enqueue(Pkt::new(1500, i, &alive), level, i.wrapping_mul(7919), 0) {
            refused += 1;
            drop(p);
        }
    }
    assert!(refused > 0);
    let total_full: u64 = (0..LEVELS).map(|l| s.counters(l).dropped_full).sum();
    assert_eq!(total_full, refused);
    assert_eq!(alive.get(), i64::from(s.len()));
    // Send some, drain the rest: every packet is accounted for.
    let mut sent = 0;
    s.dequeue(SEC, 100, |_, _, _| sent += 1, |_, _| {});
    assert!(sent > 0);
    let mut drained = 0;
    s.drain(|_| drained += 1);
    assert_eq!(sent + drained + refused as usize, 1000);
    assert_eq!(alive.get(), 0);
    assert_eq!(s.len(), 0);
}

#[test]
fn bad_configs_are_refused() {
    let mut c = SchedConfig::reference(Some(0), 10);
    assert!(Scheduler::<Pkt>::new(c.clone()).is_err());
    c = SchedConfig::reference(None, 10);
    c.levels[5].flow_queues = 0;
    assert!(matches!(
        Scheduler::<Pkt>::new(c.clone()),
        Err(SchedError::Level { level: 5, .. })
    ));
    c = SchedConfig::reference(None, 10);
    c.levels[6].weight = 0;
    assert!(Scheduler::<Pkt>::new(c).is_err());
}

#[test]
fn a_sparse_flow_beside_a_saturating_one_in_a_capped_level_waits_little() {
    let rate = 50_000_000;
    let alive = Rc::new(Cell::new(0));
    let mut s = Scheduler::new(SchedConfig::reference(Some(rate), 512)).unwrap();
    let mut worst = 0u64;
    let mut now = 0;
    let mut sparse = 0;
    while now < SEC {
        // The premium flow keeps 100 packets queued (a TCP window held to
        // the level's ceiling), best effort stays backlogged too.
        while s.counters(3).depth < 100 {
            s.enqueue(Pkt::new(1514, 1, &alive), 3, 0x1234_5678, now)
                .unwrap();
        }
        keep_full(&mut s, 5, 1514, now, &alive, 1);
        if now % (20 * MS) == 0 {
            s.enqueue(Pkt::new(98, 99, &alive), 3, 0xdead_beef, now)
                .unwrap();
            sparse += 1;
        }
        s.dequeue(
            now,
            usize::MAX,
            |p, _, so| {
                if p.flow == 99 {
                    worst = worst.max(so);
                }
            },
            |_, _| {},
        );
        now += 5_000;
    }
    assert!(sparse > 10);
    assert!(worst < 2 * MS, "the sparse flow waited {worst} ns");
    s.drain(drop);
}

#[test]
fn flows_whose_hashes_collide_still_get_queues_of_their_own() {
    let alive = Rc::new(Cell::new(0));
    let mut s = Scheduler::new(plain(None)).unwrap();
    // Level 3 has 8 flow queues: these two hashes share a home queue.
    let (a, b) = (0x1000_0000u32, 0x1000_0001u32);
    for _ in 0..20 {
        s.enqueue(Pkt::new(1500, 0, &alive), 3, a, 0).unwrap();
    }
    s.enqueue(Pkt::new(98, 1, &alive), 3, b, 0).unwrap();
    let mut order = Vec::new();
    s.dequeue(0, 3, |p, _, _| order.push(p.flow), |_, _| {});
    assert!(
        order.contains(&1),
        "the small flow waited behind the big one: {order:?}"
    );
    s.drain(drop);
    assert_eq!(alive.get(), 0);
}
