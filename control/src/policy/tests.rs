//! Precedence, validation and atomicity of [`PolicyState`], and requests
//! end to end through [`Policy`].
use std::net::IpAddr;

use proptest::prelude::*;

use super::model::{CouponSpec, DecisionSpec, EligibilitySpec, LoginSpec, SpSpec, TierSpec};
use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn dec(level: u8) -> DecisionSpec {
    DecisionSpec {
        level: Level::from_number(level.into()).unwrap(),
        ..DecisionSpec::default()
    }
}

fn tier(name: &str, level: u8) -> Change {
    Change::Add(Entry::Tier(
        Tier::try_from(TierSpec {
            name: name.into(),
            decision: dec(level),
        })
        .unwrap(),
    ))
}

fn login(sub: &str, tier: &str) -> Change {
    Change::Add(Entry::Login(
        LoginBinding::try_from(LoginSpec {
            subscriber: sub.into(),
            login: format!("user-{sub}"),
            tier: tier.into(),
        })
        .unwrap(),
    ))
}

fn coupon(id: &str, sub: &str, dst: Option<&str>, port: Option<u64>, level: u8) -> Change {
    Change::Add(Entry::Coupon(
        CouponBinding::try_from(CouponSpec {
            id: id.into(),
            subscriber: sub.into(),
            dst: dst.map(Into::into),
            port,
            decision: dec(level),
            expires: None,
        })
        .unwrap(),
    ))
}

fn sp_ip(id: &str, addr: &str, port: Option<u64>, level: u8) -> Change {
    Change::Add(Entry::Sp(
        SpAllocation::try_from(SpSpec {
            id: id.into(),
            provider: "acme".into(),
            ip: Some(addr.into()),
            prefix: None,
            port,
            decision: dec(level),
        })
        .unwrap(),
    ))
}

fn sp_prefix(id: &str, prefix: &str, port: Option<u64>, level: u8) -> Change {
    Change::Add(Entry::Sp(
        SpAllocation::try_from(SpSpec {
            id: id.into(),
            provider: "acme".into(),
            ip: None,
            prefix: Some(prefix.into()),
            port,
            decision: dec(level),
        })
        .unwrap(),
    ))
}

fn eligible(dst: &str, port: Option<u64>) -> Change {
    Change::Add(Entry::Eligibility(
        EligibilityRule::try_from(EligibilitySpec {
            dst: dst.into(),
            port,
        })
        .unwrap(),
    ))
}

fn q(src: &str, dst: &str, proto: u8, port: u16) -> FlowQuery {
    FlowQuery {
        src: ip(src),
        dst: ip(dst),
        proto,
        dst_port: port,
        now: 1000,
    }
}

fn source(s: &PolicyState, query: FlowQuery) -> Source {
    s.classify(&query).1
}

fn id(kind: fn(String) -> Source, s: &str) -> Source {
    kind(s.to_string())
}
fn sp_ip_src(s: String) -> Source {
    Source::SpIp { id: s }
}
fn sp_pre_src(s: String) -> Source {
    Source::SpPrefix { id: s }
}
fn coupon_src(s: String) -> Source {
    Source::Coupon { id: s }
}

#[test]
fn precedence_sp_ip_then_sp_prefix_then_coupon_then_login_then_default() {
    let mut s = PolicyState::new();
    s.apply(&[
        tier("gold", 3),
        login("10.0.0.1", "gold"),
        coupon("c-any", "10.0.0.1", None, None, 2),
        coupon("c-pre", "10.0.0.1", Some("203.0.113.0/24"), None, 2),
        coupon("c-port", "10.0.0.1", None, Some(443), 1),
        coupon(
            "c-pre-port",
            "10.0.0.1",
            Some("203.0.113.0/25"),
            Some(443),
            1,
        ),
        sp_prefix("sp-16", "198.51.0.0/16", None, 4),
        sp_prefix("sp-24", "198.51.100.0/24", None, 4),
        sp_prefix("sp-16-port", "198.51.0.0/16", Some(5060), 1),
        sp_ip("sp-ip", "198.51.100.7", None, 2),
        sp_ip("sp-ip-port", "198.51.100.7", Some(443), 1),
    ])
    .unwrap();
    let c = "10.0.0.1";
    // SP per-IP beats everything; with the port beats without.
    assert_eq!(
        source(&s, q(c, "198.51.100.7", 6, 443)),
        id(sp_ip_src, "sp-ip-port")
    );
    assert_eq!(
        source(&s, q(c, "198.51.100.7", 6, 80)),
        id(sp_ip_src, "sp-ip")
    );
    // ... a port-specific row only matches TCP/UDP.
    assert_eq!(
        source(&s, q(c, "198.51.100.7", 1, 443)),
        id(sp_ip_src, "sp-ip")
    );
    // SP prefix: longest prefix first, then the port-specific row.
    assert_eq!(
        source(&s, q(c, "198.51.100.8", 17, 5060)),
        id(sp_pre_src, "sp-24")
    );
    assert_eq!(
        source(&s, q(c, "198.51.7.8", 17, 5060)),
        id(sp_pre_src, "sp-16-port")
    );
    assert_eq!(
        source(&s, q(c, "198.51.7.8", 17, 53)),
        id(sp_pre_src, "sp-16")
    );
    // SP rows hold for any subscriber.
    assert_eq!(
        source(&s, q("10.9.9.9", "198.51.7.8", 6, 1)),
        id(sp_pre_src, "sp-16")
    );
    // Coupons: port > prefix > subscriber only; longer prefix among ports.
    assert_eq!(
        source(&s, q(c, "203.0.113.5", 6, 443)),
        id(coupon_src, "c-pre-port")
    );
    assert_eq!(
        source(&s, q(c, "203.0.113.200", 6, 443)),
        id(coupon_src, "c-port")
    );
    assert_eq!(
        source(&s, q(c, "203.0.113.200", 6, 80)),
        id(coupon_src, "c-pre")
    );
    assert_eq!(
        source(&s, q(c, "192.0.2.1", 6, 80)),
        id(coupon_src, "c-any")
    );
    // Another subscriber with a login gets its tier; without, the default.
    s.apply(&[login("10.0.0.2", "gold")]).unwrap();
    assert_eq!(
        source(&s, q("10.0.0.2", "192.0.2.1", 6, 80)),
        Source::Login {
            login: "user-10.0.0.2".into(),
            tier: "gold".into()
        }
    );
    let (d, src) = s.classify(&q("10.0.0.3", "192.0.2.1", 6, 80));
    assert_eq!((d, src), (Decision::BEST_EFFORT, Source::Default));
}

