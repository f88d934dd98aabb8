//! The mirror against the reference: after any sequence of batches, the
//! workers' tables classify every flow as [`PolicyState::classify`] does.
use std::net::IpAddr;

use proptest::prelude::*;
use sluice_control::policy::{parse_request, FlowQuery, Policy, Request, Source as PSource};

use std::sync::Arc;

use super::*;
use crate::packet::{FlowKey, PROTO_TCP, PROTO_UDP};
use crate::stats::Direction;
use crate::tables::Source;

const SUBSCRIBERS: [&str; 5] = [
    "10.0.0.1",
    "10.0.0.2",
    "10.0.0.3",
    "2001:db8::1",
    "2001:db8::2",
];
const DESTINATIONS: [&str; 7] = [
    "192.0.2.1",
    "192.0.2.130",
    "192.0.2.7",
    "198.51.100.1",
    "203.0.113.9",
    "2001:db8:f::1",
    "2001:db8:f::2",
];
const V4_PREFIXES: [&str; 6] = [
    "192.0.2.0/24",
    "192.0.2.128/25",
    "192.0.2.1/32",
    "192.0.0.0/8",
    "0.0.0.0/0",
    "198.51.100.0/24",
];
const V6_PREFIXES: [&str; 3] = ["2001:db8:f::/48", "2001:db8:f::1/128", "::/0"];

fn pick<T: Copy>(xs: &[T], i: usize) -> T {
    xs[i % xs.len()]
}

fn v6(a: &str) -> bool {
    a.contains(':')
}

