//! The coupon manager against an in-memory policy, with an injected clock:
//! what a redemption binds, when windows and expiry switch it, what a
//! revocation and a crash between ledger and policy leave behind.
use std::net::IpAddr;

use serde_json::json;
use sluice_coupon::{Claims, HolderKey, KeyRing, Refusal};

use super::*;
use crate::policy::{PolicyState, Source};

struct Mem(PolicyState);

impl Binder for Mem {
    fn state(&self) -> &PolicyState {
        &self.0
    }
    fn commit(&mut self, batch: &[Change]) -> Result<(), String> {
        self.0.apply(batch).map(|_| ()).map_err(|e| e.to_string())
    }
}

/// Monday 2026-11-23 00:00:00 UTC.
const MONDAY: u64 = 1_795_392_000;

fn ring() -> (KeyRing, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    KeyRing::generate_at(dir.path(), 1).unwrap();
    (KeyRing::load(dir.path()).unwrap(), dir)
}

fn claims(id: &str, extra: serde_json::Value) -> Claims {
    let mut c = json!({
        "id": id,
        "customer": "alice",
        "level": 3,
        "modes": [{"dscp": 46}],
        "basis": {"kind": "customer", "amount": 100},
        "not_before": MONDAY - 86400,
        "expires": MONDAY + 30 * 86400,
        "max_redemptions": 2,
        "holder": HolderKey::generate().unwrap().public_paserk(),
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    serde_json::from_value(c).unwrap()
}

fn setup() -> (Coupons, Mem, tempfile::TempDir) {
    let (ring, dir) = ring();
    let c = Coupons::in_memory(ring, dir.path(), 30);
    (c, Mem(PolicyState::new()), dir)
}

fn issue(c: &mut Coupons, b: &mut Mem, cl: &Claims, now: u64) -> String {
    let v = c.handle(
        &json!({"op": "coupon_issue", "claims": cl}).to_string(),
        now,
        b,
    );
    assert_eq!(v["ok"], true, "{v}");
    v["token"].as_str().unwrap().to_owned()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The level and whether a coupon decided it.
fn level_of(b: &Mem, sub: &str, dst: &str, port: u16, now: u64) -> (u8, bool) {
    let q = crate::policy::FlowQuery {
        src: ip(sub),
        dst: ip(dst),
        proto: 6,
        dst_port: port,
        now,
    };
    let (d, s) = b.0.classify(&q);
    (d.level().number(), matches!(s, Source::Coupon { .. }))
}

#[test]
fn a_redemption_binds_each_restriction_and_a_second_subscriber_counts_toward_the_limit() {
    let (mut c, mut b, _d) = setup();
    let cl = claims(
        "web",
        json!({"scope": {"prefixes": ["203.0.113.0/24", "198.51.100.7/32"], "ports": [443]}}),
    );
    let t = issue(&mut c, &mut b, &cl, MONDAY);
    let out = c.redeem_token(&t, ip("10.0.0.1"), MONDAY, &mut b);
    assert!(
        matches!(
            out,
            Outcome::Granted {
                rows: 2,
                again: false,
                ..
            }
        ),
        "{out:?}"
    );
    assert_eq!(
        level_of(&b, "10.0.0.1", "203.0.113.9", 443, MONDAY),
        (3, true)
    );
    assert!(!level_of(&b, "10.0.0.1", "203.0.113.9", 80, MONDAY).1);
    assert!(!level_of(&b, "10.0.0.2", "203.0.113.9", 443, MONDAY).1);
    // Again from the same address: granted, nothing new recorded.
    let again = c.redeem_token(&t, ip("10.0.0.1"), MONDAY, &mut b);
    assert!(
        matches!(again, Outcome::Granted { again: true, .. }),
        "{again:?}"
    );
    assert!(matches!(
        c.redeem_token(&t, ip("10.0.0.2"), MONDAY, &mut b),
        Outcome::Granted { .. }
    ));
    match c.redeem_token(&t, ip("10.0.0.3"), MONDAY, &mut b) {
        Outcome::Refused { reason, .. } => assert_eq!(reason, Refusal::RedemptionLimit),
        o => panic!("{o:?}"),
    }
    assert_eq!(c.ledger().get("web").unwrap().redemptions.len(), 2);
    assert_eq!(b.0.coupons().len(), 4);
}

#[test]
fn a_time_window_switches_the_bindings_on_and_off_without_a_restart() {
    let (mut c, mut b, _d) = setup();
    let cl = claims("evening", json!({"windows": ["mon-fri 18:00-23:00"]}));
    let t = issue(&mut c, &mut b, &cl, MONDAY);
    let noon = MONDAY + 12 * 3600;
    let out = c.redeem_token(&t, ip("10.0.0.1"), noon, &mut b);
    assert!(
        matches!(out, Outcome::Granted { rows: 0, .. }),
        "outside its window: {out:?}"
    );
    assert_eq!(b.0.coupons().len(), 0);
    c.sweep(MONDAY + 18 * 3600 - 1, &mut b);
    assert_eq!(b.0.coupons().len(), 0);
    c.sweep(MONDAY + 18 * 3600, &mut b);
    assert_eq!(b.0.coupons().len(), 1, "on at 18:00");
    assert_eq!(
        level_of(&b, "10.0.0.1", "192.0.2.1", 80, MONDAY + 18 * 3600).0,
        3
    );
    c.sweep(MONDAY + 23 * 3600, &mut b);
    assert_eq!(b.0.coupons().len(), 0, "off at 23:00");
    // Saturday: no window.
    c.sweep(MONDAY + 5 * 86400 + 19 * 3600, &mut b);
    assert_eq!(b.0.coupons().len(), 0);
    let v = c.handle(
        r#"{"op":"coupon_get","id":"evening"}"#,
        MONDAY + 12 * 3600,
        &mut b,
    );
    assert_eq!(v["coupon"]["state"], "outside_window", "{v}");
}

#[test]
fn revocation_removes_the_bindings_and_refuses_later_redemptions() {
    let (mut c, mut b, _d) = setup();
    let t = issue(&mut c, &mut b, &claims("r", json!({})), MONDAY);
    c.redeem_token(&t, ip("10.0.0.1"), MONDAY, &mut b);
    assert_eq!(b.0.coupons().len(), 1);
    let v = c.handle(r#"{"op":"coupon_revoke","id":"r"}"#, MONDAY + 5, &mut b);
    assert_eq!(v["bindings_removed"], 1, "{v}");
    assert_eq!(b.0.coupons().len(), 0);
    match c.redeem_token(&t, ip("10.0.0.2"), MONDAY + 6, &mut b) {
        Outcome::Refused { reason, .. } => assert_eq!(reason, Refusal::Revoked),
        o => panic!("{o:?}"),
    }
    let twice = c.handle(r#"{"op":"coupon_revoke","id":"r"}"#, MONDAY + 7, &mut b);
    assert_eq!(twice["ok"], false);
}

#[test]
fn bad_requests_change_nothing_and_name_the_field() {
    let (mut c, mut b, _d) = setup();
    let cases = [
        (r#"{"op":"coupon_issue","claims":{"id":"x"}}"#, "claims"),
        (r#"{"op":"coupon_revoke","id":"bad id!"}"#, "id"),
        (
            r#"{"op":"coupon_redeem","token":"v4.public.xx","subscriber":"10.0.0.300"}"#,
            "subscriber",
        ),
        (r#"{"op":"coupon_frobnicate"}"#, ""),
    ];
    for (req, field) in cases {
        let v = c.handle(req, MONDAY, &mut b);
        assert_eq!(v["ok"], false, "{req}: {v}");
        assert_eq!(v["error"]["field"], field, "{req}: {v}");
    }
    let five = claims(
        "wide",
        json!({"scope": {"prefixes": ["10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/16"], "ports": [1, 2]}}),
    );
    let v = c.handle(
        &json!({"op":"coupon_issue","claims": five}).to_string(),
        MONDAY,
        &mut b,
    );
    assert_eq!(v["error"]["field"], "claims.scope", "{v}");
    assert_eq!(c.ledger().len(), 0);
    assert_eq!(b.0.seq(), 0);
}

#[test]
fn a_crash_between_ledger_and_policy_is_repaired_by_reconcile() {
    let (mut c, mut b, _d) = setup();
    let t = issue(&mut c, &mut b, &claims("k", json!({})), MONDAY);
    c.redeem_token(&t, ip("10.0.0.1"), MONDAY, &mut b);
    // The policy lost the row (as if the process died before committing it).
    let ids: Vec<String> = b.0.coupons().map(|r| r.id().to_owned()).collect();
    b.0.apply(&[Change::Remove(Key::Coupon(ids[0].clone()))])
        .unwrap();
    c.reconcile_all(MONDAY + 1, &mut b);
    assert_eq!(b.0.coupons().len(), 1);
    // Expired coupons are not restored.
    c.reconcile_all(MONDAY + 31 * 86400, &mut b);
    assert_eq!(b.0.coupons().len(), 0);
}

#[test]
fn a_subscriber_keeps_what_fits_and_the_rest_is_counted() {
    let (mut c, mut b, _d) = setup();
    for (i, p) in ["10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/16"]
        .iter()
        .enumerate()
    {
        let t = issue(
            &mut c,
            &mut b,
            &claims(
                &format!("c{i}"),
                json!({"scope": {"prefixes": [p], "ports": [1, 2]}}),
            ),
            MONDAY,
        );
        c.redeem_token(&t, ip("10.0.0.1"), MONDAY, &mut b);
    }
    assert_eq!(
        b.0.coupons().len(),
        crate::policy::MAX_COUPONS_PER_SUBSCRIBER
    );
    assert_eq!(c.counters().scope_overflow, 2);
}

#[test]
fn the_ledger_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cl = claims("d", json!({}));
    {
        let mut l = ledger::Ledger::open(dir.path()).unwrap();
        l.record(ledger::Event::Redeemed {
            token: "t".into(),
            claims: cl.clone(),
            kid: "k".into(),
            subscriber: ip("10.0.0.1"),
            at: 5,
            via: "packet".into(),
        })
        .unwrap();
        l.record(ledger::Event::Revoked {
            id: "d".into(),
            at: 6,
        })
        .unwrap();
    }
    // A torn tail (a write that was never acknowledged) is cut off.
    let path = dir.path().join(ledger::LEDGER_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(b"SLJ1\x10\x00");
    std::fs::write(&path, &bytes).unwrap();
    let mut l = ledger::Ledger::open(dir.path()).unwrap();
    assert_eq!(l.truncated_bytes, 6);
    let r = l.get("d").unwrap();
    assert_eq!(r.redemptions.len(), 1);
    assert_eq!(r.revoked_at, Some(6));
    l.compact().unwrap();
    let l = ledger::Ledger::open(dir.path()).unwrap();
    assert_eq!(l.get("d").unwrap().revoked_at, Some(6));
}

#[test]
fn in_band_requests_are_limited_per_source_and_second() {
    let (mut c, _b, _d) = setup();
    let (a, z) = (ip("10.0.0.1"), ip("10.0.0.2"));
    for _ in 0..10 {
        assert!(c.admit(a, MONDAY));
    }
    assert!(!c.admit(a, MONDAY), "the 11th in the same second");
    assert!(c.admit(z, MONDAY), "another source has its own budget");
    assert!(c.admit(a, MONDAY + 1), "a new second");
    assert_eq!(c.counters().rate_limited, 1);
}

#[test]
fn a_repeated_restriction_gives_one_row() {
    let (mut c, mut b, _d) = setup();
    let cl = claims(
        "twice",
        json!({"scope": {"prefixes": ["203.0.113.0/24", "203.0.113.0/24"], "ports": [443]}}),
    );
    let t = issue(&mut c, &mut b, &cl, MONDAY);
    let out = c.redeem_token(&t, ip("10.0.0.1"), MONDAY, &mut b);
    assert!(matches!(out, Outcome::Granted { rows: 1, .. }), "{out:?}");
    assert_eq!(b.0.coupons().len(), 1);
}
