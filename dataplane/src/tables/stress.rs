//! One writer against concurrent readers, the `HashMap` oracle, the 1M + 1M
//! scale test and the cost measurements.
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use proptest::prelude::*;

use super::record::tests::arb_binding;
use super::*;
use crate::packet::Dscp;

/// splitmix64: the tests' random numbers and derived fields.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        mix(self.0)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Subscriber `i`: even ones IPv4, odd ones IPv6.
fn subscriber(i: u64) -> IpAddr {
    if i & 1 == 0 {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (i as u32)))
    } else {
        IpAddr::V6(Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(i)))
    }
}

/// The destination a subscriber's self-checking bindings are restricted
/// to, of its family.
fn dst_for(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V4(v) => IpAddr::V4(Ipv4Addr::from(u32::from(v) ^ 0x5500_0000)),
        IpAddr::V6(v) => IpAddr::V6(Ipv6Addr::from(u128::from(v) ^ (0x55 << 120))),
    }
}

fn key_bits(a: IpAddr) -> u64 {
    match a {
        IpAddr::V4(v) => u64::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v) as u64 ^ (u128::from(v) >> 64) as u64,
    }
}

/// A binding every word of which is derived from (key, n), n being the
/// meter: a record torn between two versions fails [`self_consistent`].
fn make(a: IpAddr, n: u32) -> Binding {
    let x = mix(key_bits(a) ^ u64::from(n) << 32);
    let remap = match a {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from((x >> 32) as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(u128::from(x) << 64 | u128::from(!x))),
    };
    Binding {
        grant: Grant::Level {
            level: (n & 7) as u8,
            actions: ActionSet {
                dscp: Dscp::new((x & 63) as u8),
                dst_port: Some((x >> 8) as u16 | 1),
                dst_addr: Some(remap),
                mss_clamp: Some((x >> 24) as u16 | 1),
            },
        },
        meter: Some(n),
        only_to: Some(Restriction {
            prefix: Some(Prefix::new(dst_for(a), if a.is_ipv4() { 32 } else { 128 })),
            port: None,
        }),
    }
}

fn self_consistent(a: IpAddr, b: &Binding) -> bool {
    b.meter.is_some_and(|n| make(a, n) == *b)
}