/// A decision as JSON; `v6` picks the family of a remap address.
fn decision(r: &[usize; 6], v6: bool, remap_addr: bool) -> String {
    let level = r[0] % 8;
    let mut d = format!(r#"{{"level":{level}"#);
    match r[1] % 3 {
        0 => d.push_str(r#","dscp":"level""#),
        1 => d.push_str(&format!(r#","dscp":{}"#, r[2] % 64)),
        _ => {}
    }
    if r[3].is_multiple_of(3) {
        d.push_str(&format!(r#","dst_port":{}"#, 8000 + r[3] % 7));
    }
    if remap_addr && r[4].is_multiple_of(3) {
        d.push_str(if v6 {
            r#","dst_addr":"2001:db8:e::5""#
        } else {
            r#","dst_addr":"198.18.0.5""#
        });
    }
    if r[5].is_multiple_of(4) {
        d.push_str(&format!(r#","mss_clamp":{}"#, 1200 + r[5] % 100));
    }
    d.push('}');
    d
}

fn port(i: usize) -> String {
    match i % 3 {
        0 => String::new(),
        1 => r#","port":80"#.into(),
        _ => r#","port":443"#.into(),
    }
}

/// One request line from random numbers; many are refused (unknown
/// tier, duplicate key, ...), which is part of the test.
fn request(r: [usize; 10]) -> String {
    let op = ["add", "add", "add", "update", "remove"][r[0] % 5];
    let d6 = [r[4], r[5], r[6], r[7], r[8], r[9]];
    match r[1] % 6 {
        0 | 1 => {
            let id = format!("c{}", r[2] % 8);
            if op == "remove" {
                return format!(r#"{{"op":"remove","table":"coupon","key":{{"id":"{id}"}}}}"#);
            }
            let sub = pick(&SUBSCRIBERS, r[3]);
            let dst = match r[4] % 3 {
                0 => String::new(),
                _ if v6(sub) => format!(r#","dst":"{}""#, pick(&V6_PREFIXES, r[5])),
                _ => format!(r#","dst":"{}""#, pick(&V4_PREFIXES, r[5])),
            };
            format!(
                r#"{{"op":"{op}","table":"coupon","entry":{{"id":"{id}","subscriber":"{sub}"{dst}{},"decision":{}}}}}"#,
                port(r[6]),
                decision(&d6, v6(sub), true)
            )
        }
        2 => {
            let sub = pick(&SUBSCRIBERS, r[3]);
            if op == "remove" {
                return format!(
                    r#"{{"op":"remove","table":"login","key":{{"subscriber":"{sub}"}}}}"#
                );
            }
            let tier = ["gold", "silver", "bronze"][r[4] % 3];
            format!(
                r#"{{"op":"{op}","table":"login","entry":{{"subscriber":"{sub}","login":"u{}","tier":"{tier}"}}}}"#,
                r[5] % 5
            )
        }
        3 => {
            let name = ["gold", "silver", "bronze"][r[2] % 3];
            if op == "remove" {
                return format!(r#"{{"op":"remove","table":"tier","key":{{"name":"{name}"}}}}"#);
            }
            format!(
                r#"{{"op":"{op}","table":"tier","entry":{{"name":"{name}","decision":{}}}}}"#,
                decision(&d6, false, false)
            )
        }
        4 => {
            let id = format!("s{}", r[2] % 6);
            if op == "remove" {
                return format!(r#"{{"op":"remove","table":"sp","key":{{"id":"{id}"}}}}"#);
            }
            let (target, fam6) = match r[3] % 4 {
                0 => {
                    let a = pick(&DESTINATIONS, r[4]);
                    (format!(r#""ip":"{a}""#), v6(a))
                }
                1 => {
                    let p = pick(&V6_PREFIXES, r[4]);
                    (format!(r#""prefix":"{p}""#), true)
                }
                _ => {
                    let p = pick(&V4_PREFIXES, r[4]);
                    (format!(r#""prefix":"{p}""#), false)
                }
            };
            format!(
                r#"{{"op":"{op}","table":"sp","entry":{{"id":"{id}","provider":"p",{}{},"decision":{}}}}}"#,
                target,
                port(r[5]),
                decision(&d6, fam6, true)
            )
        }
        _ => {
            if r[2].is_multiple_of(3) {
                return format!(
                    r#"{{"op":"update","table":"default","entry":{}}}"#,
                    decision(&d6, false, false)
                );
            }
            let p = if r[3].is_multiple_of(4) {
                pick(&V6_PREFIXES, r[4])
            } else {
                pick(&V4_PREFIXES, r[4])
            };
            let op = if op == "remove" { "remove" } else { "add" };
            let body = format!(r#"{{"dst":"{p}"{}}}"#, port(r[5]));
            let field = if op == "remove" { "key" } else { "entry" };
            format!(r#"{{"op":"{op}","table":"eligibility","{field}":{body}}}"#)
        }
    }
}

fn source_of(s: &PSource) -> Source {
    match s {
        PSource::SpIp { .. } | PSource::SpPrefix { .. } => Source::SpPrefix,
        PSource::Coupon { .. } => Source::Coupon,
        PSource::Login { .. } => Source::Login,
        PSource::Default => Source::Default,
    }
}

/// Every (subscriber, destination, protocol, port) flow classifies the
/// same in the tables as in the reference.
fn check_all(policy: &Policy, reader: &mut TablesReader) -> Result<(), TestCaseError> {
    reader.refresh();
    for sub in SUBSCRIBERS {
        for dst in DESTINATIONS {
            if v6(sub) != v6(dst) {
                continue;
            }
            for proto in [PROTO_TCP, PROTO_UDP, 1] {
                for dport in [80u16, 443, 9] {
                    let (s, d): (IpAddr, IpAddr) = (sub.parse().unwrap(), dst.parse().unwrap());
                    let (want, src) = policy.state().classify(&FlowQuery {
                        src: s,
                        dst: d,
                        proto,
                        dst_port: dport,
                        now: 0,
                    });
                    let key = FlowKey::new((s, 40000), (d, dport), proto, 0, Direction::Upstream)
                        .unwrap();
                    let got = reader.classify(&key);
                    let want_fast = fast(&want);
                    let want_fast = FastDecision {
                        actions: crate::tables::fit(want_fast.actions, &key),
                        ..want_fast
                    };
                    prop_assert_eq!(
                        (got.decision, got.source),
                        (want_fast, source_of(&src)),
                        "{} -> {}:{} proto {}",
                        sub,
                        dst,
                        dport,
                        proto
                    );
                    prop_assert!(reader.is_current(got.stamp));
                }
            }
        }
    }
    Ok(())
}

fn small() -> TablesConfig {
    TablesConfig {
        sp_address_capacity: 16,
        coupon_capacity: 64,
        login_capacity: 64,
        validity_lines: 64,
        seed: 5,
    }
}

/// Applies `changes` (each in the `batch` request's shape) as one batch,
/// the way the control thread does: touched, commit, sync.
fn apply_batch(policy: &mut Policy, m: &mut Mirror, changes: &[String]) -> bool {
    let line = format!(r#"{{"op":"batch","changes":[{}]}}"#, changes.join(","));
    let Ok(Request::Apply { changes, .. }) = parse_request(&line) else {
        panic!("not a batch: {line}");
    };
    match policy.commit_touched(&changes) {
        Ok((_, touched)) => {
            m.sync(policy.state(), &touched);
            true
        }
        Err(_) => false,
    }
}

/// An empty policy and its mirror, over a meter table of 8.
fn metered() -> (Policy, Mirror) {
    let policy = Policy::in_memory();
    let m = Mirror::load(small(), MeterTable::new(8), policy.state()).unwrap();
    (policy, m)
}

fn apply_line(policy: &mut Policy, m: &mut Mirror, change: &str) -> bool {
    apply_batch(policy, m, &[change.to_string()])
}

/// A coupon row of `sub` at level 3 with a rate (so it takes a meter), for
/// `op` (add, update).
fn rated(op: &str, id: &str, sub: &str) -> String {
    format!(
        r#"{{"op":"{op}","table":"coupon","entry":{{"id":"{id}","subscriber":"{sub}","decision":{{"level":3,"rate":{{"committed_bps":5000000,"peak_bps":6000000}}}}}}}}"#
    )
}

/// The meter of `sub`'s coupon record in the tables.
fn meter_of(m: &Mirror, sub: &str) -> Option<u32> {
    m.writer()
        .get(Table::Coupon, sub.parse().unwrap())
        .and_then(|b| b.meter)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn the_tables_classify_as_the_policy_after_any_batches(
        batches in proptest::collection::vec(
            proptest::collection::vec(any::<[usize; 10]>(), 1..3), 1..80)
    ) {
        let mut policy = Policy::in_memory();
        let mut m = Mirror::load(small(), MeterTable::new(64), policy.state()).unwrap();
        let mut reader = m.reader();
        let mut accepted = 0;
        for b in batches {
            let changes: Vec<String> = b.into_iter().map(request).collect();
            if apply_batch(&mut policy, &mut m, &changes) {
                accepted += 1;
            }
            check_all(&policy, &mut reader)?;
        }
        prop_assert_eq!(m.stats().errors, 0, "{:?}", m.stats().last_error);
        // A fresh load of the same state gives the same answers.
        let fresh = Mirror::load(small(), MeterTable::new(64), policy.state()).unwrap();
        check_all(&policy, &mut fresh.reader())?;
        prop_assert!(accepted <= m.stats().syncs);
    }
}

#[test]
fn a_change_invalidates_the_flows_of_its_subscriber_only() {
    let mut policy = Policy::in_memory();
    let mut m = Mirror::load(small(), MeterTable::new(64), policy.state()).unwrap();
    let mut reader = m.reader();
    let key = |s: &str| {
        FlowKey::new(
            (s.parse().unwrap(), 40000),
            ("192.0.2.1".parse().unwrap(), 443),
            PROTO_TCP,
            0,
            Direction::Upstream,
        )
        .unwrap()
    };
    let before = reader.classify(&key("10.0.0.1"));
    assert_eq!(before.source, Source::Default);
    assert!(apply_line(
        &mut policy,
        &mut m,
        r#"{"op":"add","table":"coupon","entry":{"id":"c1","subscriber":"10.0.0.1","decision":{"level":"voice","dscp":"level"}}}"#
    ));
    reader.refresh();
    assert!(!reader.is_current(before.stamp));
    let after = reader.classify(&key("10.0.0.1"));
    assert_eq!((after.source, after.decision.level), (Source::Coupon, 1));
    assert_eq!(after.decision.actions.dscp, Dscp::new(46));
    // Removing it switches the flow back.
    assert!(apply_line(
        &mut policy,
        &mut m,
        r#"{"op":"remove","table":"coupon","key":{"id":"c1"}}"#
    ));
    reader.refresh();
    assert!(!reader.is_current(after.stamp));
    assert_eq!(reader.classify(&key("10.0.0.1")).source, Source::Default);
    assert_eq!(m.writer().len(Table::Coupon), 0);
}

#[test]
fn a_subscriber_that_does_not_fit_keeps_its_records_and_is_counted() {
    let mut policy = Policy::in_memory();
    let mut m = Mirror::load(
        TablesConfig {
            coupon_capacity: 1,
            ..small()
        },
        MeterTable::new(4),
        policy.state(),
    )
    .unwrap();
    for (id, sub) in [("a", "10.0.0.1"), ("b", "10.0.0.2")] {
        assert!(apply_line(
            &mut policy,
            &mut m,
            &format!(
                r#"{{"op":"add","table":"coupon","entry":{{"id":"{id}","subscriber":"{sub}","decision":{{"level":3}}}}}}"#
            )
        ));
    }
    assert_eq!(m.stats().errors, 1);
    assert!(m
        .stats()
        .last_error
        .as_deref()
        .unwrap()
        .contains("10.0.0.2"));
    assert_eq!(m.writer().len(Table::Coupon), 1);
    assert!(m
        .writer()
        .get(Table::Coupon, "10.0.0.1".parse().unwrap())
        .is_some());
}

#[test]
fn rows_with_a_rate_get_a_meter_of_their_own_released_with_the_row() {
    let mut policy = Policy::in_memory();
    let meters = MeterTable::new(2);
    let mut m = Mirror::load(small(), Arc::clone(&meters), policy.state()).unwrap();
    let mut reader = m.reader();
    assert!(apply_line(
        &mut policy,
        &mut m,
        &rated("add", "a", "10.0.0.1")
    ));
    assert!(apply_line(
        &mut policy,
        &mut m,
        &rated("add", "b", "10.0.0.2")
    ));
    let key = |s: &str| {
        FlowKey::new(
            (s.parse().unwrap(), 1000),
            ("192.0.2.1".parse().unwrap(), 80),
            PROTO_TCP,
            0,
            Direction::Upstream,
        )
        .unwrap()
    };
    reader.refresh();
    let (ma, mb) = (
        reader.classify(&key("10.0.0.1")).decision.meter,
        reader.classify(&key("10.0.0.2")).decision.meter,
    );
    assert!(ma.is_some() && mb.is_some() && ma != mb, "{ma:?} {mb:?}");
    assert_eq!(m.stats().meters, 2);
    // Both meters are taken: a third rated row goes unmetered, counted.
    assert!(apply_line(
        &mut policy,
        &mut m,
        &rated("add", "c", "10.0.0.3")
    ));
    reader.refresh();
    assert_eq!(reader.classify(&key("10.0.0.3")).decision.meter, None);
    assert_eq!(m.stats().meters_exhausted, 1);
    // Removing a coupon frees its meter for the next row.
    assert!(apply_line(
        &mut policy,
        &mut m,
        r#"{"op":"remove","table":"coupon","key":{"id":"a"}}"#
    ));
    assert_eq!(m.stats().meters, 1);
    assert!(apply_line(
        &mut policy,
        &mut m,
        &rated("add", "d", "10.0.0.4")
    ));
    reader.refresh();
    assert_eq!(reader.classify(&key("10.0.0.4")).decision.meter, ma);
}

#[test]
fn a_tier_rate_change_reaches_the_meters_of_its_logins() {
    let (mut policy, mut m) = metered();
    let mut reader = m.reader();
    let tier = |op: &str, rate: &str| {
        format!(
            r#"{{"op":"{op}","table":"tier","entry":{{"name":"gold","decision":{{"level":3{rate}}}}}}}"#
        )
    };
    assert!(apply_line(&mut policy, &mut m, &tier("add", "")));
    assert!(apply_line(
        &mut policy,
        &mut m,
        r#"{"op":"add","table":"login","entry":{"subscriber":"10.0.0.1","login":"a","tier":"gold"}}"#
    ));
    let key = FlowKey::new(
        ("10.0.0.1".parse().unwrap(), 1000),
        ("192.0.2.1".parse().unwrap(), 80),
        PROTO_TCP,
        0,
        Direction::Upstream,
    )
    .unwrap();
    reader.refresh();
    assert_eq!(reader.classify(&key).decision.meter, None);
    // The tier gains a rate: its login gets a meter without being touched.
    assert!(apply_line(
        &mut policy,
        &mut m,
        &tier(
            "update",
            r#","rate":{"committed_bps":1000000,"peak_bps":2000000}"#
        )
    ));
    reader.refresh();
    assert!(reader.classify(&key).decision.meter.is_some());
    assert_eq!(m.stats().meters, 1);
    // And loses it again: the meter is released.
    assert!(apply_line(&mut policy, &mut m, &tier("update", "")));
    reader.refresh();
    assert_eq!(reader.classify(&key).decision.meter, None);
    assert_eq!(m.stats().meters, 0);
}

#[test]
fn a_coupon_change_re_derives_its_subscribers_coupons_and_keeps_the_login_meter() {
    let (mut policy, mut m) = metered();
    let sub: IpAddr = "10.0.0.1".parse().unwrap();
    let rate = |c: u64| format!(r#""rate":{{"committed_bps":{c},"peak_bps":{}}}"#, 2 * c);
    assert!(apply_line(
        &mut policy,
        &mut m,
        &format!(
            r#"{{"op":"add","table":"tier","entry":{{"name":"gold","decision":{{"level":3,{}}}}}}}"#,
            rate(1_000_000)
        )
    ));
    assert!(apply_line(
        &mut policy,
        &mut m,
        r#"{"op":"add","table":"login","entry":{"subscriber":"10.0.0.1","login":"a","tier":"gold"}}"#
    ));
    let login_meter = |m: &Mirror| m.writer().get(Table::Login, sub).and_then(|b| b.meter);
    let coupon_meter = |m: &Mirror| m.writer().get(Table::Coupon, sub).and_then(|b| b.meter);
    let l = login_meter(&m);
    assert!(l.is_some());
    let coupon = |op: &str, c: u64| {
        format!(
            r#"{{"op":"{op}","table":"coupon","entry":{{"id":"x","subscriber":"10.0.0.1","decision":{{"level":2,{}}}}}}}"#,
            rate(c)
        )
    };
    assert!(apply_line(&mut policy, &mut m, &coupon("add", 5_000_000)));
    let c = coupon_meter(&m);
    assert!(c.is_some() && c != l, "{c:?} {l:?}");
    assert_eq!(m.stats().meters, 2);
    // A coupon-only batch: the login's record and meter are not re-derived
    // and its meter is not released.
    let before = m.stats().ops;
    assert!(apply_line(
        &mut policy,
        &mut m,
        &coupon("update", 7_000_000)
    ));
    assert_eq!(m.stats().ops, before + 1, "one coupon upsert, no login op");
    assert_eq!(login_meter(&m), l);
    assert_eq!(coupon_meter(&m), c);
    assert_eq!(m.stats().meters, 2);
    // A login-only batch keeps the coupon's meter.
    assert!(apply_line(
        &mut policy,
        &mut m,
        r#"{"op":"remove","table":"login","key":{"subscriber":"10.0.0.1"}}"#
    ));
    assert_eq!(login_meter(&m), None);
    assert_eq!(coupon_meter(&m), c);
    assert_eq!(m.stats().meters, 1);
    assert!(apply_line(
        &mut policy,
        &mut m,
        r#"{"op":"remove","table":"coupon","key":{"id":"x"}}"#
    ));
    assert_eq!(m.stats().meters, 0);
}

#[test]
fn a_rated_coupon_moved_to_another_subscriber_keeps_its_meter() {
    // The new subscriber's address sorts before the old one's, so the
    // mirror takes the meter for the new one before dropping it from the
    // old one's keys: that drop must not free it.
    let (mut policy, mut m) = metered();
    assert!(apply_line(
        &mut policy,
        &mut m,
        &rated("add", "x", "10.0.0.9")
    ));
    let x = meter_of(&m, "10.0.0.9");
    assert!(x.is_some());
    assert!(apply_line(
        &mut policy,
        &mut m,
        &rated("update", "x", "10.0.0.1")
    ));
    assert_eq!(meter_of(&m, "10.0.0.1"), x);
    assert_eq!(meter_of(&m, "10.0.0.9"), None);
    assert_eq!(m.stats().meters, 1);
    // A new rated row gets a meter of its own, not x's.
    assert!(apply_line(
        &mut policy,
        &mut m,
        &rated("add", "y", "10.0.0.5")
    ));
    let y = meter_of(&m, "10.0.0.5");
    assert!(y.is_some() && y != x, "{y:?} {x:?}");
    assert_eq!(m.stats().meters, 2);
    // And back the other way (old address first): still one meter for x.
    // The old owner releases it before the new one asks, so x gets another
    // index: a released one is reused only after the batch.
    assert!(apply_line(
        &mut policy,
        &mut m,
        &rated("update", "x", "10.0.0.9")
    ));
    let moved = meter_of(&m, "10.0.0.9");
    assert!(moved.is_some() && moved != y, "{moved:?} {y:?}");
    assert_eq!(meter_of(&m, "10.0.0.1"), None);
    assert_eq!(m.stats().meters, 2);
}

/// A meter released in a batch is not handed to another row of the same
/// batch: the flows that used it keep their decisions until the batch is
/// announced, and would meter against the other row's rates meanwhile. It
/// is reused from the next batch on.
#[test]
fn a_meter_released_in_a_batch_is_reused_only_after_it() {
    let (mut policy, mut m) = metered();
    assert!(apply_line(
        &mut policy,
        &mut m,
        &rated("add", "x", "10.0.0.1")
    ));
    let x = meter_of(&m, "10.0.0.1").expect("metered");
    // 10.0.0.1 is re-derived (its meter released) before 10.0.0.2 takes one.
    let remove_x = r#"{"op":"remove","table":"coupon","key":{"id":"x"}}"#.to_string();
    assert!(apply_batch(
        &mut policy,
        &mut m,
        &[remove_x, rated("add", "y", "10.0.0.2")]
    ));
    let y = meter_of(&m, "10.0.0.2").expect("metered");
    assert_ne!(y, x, "reused within the batch that released it");
    assert!(apply_line(
        &mut policy,
        &mut m,
        &rated("add", "z", "10.0.0.3")
    ));
    assert_eq!(meter_of(&m, "10.0.0.3"), Some(x));
}

#[test]
fn a_coupon_updated_in_place_rewrites_its_one_record() {
    let (mut policy, mut m) = metered();
    let mut reader = m.reader();
    let coupon = |op: &str, id: &str, dst: &str, level: u8| {
        format!(
            r#"{{"op":"{op}","table":"coupon","entry":{{"id":"{id}","subscriber":"10.0.0.1"{dst},"decision":{{"level":{level}}}}}}}"#
        )
    };
    let to = |d: &str| {
        FlowKey::new(
            ("10.0.0.1".parse().unwrap(), 1000),
            (d.parse().unwrap(), 80),
            PROTO_TCP,
            0,
            Direction::Upstream,
        )
        .unwrap()
    };
    assert!(apply_line(&mut policy, &mut m, &coupon("add", "a", "", 4)));
    let web = r#","dst":"192.0.2.0/24""#;
    assert!(apply_line(&mut policy, &mut m, &coupon("add", "b", web, 2)));
    let level = |r: &mut TablesReader, d: &str| {
        r.refresh();
        r.classify(&to(d)).decision.level
    };
    assert_eq!(
        (
            level(&mut reader, "192.0.2.7"),
            level(&mut reader, "198.51.100.7")
        ),
        (2, 4)
    );
    // In place: one upsert, nothing re-derived, the other record intact.
    let ops = m.stats().ops;
    assert!(apply_line(
        &mut policy,
        &mut m,
        &coupon("update", "b", web, 1)
    ));
    assert_eq!(m.stats().ops, ops + 1);
    assert_eq!(
        (
            level(&mut reader, "192.0.2.7"),
            level(&mut reader, "198.51.100.7")
        ),
        (1, 4)
    );
    // Not in place (the destination moves): re-derived, the old record gone.
    let other = r#","dst":"203.0.113.0/24""#;
    assert!(apply_line(
        &mut policy,
        &mut m,
        &coupon("update", "b", other, 1)
    ));
    assert_eq!(
        m.writer()
            .bindings(Table::Coupon, "10.0.0.1".parse().unwrap())
            .len(),
        2
    );
    assert_eq!(
        (
            level(&mut reader, "192.0.2.7"),
            level(&mut reader, "203.0.113.7")
        ),
        (4, 1)
    );
    let mut r2 = m.reader();
    check_all(&policy, &mut r2).unwrap();
}