#[test]
fn eligibility_gates_coupons_and_tiers_but_not_providers() {
    let mut s = PolicyState::new();
    s.apply(&[
        tier("gold", 3),
        login("10.0.0.1", "gold"),
        coupon("c", "10.0.0.2", None, None, 1),
        sp_prefix("sp", "198.51.100.0/24", None, 2),
        eligible("203.0.113.0/24", None),
        eligible("0.0.0.0/0", Some(5060)),
    ])
    .unwrap();
    assert_eq!(
        source(&s, q("10.0.0.2", "203.0.113.9", 6, 80)),
        id(coupon_src, "c")
    );
    assert_eq!(
        source(&s, q("10.0.0.2", "192.0.2.9", 17, 5060)),
        id(coupon_src, "c")
    );
    assert_eq!(
        source(&s, q("10.0.0.2", "192.0.2.9", 17, 80)),
        Source::Default
    );
    assert_eq!(
        source(&s, q("10.0.0.1", "192.0.2.9", 6, 80)),
        Source::Default
    );
    assert!(matches!(
        source(&s, q("10.0.0.1", "203.0.113.1", 6, 80)),
        Source::Login { .. }
    ));
    assert_eq!(
        source(&s, q("10.0.0.2", "198.51.100.1", 6, 80)),
        id(sp_pre_src, "sp")
    );
    // Without rules, everything is eligible again.
    s.apply(&[
        Change::Remove(Key::Eligibility("203.0.113.0/24".parse().unwrap(), None)),
        Change::Remove(Key::Eligibility(
            "0.0.0.0/0".parse().unwrap(),
            Port::new(5060),
        )),
    ])
    .unwrap();
    assert_eq!(
        source(&s, q("10.0.0.2", "192.0.2.9", 17, 80)),
        id(coupon_src, "c")
    );
}

#[test]
fn an_expired_coupon_grants_nothing_and_can_be_swept() {
    let mut s = PolicyState::new();
    let c = CouponBinding::try_from(CouponSpec {
        id: "c".into(),
        subscriber: "10.0.0.1".into(),
        decision: dec(1),
        expires: Some(1000),
        ..CouponSpec::default()
    })
    .unwrap();
    s.apply(&[Change::Add(Entry::Coupon(c))]).unwrap();
    let mut query = q("10.0.0.1", "192.0.2.1", 6, 80);
    query.now = 999;
    assert_eq!(source(&s, query), id(coupon_src, "c"));
    query.now = 1000;
    assert_eq!(source(&s, query), Source::Default);
    assert!(s.expired_coupons(999).is_empty());
    let sweep = s.expired_coupons(1000);
    s.apply(&sweep).unwrap();
    assert_eq!(s.len(Table::Coupon), 0);
}

#[test]
fn dscp_level_and_rate_reach_the_decision() {
    let mut s = PolicyState::new();
    let e = Entry::from_json(
        Table::Coupon,
        r#"{"id":"c","subscriber":"10.0.0.1","decision":{"level":"voice","dscp":"level","dst_port":5061,"rate":{"committed_bps":64000,"peak_bps":128000}}}"#,
    )
    .unwrap();
    s.apply(&[Change::Add(e)]).unwrap();
    let (d, _) = s.classify(&q("10.0.0.1", "192.0.2.1", 17, 5060));
    assert_eq!(d.level(), Level::Voice);
    assert_eq!(d.dscp(), Dscp::new(46));
    assert_eq!(d.actions().dst_port, Port::new(5061));
    assert_eq!(d.rate().unwrap().committed_bps(), 64000);
}