#[test]
fn readers_never_see_a_torn_binding_while_one_writer_churns() {
    const KEYS: u64 = 6_000;
    const OPS: u64 = 1_000_000;
    const READERS: usize = 3;
    let cfg = TablesConfig {
        sp_address_capacity: 64,
        // Below the ~3 600 keys per table the churn keeps live.
        coupon_capacity: 3_000,
        login_capacity: 3_000,
        validity_lines: 1 << 12,
        seed: 99,
    };
    let mut w = TablesWriter::new(cfg).unwrap();
    let memory = w.memory_bytes();
    let done = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let max_live = Arc::new(AtomicU64::new(0));

    let readers: Vec<_> = (0..READERS)
        .map(|t| {
            let mut r = w.reader();
            let done = Arc::clone(&done);
            let reads = Arc::clone(&reads);
            std::thread::spawn(move || {
                let mut rng = Rng(1000 + t as u64);
                let mut n = 0u64;
                let mut seen = [0u64; 7];
                while !done.load(Ordering::Relaxed) {
                    r.refresh();
                    for _ in 0..32 {
                        let a = subscriber(rng.below(KEYS));
                        let table = [Table::Coupon, Table::Login][rng.below(2) as usize];
                        if let Some((b, _)) = r.lookup(table, a) {
                            assert!(self_consistent(a, &b), "torn lookup {a}: {b:?}");
                        }
                        let k = FlowKey::new(
                            (a, 1234),
                            (dst_for(a), 443),
                            PROTO_TCP,
                            0,
                            Direction::Upstream,
                        )
                        .unwrap();
                        let c = r.classify(&k);
                        seen[c.source as usize] += 1;
                        match c.source {
                            Source::Coupon | Source::Login => {
                                let d = c.decision;
                                let n = d.meter.unwrap();
                                let Grant::Level { level, actions } = make(a, n).grant else {
                                    unreachable!()
                                };
                                assert_eq!(
                                    (d.level, d.actions),
                                    (level, actions),
                                    "torn classify {a}"
                                );
                            }
                            Source::Default | Source::Contended => {}
                            s => panic!("unexpected source {s:?}"),
                        }
                        n += 1;
                    }
                }
                reads.fetch_add(n, Ordering::Relaxed);
                seen
            })
        })
        .collect();

    let mut rng = Rng(7);
    let mut oracle: HashMap<(Table, IpAddr), Binding> = HashMap::new();
    let mut full = 0u64;
    let started = Instant::now();
    for i in 0..OPS {
        let table = [Table::Coupon, Table::Login][rng.below(2) as usize];
        let a = subscriber(rng.below(KEYS));
        if rng.below(10) < 6 {
            let b = make(a, (rng.next() % u64::from(MAX_BINDING_METER + 1)) as u32);
            match w.upsert(table, a, &b) {
                Ok(_) => {
                    oracle.insert((table, a), b);
                }
                Err(TableError::Full { .. }) => full += 1,
                Err(e) => panic!("{e}"),
            }
        } else {
            assert_eq!(w.remove(table, a), oracle.remove(&(table, a)).is_some());
        }
        if i % 20_000 == 0 {
            // Churn the snapshot too: the readers must free the old ones.
            w.publish(&PrefixPolicy {
                sp_prefixes: vec![SpPrefix {
                    prefix: Prefix::new(IpAddr::V4(Ipv4Addr::from(0xc612_0000)), 16),
                    port: None,
                    decision: FastDecision::default(),
                }],
                ..Default::default()
            })
            .unwrap();
            max_live.fetch_max(w.live_snapshots() as u64, Ordering::Relaxed);
            for t in Table::ALL {
                assert!(w.len(t) <= w.capacity(t));
            }
            assert_eq!(w.memory_bytes(), memory);
        }
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let mut seen = [0u64; 7];
    for r in readers {
        for (s, n) in seen.iter_mut().zip(r.join().expect("a reader failed")) {
            *s += n;
        }
    }
    // The readers are gone: only the current snapshot is left.
    assert_eq!(w.live_snapshots(), 1);
    // Each reader holds at most one old snapshot.
    assert!(max_live.load(Ordering::Relaxed) <= READERS as u64 + 2);
    assert_eq!(w.memory_bytes(), memory);
    assert!(full > 0, "the churn should have filled a table");
    let r = w.reader();
    for i in 0..KEYS {
        let a = subscriber(i);
        for t in [Table::Coupon, Table::Login] {
            let want = oracle.get(&(t, a)).copied();
            assert_eq!(w.get(t, a), want);
            assert_eq!(r.lookup(t, a).map(|x| x.0), want);
        }
    }
    for t in Table::ALL {
        let m = w.shared.map(t);
        assert_eq!(m.entries_in_use() as u32, w.len(t));
    }
    eprintln!(
        "{OPS} writer ops in {elapsed:?} ({full} refused as full) against {} reads; sources {seen:?}",
        reads.load(Ordering::Relaxed)
    );
}

/// One writer op in the oracle test.
#[derive(Debug, Clone)]
enum TestOp {
    One(Op),
    Batch(Vec<Op>),
}

fn arb_op() -> impl Strategy<Value = Op> {
    let table = prop_oneof![
        Just(Table::Coupon),
        Just(Table::Login),
        Just(Table::SpAddress)
    ];
    (table, 0u64..24, any::<bool>(), 0u8..10).prop_flat_map(|(table, i, upsert, bad)| {
        let a = subscriber(i);
        arb_binding(a.is_ipv6()).prop_map(move |mut binding| {
            if bad == 0 {
                // An invalid binding: the op (and its batch) is refused.
                binding.grant = Grant::Level {
                    level: 8,
                    actions: ActionSet::default(),
                };
            }
            if upsert {
                Op::Upsert {
                    table,
                    subscriber: a,
                    binding,
                }
            } else if bad % 2 == 0 {
                Op::Remove {
                    table,
                    subscriber: a,
                }
            } else {
                Op::RemoveOne {
                    table,
                    subscriber: a,
                    only_to: binding.only_to,
                }
            }
        })
    })
}

fn arb_test_op() -> impl Strategy<Value = TestOp> {
    prop_oneof![
        4 => arb_op().prop_map(TestOp::One),
        1 => proptest::collection::vec(arb_op(), 0..6).prop_map(TestOp::Batch),
    ]
}

/// What tells two records of one key apart: the restriction, in the
/// coupon table only.
type RKey = Option<Restriction>;

fn rkey(table: Table, only_to: Option<Restriction>) -> RKey {
    only_to.filter(|_| table == Table::Coupon)
}

type Oracle = HashMap<(Table, IpAddr, RKey), Binding>;

/// The oracle's bindings of one key, in a canonical order.
fn oracle_bindings(o: &Oracle, table: Table, subscriber: IpAddr) -> Vec<String> {
    let mut v: Vec<String> = o
        .iter()
        .filter(|((t, a, _), _)| *t == table && *a == subscriber)
        .map(|(_, b)| format!("{b:?}"))
        .collect();
    v.sort();
    v
}

/// The oracle's answer to one op: `Err` if the tables must refuse it.
fn oracle_apply(o: &mut Oracle, op: &Op, cap: usize) -> Result<(), ()> {
    match *op {
        Op::Upsert {
            table,
            subscriber,
            binding,
        } => {
            if matches!(binding.grant, Grant::Level { level, .. } if level > MAX_LEVEL) {
                return Err(());
            }
            let k = (table, subscriber, rkey(table, binding.only_to));
            let len = o.keys().filter(|(t, _, _)| *t == table).count();
            if !o.contains_key(&k) && len == cap {
                return Err(());
            }
            o.insert(k, binding);
        }
        Op::Remove { table, subscriber } => {
            o.retain(|(t, a, _), _| (*t, *a) != (table, subscriber));
        }
        Op::RemoveOne {
            table,
            subscriber,
            only_to,
        } => {
            o.remove(&(table, subscriber, rkey(table, only_to)));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn writer_ops_give_the_same_lookups_as_a_hashmap(ops in proptest::collection::vec(arb_test_op(), 1..80)) {
        const CAP: u32 = 8;
        let mut w = TablesWriter::new(TablesConfig {
            sp_address_capacity: CAP,
            coupon_capacity: CAP,
            login_capacity: CAP,
            validity_lines: 16,
            seed: 3,
        }).unwrap();
        let r = w.reader();
        let mut oracle = Oracle::new();
        for op in &ops {
            match op {
                TestOp::One(op) => {
                    let want = oracle_apply(&mut oracle, op, CAP as usize);
                    let got = w.apply(std::slice::from_ref(op));
                    prop_assert_eq!(got.is_ok(), want.is_ok(), "{:?}: {:?}", op, got);
                }
                TestOp::Batch(batch) => {
                    let mut next = oracle.clone();
                    let want = batch.iter().position(|op| oracle_apply(&mut next, op, CAP as usize).is_err());
                    let got = w.apply(batch);
                    prop_assert_eq!(got.err().map(|e| e.index), want);
                    if want.is_none() {
                        oracle = next;
                    }
                }
            }
            for i in 0..24 {
                let a = subscriber(i);
                for t in Table::ALL {
                    let want = oracle_bindings(&oracle, t, a);
                    let mut got: Vec<String> =
                        w.bindings(t, a).iter().map(|b| format!("{b:?}")).collect();
                    got.sort();
                    prop_assert_eq!(&got, &want);
                    let seen = r.lookup(t, a).map(|x| format!("{:?}", x.0));
                    prop_assert_eq!(seen.is_some(), !want.is_empty());
                    prop_assert!(seen.is_none_or(|b| want.contains(&b)));
                }
            }
            for t in Table::ALL {
                prop_assert_eq!(w.len(t) as usize, oracle.keys().filter(|(x, _, _)| *x == t).count());
                prop_assert_eq!(w.shared.map(t).entries_in_use(), w.len(t) as usize);
            }
        }
    }
}

/// Inserts `n` coupon and `n` login bindings; returns the writer and the
/// insert rate.
fn fill(n: u32) -> (TablesWriter, f64) {
    let mut w = TablesWriter::new(TablesConfig {
        sp_address_capacity: 1024,
        coupon_capacity: n,
        login_capacity: n,
        validity_lines: 1 << 16,
        seed: 11,
    })
    .unwrap();
    let started = Instant::now();
    for t in [Table::Coupon, Table::Login] {
        for i in 0..u64::from(n) {
            let a = subscriber(i);
            w.upsert(t, a, &make(a, i as u32 & 0xff_ffff)).unwrap();
        }
    }
    let rate = f64::from(2 * n) / started.elapsed().as_secs_f64();
    (w, rate)
}

fn report_scale(n: u32) {
    let (w, rate) = fill(n);
    assert_eq!(w.len(Table::Coupon), n);
    assert_eq!(w.len(Table::Login), n);
    let maps: usize = [Table::Coupon, Table::Login]
        .iter()
        .map(|&t| w.shared.map(t).memory_bytes())
        .sum();
    let per = maps as f64 / f64::from(2 * n);
    eprintln!(
        "{n} + {n} bindings: {per:.1} bytes/binding (index + record + free list), \
         memory_bytes() = {} MB in all, {:.2} M inserts/s",
        w.memory_bytes() / 1_000_000,
        rate / 1e6
    );
    assert!(per <= 256.0);
    let r = w.reader();
    for i in (0..u64::from(n)).step_by(997) {
        let a = subscriber(i);
        assert_eq!(
            r.lookup(Table::Login, a).map(|x| x.0),
            Some(make(a, i as u32 & 0xff_ffff))
        );
    }
}

#[test]
fn scale_100k_coupon_and_100k_login_bindings() {
    report_scale(100_000);
}

/// `cargo test --release -p sluice-dataplane --lib tables -- --ignored --nocapture`
#[test]
#[ignore = "1M + 1M bindings: run in release"]
fn scale_1m_coupon_and_1m_login_bindings() {
    report_scale(1 << 20);
}

/// Prints TSC cycles per classification, per map lookup and per
/// `is_current`, random subscribers, at 1M + 1M bindings (the maps far
/// larger than the caches) and at 64K + 64K (they fit in L3).
#[test]
#[ignore = "a measurement, not a test: run in release with --nocapture"]
fn measure_lookup_and_is_current_cycles() {
    eprintln!("TSC at {} MHz", mhz());
    for n in [1 << 20, 1 << 16] {
        measure(n);
    }
}

fn measure(n: u32) {
    use crate::dpdk::rdtsc;
    const N: usize = 1 << 20;
    let (w, _) = fill(n);
    let mut r = w.reader();
    r.refresh();
    let mut rng = Rng(5);
    let keys: Vec<FlowKey> = (0..N)
        .map(|_| {
            let a = subscriber(rng.below(u64::from(n)));
            FlowKey::new(
                (a, 1234),
                (dst_for(a), 443),
                PROTO_TCP,
                0,
                Direction::Upstream,
            )
            .unwrap()
        })
        .collect();
    // The same keys shifted past the bound ones: every lookup misses.
    let unbound: Vec<FlowKey> = keys
        .iter()
        .map(|k| {
            let mut k = *k;
            k.src ^= 1 << 30;
            k
        })
        .collect();
    let per = |t0: u64, n: usize| (rdtsc() - t0) as f64 / n as f64;
    let mut acc = 0u64;
    // Warm-up: the first pass after the fill pays for the TLB and caches.
    for k in &keys {
        acc = acc.wrapping_add(r.classify(k).source as u64);
    }

    let t0 = rdtsc();
    for k in &keys {
        let c = r.classify(k);
        acc = acc.wrapping_add(u64::from(c.decision.level) + c.source as u64);
    }
    let classify_hit = per(t0, N);
    let t0 = rdtsc();
    for k in &unbound {
        acc = acc.wrapping_add(r.classify(k).source as u64);
    }
    let classify_miss = per(t0, N);

    let addrs: Vec<IpAddr> = keys.iter().map(|k| k.src_addr()).collect();
    let t0 = rdtsc();
    for a in &addrs {
        acc = acc.wrapping_add(u64::from(r.lookup(Table::Coupon, *a).is_some()));
    }
    let lookup = per(t0, N);

    let stamps: Vec<Stamp> = keys.iter().map(|k| r.classify(k).stamp).collect();
    let t0 = rdtsc();
    let mut current = 0u64;
    for _ in 0..8 {
        for s in &stamps {
            current += u64::from(r.is_current(*s));
        }
    }
    let is_current = per(t0, 8 * N);
    assert_eq!(current, 8 * N as u64);
    eprintln!(
        "{n} + {n} bindings: classify {classify_hit:.0} (coupon hit) / {classify_miss:.0} \
         (no binding: 3 map misses + 2 LPM), coupon lookup {lookup:.0}, \
         is_current {is_current:.1} TSC cycles [{acc}]"
    );
}

fn mhz() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("cpu MHz"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}