fn reason(s: &mut PolicyState, batch: &[Change]) -> BatchError {
    let before = s.clone();
    let e = s.apply(batch).unwrap_err();
    assert_eq!(*s, before, "a rejected batch changed the state");
    e
}

#[test]
fn validation_names_index_field_and_reason() {
    let mut s = PolicyState::new();
    s.apply(&[
        tier("gold", 3),
        login("10.0.0.1", "gold"),
        coupon("c", "10.0.0.1", None, None, 1),
    ])
    .unwrap();

    let e = reason(
        &mut s,
        &[tier("silver", 4), coupon("c", "10.0.0.9", None, None, 1)],
    );
    assert_eq!((e.index, e.field.as_str()), (1, "id"));
    assert!(e.reason.contains("duplicate"), "{e}");

    let e = reason(&mut s, &[tier("silver", 4), tier("silver", 5)]);
    assert_eq!((e.index, e.field.as_str()), (1, "name"));
    assert!(e.reason.contains("added by change 0 of this batch"), "{e}");

    let e = reason(&mut s, &[coupon("d", "10.0.0.1", None, None, 2)]);
    assert_eq!(e.field, "subscriber");
    assert!(e.reason.contains("duplicate match"), "{e}");

    let e = reason(&mut s, &[login("10.0.0.2", "platinum")]);
    assert_eq!(e.field, "tier");
    assert!(e.reason.contains("unknown tier"), "{e}");

    let e = reason(&mut s, &[Change::Remove(Key::Tier("gold".into()))]);
    assert_eq!(e.field, "name");
    assert!(e.reason.contains("used by 1 login"), "{e}");

    let e = reason(&mut s, &[Change::Remove(Key::Coupon("nope".into()))]);
    assert_eq!((e.field.as_str(), e.op), ("id", "remove"));

    let upd = match tier("nope", 1) {
        Change::Add(e) => Change::Update(e),
        _ => unreachable!(),
    };
    let e = reason(&mut s, &[upd]);
    assert!(e.reason.contains("no tier \"nope\" to update"), "{e}");

    let e = reason(
        &mut s,
        &[Change::Add(Entry::Default(Decision::BEST_EFFORT))],
    );
    assert!(e.reason.contains("use update"), "{e}");

    // A tier used by an IPv4 login cannot start rewriting to IPv6.
    let v6 = Entry::from_json(
        Table::Tier,
        r#"{"name":"gold","decision":{"level":1,"dst_addr":"2001:db8::1"}}"#,
    )
    .unwrap();
    let e = reason(&mut s, &[Change::Update(v6.clone())]);
    assert_eq!(e.field, "decision.dst_addr");
    // ... nor can an IPv6 login join a tier that rewrites to IPv4.
    let v4 = Entry::from_json(
        Table::Tier,
        r#"{"name":"v4only","decision":{"level":1,"dst_addr":"192.0.2.1"}}"#,
    )
    .unwrap();
    let e = reason(&mut s, &[Change::Add(v4), login("2001:db8::9", "v4only")]);
    assert_eq!((e.index, e.field.as_str()), (1, "tier"));

    // Moving the login away first makes the removal valid, in one batch.
    s.apply(&[
        tier("silver", 4),
        Change::Update(Entry::Login(
            LoginBinding::try_from(LoginSpec {
                subscriber: "10.0.0.1".into(),
                login: "alice".into(),
                tier: "silver".into(),
            })
            .unwrap(),
        )),
        Change::Remove(Key::Tier("gold".into())),
    ])
    .unwrap();
    assert_eq!(s.len(Table::Tier), 1);
}

#[test]
fn sequence_and_generations_count_changes() {
    let mut s = PolicyState::new();
    let a = s
        .apply(&[
            tier("gold", 3),
            login("10.0.0.1", "gold"),
            login("10.0.0.2", "gold"),
        ])
        .unwrap();
    assert_eq!(a, Applied { changes: 3, seq: 3 });
    assert_eq!(s.generation(Table::Tier), 1);
    assert_eq!(s.generation(Table::Login), 2);
    assert_eq!(s.generation(Table::Coupon), 0);
    let _ = s.apply(&[login("10.0.0.3", "gold"), login("10.0.0.3", "gold")]);
    assert_eq!((s.seq(), s.generation(Table::Login)), (3, 2));
    let info = s.tables();
    assert_eq!(info[Table::Login.index()].entries, 2);
    assert!(info[Table::Login.index()].approx_bytes > 0);
}

#[test]
fn state_rebuilds_from_its_rows() {
    let mut s = PolicyState::new();
    s.apply(&[
        tier("gold", 3),
        login("10.0.0.1", "gold"),
        coupon("c", "10.0.0.1", Some("10.0.0.0/8"), Some(80), 1),
        sp_ip("sp", "192.0.2.1", None, 2),
        eligible("10.0.0.0/8", None),
    ])
    .unwrap();
    let r = PolicyState::from_parts(
        *s.default_decision(),
        s.entries().collect(),
        s.seq(),
        s.generations(),
    )
    .unwrap();
    assert_eq!(r, s);
}

// ---------------------------------------------------------------------------
// Property tests against a brute-force oracle
// ---------------------------------------------------------------------------

const V4: [&str; 4] = ["10.0.0.1", "10.0.0.2", "10.0.1.1", "192.0.2.1"];
const V6: [&str; 3] = ["2001:db8::1", "2001:db8::2", "2001:db8:1::1"];
const V4_LENS: [u8; 6] = [0, 8, 16, 24, 31, 32];
const V6_LENS: [u8; 6] = [0, 32, 48, 64, 127, 128];
const PORTS: [Option<u64>; 3] = [None, Some(80), Some(443)];

fn any_addr() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(&V4[..]).prop_map(String::from),
        1 => proptest::sample::select(&V6[..]).prop_map(String::from),
    ]
}

fn prefix_of(addr: &str) -> impl Strategy<Value = String> {
    let a = ip(addr);
    let lens = if a.is_ipv4() { V4_LENS } else { V6_LENS };
    proptest::sample::select(lens.to_vec())
        .prop_map(move |l| Prefix::containing(a, l).unwrap().to_string())
}

fn any_prefix() -> impl Strategy<Value = String> {
    any_addr().prop_flat_map(|a| prefix_of(&a))
}

fn any_port() -> impl Strategy<Value = Option<u64>> {
    proptest::sample::select(&PORTS[..])
}

fn any_decision() -> impl Strategy<Value = DecisionSpec> {
    (
        0u8..8,
        proptest::option::of(prop_oneof![
            Just(DscpMark::FromLevel),
            (0u8..64).prop_map(|d| DscpMark::Value(Dscp::new(d).unwrap()))
        ]),
        proptest::option::weighted(0.2, any_addr()),
        proptest::option::weighted(0.2, 1u64..65536),
    )
        .prop_map(|(l, dscp, dst_addr, dst_port)| DecisionSpec {
            level: Level::from_number(l.into()).unwrap(),
            dscp,
            dst_addr,
            dst_port,
            ..DecisionSpec::default()
        })
}

fn names(prefix: &'static str, n: usize) -> impl Strategy<Value = String> {
    (0..n).prop_map(move |i| format!("{prefix}{i}"))
}

/// An entry built from specs; `None` when the combination is invalid (a
/// rewrite of the wrong family), which the model must refuse.
fn any_entry() -> impl Strategy<Value = Option<Entry>> {
    let coupon = (
        names("c", 6),
        any_addr(),
        any::<bool>(),
        any_port(),
        any_decision(),
        proptest::sample::select(&[None, Some(500u64), Some(2000)][..]),
    )
        .prop_flat_map(|(id, sub, with_dst, port, d, expires)| {
            let dst = if with_dst {
                prefix_of(&sub).prop_map(Some).boxed()
            } else {
                Just(None).boxed()
            };
            (Just((id, sub, port, d, expires)), dst)
        })
        .prop_map(|((id, subscriber, port, decision, expires), dst)| {
            CouponBinding::try_from(CouponSpec {
                id,
                subscriber,
                dst,
                port,
                decision,
                expires,
            })
            .ok()
            .map(Entry::Coupon)
        });
    let tier = (names("t", 3), any_decision()).prop_map(|(name, decision)| {
        Tier::try_from(TierSpec { name, decision })
            .ok()
            .map(Entry::Tier)
    });
    let login = (any_addr(), names("t", 3)).prop_map(|(subscriber, tier)| {
        LoginBinding::try_from(LoginSpec {
            login: format!("u-{subscriber}"),
            subscriber,
            tier,
        })
        .ok()
        .map(Entry::Login)
    });
    let sp = (
        names("s", 6),
        any::<bool>(),
        any_addr(),
        any_prefix(),
        any_port(),
        any_decision(),
    )
        .prop_map(|(id, by_ip, addr, prefix, port, decision)| {
            SpAllocation::try_from(SpSpec {
                id,
                provider: "p".into(),
                ip: by_ip.then_some(addr),
                prefix: (!by_ip).then_some(prefix),
                port,
                decision,
            })
            .ok()
            .map(Entry::Sp)
        });
    let elig = (any_prefix(), any_port()).prop_map(|(dst, port)| {
        EligibilityRule::try_from(EligibilitySpec { dst, port })
            .ok()
            .map(Entry::Eligibility)
    });
    prop_oneof![3 => coupon, 1 => tier, 2 => login, 2 => sp, 1 => elig]
}

fn any_change() -> impl Strategy<Value = Option<Change>> {
    prop_oneof![
        4 => any_entry().prop_map(|e| e.map(Change::Add)),
        1 => any_entry().prop_map(|e| e.map(Change::Update)),
        1 => any_entry().prop_map(|e| e.map(|e| Change::Remove(e.key()))),
        1 => any_decision().prop_map(|d| {
            Decision::try_from(d).ok().filter(|d| d.actions().dst_addr.is_none())
                .map(|d| Change::Update(Entry::Default(d)))
        }),
    ]
}

fn any_query() -> impl Strategy<Value = FlowQuery> {
    (
        any_addr(),
        any_addr(),
        proptest::sample::select(&[6u8, 17, 1][..]),
        proptest::sample::select(&[80u16, 443, 8080][..]),
        proptest::sample::select(&[0u64, 500, 1000, 3000][..]),
    )
        .prop_map(|(src, dst, proto, dst_port, now)| FlowQuery {
            src: ip(&src),
            dst: ip(&dst),
            proto,
            dst_port,
            now,
        })
}

/// A state built by applying random changes one by one (the refused ones
/// are dropped, after checking they changed nothing).
fn build(changes: &[Option<Change>]) -> PolicyState {
    let mut s = PolicyState::new();
    for c in changes.iter().flatten() {
        let before = s.clone();
        if s.apply(std::slice::from_ref(c)).is_err() {
            assert_eq!(s, before);
        }
    }
    s
}

/// The precedence of the module doc, by brute force over the rows.
fn oracle(s: &PolicyState, q: &FlowQuery) -> (Decision, Source) {
    let port_ok = |p: Option<Port>| match p {
        None => true,
        Some(p) => (q.proto == 6 || q.proto == 17) && p.get() == q.dst_port,
    };
    let by_ip = s
        .sp_allocations()
        .filter(|a| a.target() == SpMatch::Ip(q.dst) && port_ok(a.port()))
        .max_by_key(|a| a.port().is_some());
    if let Some(a) = by_ip {
        return (*a.decision(), Source::SpIp { id: a.id().into() });
    }
    let by_prefix = s
        .sp_allocations()
        .filter_map(|a| match a.target() {
            SpMatch::Prefix(p) if p.contains(q.dst) && port_ok(a.port()) => {
                Some((p.prefix_len(), a.port().is_some(), a))
            }
            _ => None,
        })
        .max_by_key(|&(len, port, _)| (len, port));
    if let Some((_, _, a)) = by_prefix {
        return (*a.decision(), Source::SpPrefix { id: a.id().into() });
    }
    let eligible = s.eligibility_rules().len() == 0
        || s.eligibility_rules()
            .any(|r| r.dst().contains(q.dst) && port_ok(r.port()));
    if eligible {
        let best = s
            .coupons()
            .filter(|c| {
                c.subscriber() == q.src
                    && c.dst().is_none_or(|d| d.contains(q.dst))
                    && port_ok(c.port())
                    && c.expires().is_none_or(|e| q.now < e)
            })
            .max_by_key(|c| {
                (
                    c.port().is_some(),
                    c.dst().map_or(-1, |d| i32::from(d.prefix_len())),
                )
            });
        if let Some(c) = best {
            return (*c.decision(), Source::Coupon { id: c.id().into() });
        }
        if let Some(l) = s.logins().find(|l| l.subscriber() == q.src) {
            let t = s.tiers().find(|t| t.name() == l.tier()).unwrap();
            return (
                *t.decision(),
                Source::Login {
                    login: l.login().into(),
                    tier: l.tier().into(),
                },
            );
        }
    }
    (*s.default_decision(), Source::Default)
}

/// The generators are worth something only if the states they build make
/// every rule of the precedence decide some queries.
#[test]
fn the_generators_reach_every_rule() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let changes = proptest::collection::vec(any_change(), 0..60);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..100 {
        let s = build(&changes.new_tree(&mut runner).unwrap().current());
        for _ in 0..20 {
            let q = any_query().new_tree(&mut runner).unwrap().current();
            seen.insert(match s.classify(&q).1 {
                Source::SpIp { .. } => "sp-ip",
                Source::SpPrefix { .. } => "sp-prefix",
                Source::Coupon { .. } => "coupon",
                Source::Login { .. } => "login",
                Source::Default => "default",
            });
        }
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn classify_matches_the_brute_force_oracle(
        changes in proptest::collection::vec(any_change(), 0..60),
        queries in proptest::collection::vec(any_query(), 1..40),
    ) {
        let s = build(&changes);
        for query in &queries {
            prop_assert_eq!(s.classify(query), oracle(&s, query), "{:?}", query);
        }
    }

    #[test]
    fn a_batch_applies_all_or_nothing(
        setup in proptest::collection::vec(any_change(), 0..30),
        batch in proptest::collection::vec(any_change(), 1..12),
    ) {
        let mut s = build(&setup);
        let batch: Vec<Change> = batch.into_iter().flatten().collect();
        let before = s.clone();
        // The reference: the same changes one at a time on a copy.
        let mut one_by_one = before.clone();
        let mut first_bad = None;
        for (i, c) in batch.iter().enumerate() {
            if one_by_one.apply(std::slice::from_ref(c)).is_err() {
                first_bad = Some(i);
                break;
            }
        }
        match s.apply(&batch) {
            Ok(a) => {
                prop_assert_eq!(first_bad, None);
                prop_assert_eq!(a.changes, batch.len());
                prop_assert_eq!(&s, &one_by_one);
            }
            Err(e) => {
                prop_assert_eq!(Some(e.index), first_bad);
                prop_assert_eq!(&s, &before);
            }
        }
    }

    #[test]
    fn a_state_round_trips_through_its_rows(changes in proptest::collection::vec(any_change(), 0..60)) {
        let s = build(&changes);
        let r = PolicyState::from_parts(*s.default_decision(), s.entries().collect(), s.seq(), s.generations()).unwrap();
        prop_assert_eq!(r, s);
    }
}

// ---------------------------------------------------------------------------
// Requests end to end
// ---------------------------------------------------------------------------

fn ok(p: &mut Policy, line: &str) -> serde_json::Value {
    let r = p.handle_line(line);
    assert!(r.ok, "{line}: {}", r.to_line());
    serde_json::from_str(&r.to_line()).unwrap()
}

fn fail(p: &mut Policy, line: &str) -> ProtocolError {
    let before = p.state().clone();
    let r = p.handle_line(line);
    assert!(!r.ok, "{line}");
    assert_eq!(*p.state(), before, "a failed request changed the state");
    r.error.unwrap()
}

#[test]
fn requests_execute_and_errors_point_into_the_request() {
    let mut p = Policy::in_memory();
    let v = ok(
        &mut p,
        r#"{"op":"add","table":"tier","entries":[{"name":"gold","decision":{"level":"premium","dscp":"level"}}]}"#,
    );
    assert_eq!(v["seq"], 1);
    ok(
        &mut p,
        r#"{"op":"add","table":"coupon","entries":[{"id":"a","subscriber":"10.0.0.1","decision":{"level":1}},{"id":"b","subscriber":"10.0.0.2","decision":{"level":1}}]}"#,
    );
    let e = fail(
        &mut p,
        r#"{"op":"add","table":"coupon","entries":[{"id":"x","subscriber":"10.0.0.5","decision":{"level":1}},{"id":"a","subscriber":"10.0.0.3","decision":{"level":1}}]}"#,
    );
    assert_eq!((e.index, e.field.as_str()), (Some(1), "entries[1].id"));
    assert!(e.reason.contains("duplicate"), "{e}");
    let e = fail(
        &mut p,
        r#"{"op":"add","table":"coupon","entries":[{"id":"x","subscriber":"10.0.0.5","decision":{"level":1}},{"id":"x","subscriber":"10.0.0.6","decision":{"level":1}}]}"#,
    );
    assert_eq!(e.field, "entries[1].id");
    assert!(e.reason.contains("added by change 0"), "{e}");
    let e = fail(
        &mut p,
        r#"{"op":"batch","changes":[{"op":"remove","table":"coupon","key":{"id":"a"}},{"op":"add","table":"login","entry":{"subscriber":"10.0.0.9","login":"z","tier":"bronze"}}]}"#,
    );
    assert_eq!(
        (e.index, e.field.as_str()),
        (Some(1), "changes[1].entry.tier")
    );
    let e = fail(
        &mut p,
        r#"{"op":"remove","table":"coupon","keys":[{"id":"a"},{"id":"zz"}]}"#,
    );
    assert_eq!(e.field, "keys[1].id");
    let e = fail(
        &mut p,
        r#"{"op":"remove","table":"tier","keys":[{"name":"gold"}],"x":1}"#,
    );
    assert_eq!(e.field, "x");

    let v = ok(&mut p, r#"{"op":"get","table":"coupon","key":{"id":"b"}}"#);
    assert_eq!(v["entry"]["subscriber"], "10.0.0.2");
    let e = fail(
        &mut p,
        r#"{"op":"get","table":"coupon","key":{"id":"nope"}}"#,
    );
    assert_eq!(e.field, "key.id");
    let v = ok(
        &mut p,
        r#"{"op":"list","table":"coupon","offset":1,"limit":5}"#,
    );
    assert_eq!(v["total"], 2);
    assert_eq!(v["entries"][0]["id"], "b");
    let v = ok(&mut p, r#"{"op":"get","table":"default"}"#);
    assert_eq!(v["entry"]["level"], "best-effort");
    ok(
        &mut p,
        r#"{"op":"update","table":"default","entries":[{"level":"scavenger","dscp":"level"}]}"#,
    );
    let v = ok(&mut p, r#"{"op":"stats"}"#);
    assert_eq!(v["seq"], 4);
    assert!(v.get("store").is_none());
    let v = ok(&mut p, r#"{"op":"tables"}"#);
    assert_eq!(v["tables"][0]["table"], "coupon");
    assert_eq!(v["tables"][0]["entries"], 2);
    let (d, _) = p.state().classify(&q("10.9.9.9", "192.0.2.1", 6, 80));
    assert_eq!(d.dscp(), Dscp::new(1));
}

#[test]
fn what_list_returns_can_be_added_back() {
    let mut p = Policy::in_memory();
    ok(
        &mut p,
        r#"{"op":"add","table":"sp","entries":[{"id":"s1","provider":"acme","prefix":"2001:db8::/32","port":443,"decision":{"level":2,"dst_addr":"2001:db8::80","mss_clamp":1400}}]}"#,
    );
    let v = ok(&mut p, r#"{"op":"list","table":"sp"}"#);
    let line = format!(r#"{{"op":"add","table":"sp","entries":{}}}"#, v["entries"]);
    let mut q = Policy::in_memory();
    ok(&mut q, &line);
    assert_eq!(
        q.state().sp_allocations().collect::<Vec<_>>(),
        p.state().sp_allocations().collect::<Vec<_>>()
    );
}

#[test]
fn pages_of_a_hashed_table_come_in_key_order() {
    let mut s = PolicyState::new();
    let batch: Vec<Change> = (0..50)
        .map(|i| coupon(&format!("c{i:02}"), &format!("10.0.0.{i}"), None, None, 1))
        .collect();
    s.apply(&batch).unwrap();
    let mut ids = Vec::new();
    for page in 0..8 {
        for e in s.list(Table::Coupon, page * 7, 7) {
            let Entry::Coupon(c) = e else { unreachable!() };
            ids.push(c.id().to_string());
        }
    }
    let want: Vec<String> = (0..50).map(|i| format!("c{i:02}")).collect();
    assert_eq!(ids, want);
    assert!(s.list(Table::Coupon, 50, 10).is_empty());
    assert_eq!(s.list(Table::Default, 0, 10).len(), 1);
}

/// Members of `add`/`update` requests, good and bad, for the fast path's
/// parity test.
const REQUEST_PARTS: &[&str] = &[
    r#""op":"add""#,
    r#""op":"update""#,
    r#""op":"remove""#,
    r#""op":"upd\u0061te""#,
    r#""table":"coupon""#,
    r#""table":"Login""#,
    r#""table":"tier""#,
    r#""table":"nope""#,
    r#""t\u0061ble":"coupon""#,
    r#""entries":[{"id":"c1","subscriber":"10.0.0.1","decision":{"level":"voice","dscp":46}}]"#,
    r#""entries":[{"id":"c1","subscriber":"10.0.0.1","port":443,"decision":{"level":1}},{"id":"c2","subscriber":"2001:db8::2","dst":"2001:db8::/32","decision":{"level":"bulk","rate":{"committed_bps":1000,"peak_bps":2000}},"expires":4102444800}]"#,
    r#""entries":[{"id":"c1","subscriber":"10.0.0.999","decision":{"level":1}}]"#,
    r#""entries":[{"id":"c\u0031","subscriber":"10.0.0.\u0031","dst":"10.\u0030.0.0/8","decision":{"level":1}}]"#,
    r#""entries":[{"id":" c1","subscriber":"10.0.0.1","decision":{"level":1}}]"#,
    r#""entries":[{"id":"c1","subscriber":"10.0.0.1","dst":null,"port":null,"expires":null,"decision":{"level":1}}]"#,
    r#""entries":[{"id":"c1","subscriber":"10.0.0.1","decision":{"level":9}}]"#,
    r#""entries":[{"id":"c1","subscriber":"10.0.0.1","decision":{"level":1},"extra":1}]"#,
    r#""entries":[{"subscriber":"10.0.0.3","login":"al\"ice","tier":"gold"}]"#,
    r#""entries":[{"name":"gold","decision":{"level":"premium"}}]"#,
    r#""entries":[]"#,
    r#""entries":{}"#,
    r#""keys":[{"id":"c1"}]"#,
    r#""limit":3"#,
    r#""seq":1"#,
];

proptest! {
    /// Whatever an `add`/`update` request holds (members in any order,
    /// repeated, unknown, escaped, bad rows), the one-pass fast path
    /// answers exactly as the general path, errors included.
    #[test]
    fn the_fast_path_parses_exactly_as_the_general_path(
        parts in proptest::collection::vec(proptest::sample::select(REQUEST_PARTS), 0..5),
        trailer in proptest::sample::select(&["", " ", "x", "}", "\n"][..]),
    ) {
        let line = format!("{{{}}}{trailer}", parts.join(","));
        let fast = parse_request(&line);
        let general = protocol::parse_general(line.trim_end_matches('\n'));
        prop_assert_eq!(format!("{fast:?}"), format!("{general:?}"), "{}", line);
    }

    #[test]
    fn arbitrary_request_lines_never_panic(line in ".{0,200}") {
        let mut p = Policy::in_memory();
        let _ = p.handle_line(&line);
    }

    #[test]
    fn mutated_requests_never_panic_and_never_half_apply(
        cut in 0usize..400,
        byte in 0usize..400,
        with in proptest::sample::select(&[b'"', b'{', b'}', b'1', b'x', b',', b':', b'.', b'/'][..]),
    ) {
        let base = r#"{"op":"batch","changes":[{"op":"add","table":"tier","entry":{"name":"g","decision":{"level":1,"dscp":"level"}}},{"op":"add","table":"login","entry":{"subscriber":"10.0.0.1","login":"a","tier":"g"}},{"op":"add","table":"coupon","entry":{"id":"c","subscriber":"10.0.0.1","dst":"10.0.0.0/8","port":80,"decision":{"level":2}}}]}"#;
        let mut bytes = base.as_bytes().to_vec();
        let byte = byte % bytes.len();
        bytes[byte] = with;
        bytes.truncate(cut.max(1).min(bytes.len()));
        let line = String::from_utf8(bytes).unwrap();
        let mut p = Policy::in_memory();
        let r = p.handle_line(&line);
        if r.ok {
            prop_assert_eq!(p.state().seq(), 3);
        } else {
            prop_assert_eq!(p.state(), &PolicyState::new());
        }
    }

    #[test]
    fn arbitrary_csv_never_panics(text in "[a-z0-9.,:/\n# \"]{0,300}", t in 0usize..6) {
        let _ = super::csv::parse_csv(Table::ALL[t], text.as_bytes());
        let _ = super::csv::parse_csv(Table::ALL[t], format!("id,subscriber,level,dst,port\n{text}").as_bytes());
    }
}

/// Re-rating a coupon in place (same subscriber, destination and port)
/// skips the match-index checks: it passes at the per-subscriber limit,
/// moving it onto another coupon's match is still refused, and a batch
/// that fails after it puts the old row back.
#[test]
fn a_coupon_re_rated_in_place_passes_the_limit_and_rolls_back() {
    let mut s = PolicyState::new();
    let full: Vec<Change> = (0..MAX_COUPONS_PER_SUBSCRIBER)
        .map(|i| coupon(&format!("c{i}"), "10.0.0.1", None, Some(1000 + i as u64), 3))
        .collect();
    s.apply(&full).unwrap();
    let update = |c: Change| match c {
        Change::Add(e) => Change::Update(e),
        other => other,
    };
    let rerated = update(coupon("c0", "10.0.0.1", None, Some(1000), 5));
    s.apply(std::slice::from_ref(&rerated)).unwrap();
    assert_eq!(
        source(&s, q("10.0.0.1", "192.0.2.1", 6, 1000)),
        coupon_src("c0".into())
    );
    // Onto the port of c1: a duplicate match, refused.
    let clash = update(coupon("c0", "10.0.0.1", None, Some(1001), 5));
    assert!(reason(&mut s, &[clash]).reason.contains("duplicate match"));
    let before = s.clone();
    let back = update(coupon("c0", "10.0.0.1", None, Some(1000), 3));
    let missing = update(coupon("nope", "10.0.0.2", None, None, 3));
    let e = reason(&mut s, &[back, missing]);
    assert_eq!(e.index, 1);
    assert_eq!(s, before);
}

/// Batches parsed from request lines of every shape (members in any
/// order, blanks, escapes, a mixed `batch`) are journaled in binary and
/// load back as the batches they were.
#[test]
fn parsed_batches_are_journaled_in_binary_and_load_back() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        r#"{"op":"add","table":"tier","entries":[{"name":"gold","decision":{"level":"premium"}}]}"#,
        // Members in another order, blanks around them, escapes in strings.
        " \t{ \"entries\" : [ {\"subscriber\":\"10.0.0.1\",\"login\":\"al\\u0069ce \\\"a\\\"\",\"tier\":\"gold\"} ],\n \"table\":\"login\", \"op\" : \"add\" } ",
        r#"{"op":"batch","changes":[{"op":"add","table":"coupon","entry":{"id":"c1","subscriber":"10.0.0.2","decision":{"level":"voice","dscp":46},"expires":4102444800}},{"op":"remove","table":"login","key":{"subscriber":"10.0.0.1"}}]}"#,
        r#"{"table":"coupon","op":"update","entries":[{"id":"c1","subscriber":"10.0.0.2","port":5060,"decision":{"level":1}}]}"#,
    ];
    let (mut policy, _) = Policy::open(dir.path(), StoreOptions::default()).unwrap();
    for line in lines {
        let Ok(Request::Apply { changes, .. }) = parse_request(line) else {
            panic!("{line}")
        };
        policy.commit(&changes).unwrap();
    }
    policy.commit(&[tier("silver", 3)]).unwrap();
    let want = policy.state().clone();
    drop(policy);
    // Binary records, no JSON: the login's escaped name is stored decoded.
    let journal = std::fs::read(dir.path().join("journal")).unwrap();
    let text = String::from_utf8_lossy(&journal);
    assert_eq!(text.matches("SLJB").count(), 5, "{text}");
    assert!(text.contains("alice \"a\""), "{text}");
    assert!(!text.contains("\"entries\""), "{text}");
    let (policy, report) = Policy::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(report.replayed_records, 5);
    assert_eq!(policy.state(), &want);
    assert_eq!(policy.state().len(Table::Login), 0);
    assert_eq!(
        policy.state().get(&Key::Coupon("c1".into())),
        want.get(&Key::Coupon("c1".into()))
    );
}
