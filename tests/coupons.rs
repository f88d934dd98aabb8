//! Signed priority coupons through the real appliance: issued with
//! `sluicectl coupon issue`, installed and redeemed in band by
//! `sluice-client` from the subscriber's namespace, then applied to real
//! traffic (port remap, address remap, DSCP, a hostname scope learned from
//! a real DNS answer); and every kind of abuse refused with its reason.
mod common;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;
use sluice_coupon::time::now_unix;
use sluice_coupon::{Bundle, HolderKey, Proof, RedeemRequest, Refusal, StatusResponse};

const CLIENT: &str = env!("CARGO_BIN_EXE_sluice-client");
const SUB: &str = "198.18.0.1";
const SERVER: &str = "198.18.0.2";
const VIA: &str = "198.18.0.2:7466";

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", describe(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ctl_json(bench: &Bench, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out = sluicectl(&bench.socket, &a);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{args:?}: {}", describe(&out)))
}

/// Issues a coupon; returns the bundle's path.
fn issue(bench: &Bench, id: &str, flags: &[&str]) -> PathBuf {
    let out_path = bench.dir.path().join(format!("{id}.coupon.json"));
    let mut a = vec![
        "coupon",
        "issue",
        "--id",
        id,
        "--customer",
        "alice",
        "--out",
        out_path.to_str().unwrap(),
    ];
    a.extend_from_slice(flags);
    let text = ok(&sluicectl(&bench.socket, &a));
    assert!(text.contains("issued coupon"), "{text}");
    out_path
}

/// `sluice-client --dir <dir> <args>` run inside the subscriber namespace.
fn client(bench: &Bench, args: &[&str]) -> Output {
    let dir = bench.dir.path().join("client");
    let mut a = vec![CLIENT, "--dir", dir.to_str().unwrap()];
    a.extend_from_slice(args);
    Namespaces::exec(&bench.ns.a, &a)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Sends `payload` as one UDP datagram from the subscriber namespace (from
/// `src`) to the redemption port; returns the status answer.
fn send_raw(bench: &Bench, payload: &[u8], src: &str) -> Option<StatusResponse> {
    let f = bench.dir.path().join(format!("req-{}", unique("r")));
    std::fs::write(&f, payload).unwrap();
    let out = Namespaces::exec(
        &bench.ns.a,
        &[
            "socat",
            "-t",
            "2",
            "-T",
            "3",
            "-",
            &format!("UDP4:{VIA},bind={src}"),
        ],
    )
    .stdin(std::fs::File::open(&f).unwrap())
    .output()
    .unwrap();
    StatusResponse::decode(&out.stdout).ok()
}

/// A redemption request for the coupon in `bundle`, with a proof for
/// `src` made at `ts`.
fn request(bundle: &Path, src: &str, ts: u64) -> Vec<u8> {
    let b = Bundle::read(bundle).unwrap();
    let holder = HolderKey::from_paserk(b.holder_secret.as_deref().unwrap()).unwrap();
    let proof = Proof {
        cid: b.id.clone(),
        src: src.parse::<IpAddr>().unwrap(),
        ts,
        nonce: sluice_coupon::new_nonce().unwrap(),
    };
    let pop = sluice_coupon::sign_proof(&holder, &b.token, &proof).unwrap();
    RedeemRequest {
        coupon: b.token,
        pop,
    }
    .encode()
}

fn bindings(bench: &Bench) -> Vec<Value> {
    let v = ctl_json(bench, &["list", "coupon"]);
    v["entries"].as_array().cloned().unwrap_or_default()
}

/// A server in the upstream namespace answering every TCP connection on
/// `listen` (addr:port) with `text`.
fn serve_text(bench: &Bench, listen: &str, text: &str) -> Background {
    let (addr, port) = listen.rsplit_once(':').unwrap();
    Background(
        Namespaces::exec(
            &bench.ns.b,
            &[
                "socat",
                &format!("TCP-LISTEN:{port},bind={addr},reuseaddr,fork"),
                &format!("SYSTEM:echo {text}"),
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    )
}

/// What a plain TCP client in the subscriber namespace reads from `dst`.
fn fetch(bench: &Bench, dst: &str) -> String {
    let out = Namespaces::exec(
        &bench.ns.a,
        &[
            "timeout",
            "10",
            "socat",
            "-T",
            "3",
            "-u",
            &format!("TCP:{dst}"),
            "-",
        ],
    )
    .output()
    .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn ns_ip(ns: &str, args: &[&str]) {
    let out = Command::new("ip")
        .args(["-n", ns])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip -n {ns} {args:?}: {}",
        describe(&out)
    );
}

fn mac_of(ns: &str, ifname: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", ns, "-br", "link", "show", ifname])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace().nth(2).unwrap().to_owned()
}

#[test]
fn coupons_redeemed_in_band_remap_the_port_and_the_address_and_mark_dscp() {
    let mut bench = Bench::new("");
    ok(&sluicectl(&bench.socket, &["coupon", "keygen"]));
    // The customer makes their own holder key; the operator signs for it.
    let holder = ok(&client(&bench, &["keygen"])).trim().to_owned();
    assert!(holder.starts_with("k4.public."), "{holder}");
    let port = issue(
        &bench,
        "web-premium",
        &[
            "--level",
            "3",
            "--remap-port",
            "8080",
            "--prefix",
            "198.18.0.2/32",
            "--port",
            "80",
            "--holder",
            &holder,
        ],
    );
    let vip = issue(
        &bench,
        "vip",
        &[
            "--level",
            "2",
            "--remap-ip",
            "198.18.0.3",
            "--prefix",
            "198.18.0.100/32",
        ],
    );
    let dscp = issue(
        &bench,
        "ef",
        &[
            "--level",
            "1",
            "--dscp",
            "46",
            "--prefix",
            "198.18.0.2/32",
            "--port",
            "5001",
        ],
    );
    for b in [&port, &vip, &dscp] {
        ok(&client(&bench, &["install", b.to_str().unwrap()]));
    }
    let listed = ok(&client(&bench, &["list"]));
    assert!(
        listed.contains("web-premium") && listed.contains("vip"),
        "{listed}"
    );
    assert!(
        bindings(&bench).is_empty(),
        "nothing bound before redemption"
    );

    // Port remap: nothing listens on :80, the premium service on :8080.
    let _premium = serve_text(&bench, "198.18.0.2:8080", "premium-service");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(fetch(&bench, "198.18.0.2:80"), "", "nothing on :80 before");
    let out = client(&bench, &["redeem", "web-premium", "--via", VIA]);
    let text = ok(&out);
    assert!(text.contains("granted"), "{text}");
    assert_eq!(fetch(&bench, "198.18.0.2:80"), "premium-service");

    // Address remap: "vip" is served by a second address of the server.
    let (ns_a, ns_b) = (bench.ns.a.clone(), bench.ns.b.clone());
    ns_ip(&ns_b, &["addr", "add", "198.18.0.3/24", "dev", &bench.if_b]);
    let mac_b = mac_of(&ns_b, &bench.if_b);
    ns_ip(
        &ns_a,
        &[
            "neigh",
            "replace",
            "198.18.0.100",
            "lladdr",
            &mac_b,
            "dev",
            &bench.if_a,
        ],
    );
    let _vip_server = serve_text(&bench, "198.18.0.3:9000", "vip-endpoint");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        fetch(&bench, "198.18.0.100:9000"),
        "",
        "the vip answers nothing before"
    );
    ok(&client(&bench, &["redeem", "vip", "--via", VIA]));
    assert_eq!(fetch(&bench, "198.18.0.100:9000"), "vip-endpoint");

    // DSCP: marked in scope, untouched outside it.
    ok(&client(&bench, &["redeem", "ef", "--via", VIA]));
    let (cap_far, far) = bench.capture(false, "far");
    let (cap_near, near) = bench.capture(true, "near");
    std::thread::sleep(Duration::from_millis(500));
    bench.transfer(SERVER, 5001, "5001");
    bench.transfer(SERVER, 5002, "5002");
    // Datagrams outside every scope: the far side gets the same bytes.
    for i in 0..5 {
        let _ = Namespaces::exec(
            &bench.ns.a,
            &[
                "sh",
                "-c",
                &format!("echo out-of-scope-{i} | socat -u - UDP4:198.18.0.2:9999"),
            ],
        )
        .output();
    }
    settle(&far);
    settle(&near);
    stop_capture(cap_far);
    stop_capture(cap_near);
    let marked = tshark_fields(
        &far,
        "tcp.dstport == 5001 && tcp.len > 0",
        "ip.dsfield.dscp",
    );
    assert!(
        !marked.is_empty() && marked.iter().all(|d| d == "46"),
        "{marked:?}"
    );
    let bad = bad_checksums_from_subscriber(&far);
    assert!(bad.is_empty(), "{bad}");
    let plain = tshark_fields(
        &far,
        "tcp.dstport == 5002 && tcp.len > 0",
        "ip.dsfield.dscp",
    );
    assert!(
        !plain.is_empty() && plain.iter().all(|d| d == "0"),
        "{plain:?}"
    );
    // The whole IP datagram, as bytes (ICMP errors quoting them left out).
    let raw = |p: &Path| {
        let out = Command::new("tshark")
            .args([
                "-r",
                p.to_str().unwrap(),
                "-Y",
                "udp.dstport == 9999 && !icmp",
            ])
            .args([
                "-T",
                "fields",
                "-e",
                "ip.id",
                "-e",
                "ip.dsfield",
                "-e",
                "ip.checksum",
            ])
            .args(["-e", "udp.srcport", "-e", "udp.checksum", "-e", "data.data"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (n, f) = (raw(&near), raw(&far));
    assert_eq!(n, f, "out-of-scope datagrams changed");
    assert_eq!(f.lines().count(), 5, "{f}");

    // The operator sees the coupons, their redemptions and bindings.
    let list = ctl_json(&bench, &["coupon", "list"]);
    assert_eq!(list["total"], 3, "{list:#}");
    for c in list["coupons"].as_array().unwrap() {
        assert_eq!(c["redemptions"].as_array().unwrap().len(), 1, "{c:#}");
        assert_eq!(c["state"], "valid");
        assert_eq!(c["bindings"], 1, "{c:#}");
    }
    let s = ctl_json(&bench, &["coupon", "stats"]);
    assert_eq!(s["coupons"]["granted"], 3, "{s:#}");
    // Redeeming again is idempotent.
    ok(&client(&bench, &["redeem", "ef", "--via", VIA]));
    assert_eq!(bindings(&bench).len(), 3);
    let r = bench.stop();
    assert_eq!(
        lane_total(&r, "upstream", "punted"),
        4,
        "four redemption packets consumed"
    );
    assert_eq!(
        lane_total(&r, "downstream", "injected"),
        4,
        "four answers sent"
    );
}

#[test]
fn a_hostname_scoped_coupon_applies_once_a_dns_answer_crossed_the_appliance() {
    // Answers are believed from the server's resolver only.
    let mut bench = Bench::new("\n[coupons]\ndns_resolvers = [\"198.18.0.2\"]\n");
    ok(&sluicectl(&bench.socket, &["coupon", "keygen"]));
    let ns_b = bench.ns.b.clone();
    ns_ip(&ns_b, &["addr", "add", "198.18.0.4/24", "dev", &bench.if_b]);
    let _dns = Background(
        Namespaces::exec(
            &ns_b,
            &[
                "dnsmasq",
                "--no-daemon",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=198.18.0.2",
                "--address=/video.example/198.18.0.4",
                "--local-ttl=60",
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let b = issue(
        &bench,
        "video",
        &["--level", "2", "--dscp", "34", "--host", "*.video.example"],
    );
    ok(&client(&bench, &["install", b.to_str().unwrap()]));
    ok(&client(&bench, &["redeem", "video", "--via", VIA]));
    assert!(
        bindings(&bench).is_empty(),
        "no address known for the hostname yet"
    );
    let (cap, far) = bench.capture(false, "far");
    std::thread::sleep(Duration::from_millis(500));
    bench.transfer("198.18.0.4", 5003, "5003");
    let out = Namespaces::exec(
        &bench.ns.a,
        &[
            "dig",
            "+short",
            "+time=2",
            "@198.18.0.2",
            "www.video.example",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(ok(&out).trim(), "198.18.0.4");
    std::thread::sleep(Duration::from_millis(300));
    let rows = bindings(&bench);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["dst"], "198.18.0.4/32");
    bench.transfer("198.18.0.4", 5004, "5004");
    // Another name outside the scope resolves but grants nothing.
    settle(&far);
    stop_capture(cap);
    let before = tshark_fields(
        &far,
        "tcp.dstport == 5003 && tcp.len > 0",
        "ip.dsfield.dscp",
    );
    let after = tshark_fields(
        &far,
        "tcp.dstport == 5004 && tcp.len > 0",
        "ip.dsfield.dscp",
    );
    assert!(
        !before.is_empty() && before.iter().all(|d| d == "0"),
        "{before:?}"
    );
    assert!(
        !after.is_empty() && after.iter().all(|d| d == "34"),
        "{after:?}"
    );
    let s = ctl_json(&bench, &["coupon", "stats"]);
    assert!(
        s["coupons"]["dns"]["learned"].as_u64().unwrap() >= 1,
        "{s:#}"
    );
    bench.stop();
}

#[test]
fn forged_expired_revoked_replayed_and_garbage_redemptions_are_refused_with_their_reason() {
    let mut bench = Bench::new("");
    ok(&sluicectl(&bench.socket, &["coupon", "keygen"]));
    let ns_a = bench.ns.a.clone();
    ns_ip(&ns_a, &["addr", "add", "198.18.0.5/24", "dev", &bench.if_a]);
    let now = now_unix();
    let good = issue(&bench, "good", &["--level", "3", "--dscp", "26"]);
    let revoked = issue(&bench, "gone", &["--level", "3", "--dscp", "26"]);
    ok(&sluicectl(
        &bench.socket,
        &["coupon", "revoke", "--id", "gone"],
    ));
    let future = issue(
        &bench,
        "later",
        &[
            "--level",
            "3",
            "--dscp",
            "26",
            "--not-before",
            &(now + 3600).to_string(),
        ],
    );
    let past = issue(
        &bench,
        "old",
        &[
            "--level",
            "3",
            "--dscp",
            "26",
            "--not-before",
            &(now - 7200).to_string(),
            "--valid-for",
            "60",
        ],
    );
    // Signed by a key the appliance does not know.
    let stranger = tempfile::tempdir().unwrap();
    sluice_coupon::KeyRing::generate(stranger.path()).unwrap();
    let ring = sluice_coupon::KeyRing::load(stranger.path()).unwrap();
    let mut claims: Value = serde_json::from_str(&peek(&good)).unwrap();
    claims["id"] = "stranger".into();
    let claims: sluice_coupon::Claims = serde_json::from_value(claims).unwrap();
    let stranger_bundle = bench.dir.path().join("stranger.json");
    Bundle {
        token: sluice_coupon::issue(&ring, &claims).unwrap(),
        holder_secret: Bundle::read(&good).unwrap().holder_secret,
        id: "stranger".into(),
    }
    .write(&stranger_bundle)
    .unwrap();
    // A changed byte in the signature (the end of the body, before the
    // footer).
    let mut forged = Bundle::read(&good).unwrap();
    let i = forged.token.rfind('.').unwrap() - 5;
    let mut t = forged.token.into_bytes();
    t[i] = if t[i] == b'A' { b'B' } else { b'A' };
    forged.token = String::from_utf8(t).unwrap();
    let forged_bundle = bench.dir.path().join("forged.json");
    forged.write(&forged_bundle).unwrap();

    let expect = |payload: Vec<u8>, src: &str, reason: Refusal| {
        let s = send_raw(&bench, &payload, src).unwrap_or_else(|| panic!("no answer for {reason}"));
        assert_eq!(s.reason, Some(reason), "{s:?}");
    };
    expect(
        request(&forged_bundle, SUB, now),
        SUB,
        Refusal::BadSignature,
    );
    expect(
        request(&stranger_bundle, SUB, now),
        SUB,
        Refusal::UnknownKey,
    );
    expect(request(&future, SUB, now), SUB, Refusal::NotYetValid);
    expect(request(&past, SUB, now), SUB, Refusal::Expired);
    expect(request(&revoked, SUB, now), SUB, Refusal::Revoked);
    expect(
        request(&good, SUB, now - 3600),
        SUB,
        Refusal::StaleTimestamp,
    );
    // A redemption sniffed from the subscriber, replayed from elsewhere.
    let sniffed = request(&good, SUB, now);
    expect(sniffed.clone(), "198.18.0.5", Refusal::AddressMismatch);
    expect(
        b"SLUICE-REDEEM/1\n{\"coupon\":".to_vec(),
        SUB,
        Refusal::Malformed,
    );
    // Not a redemption request at all: counted, never answered (an answer
    // to arbitrary datagrams would make the appliance a reflector).
    assert!(send_raw(&bench, b"\x00\xffgarbage", SUB).is_none());
    assert!(bindings(&bench).is_empty(), "no refusal bound anything");
    // The genuine one, once; the same packet again is a replay.
    let s = send_raw(&bench, &sniffed, SUB).unwrap();
    assert_eq!(s.reason, None, "{s:?}");
    assert_eq!(bindings(&bench).len(), 1);
    expect(sniffed, SUB, Refusal::Replayed);
    // max_redemptions 1: a second subscriber address is over the limit.
    expect(
        request(&good, "198.18.0.5", now),
        "198.18.0.5",
        Refusal::RedemptionLimit,
    );
    assert_eq!(bindings(&bench).len(), 1);

    // A coupon for another weekday: granted, but it binds nothing today.
    let weekday = ((now / 86400) + 3) % 7; // 0 = Monday
    let day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][((weekday + 2) % 7) as usize];
    let window = format!("{day} 00:00-23:59");
    let later_day = issue(
        &bench,
        "weekly",
        &["--level", "3", "--dscp", "26", "--window", &window],
    );
    let s = send_raw(
        &bench,
        &request(&later_day, "198.18.0.5", now),
        "198.18.0.5",
    )
    .unwrap();
    assert_eq!(s.reason, None, "{s:?}");
    assert_eq!(
        bindings(&bench).len(),
        1,
        "outside its window: no binding yet"
    );
    let w = ctl_json(&bench, &["coupon", "show", "--id", "weekly"]);
    assert_eq!(w["coupon"]["state"], "outside_window", "{w:#}");

    let s = ctl_json(&bench, &["coupon", "stats"]);
    let refused = &s["coupons"]["refused"];
    for (reason, n) in [
        ("bad_signature", 1),
        ("unknown_key", 1),
        ("not_yet_valid", 1),
        ("expired", 1),
        ("revoked", 1),
        ("stale_timestamp", 1),
        ("address_mismatch", 1),
        ("malformed", 2),
        ("replayed", 1),
        ("redemption_limit", 1),
    ] {
        assert_eq!(refused[reason], n, "{reason}: {s:#}");
    }
    let human = ok(&sluicectl(&bench.socket, &["coupon", "stats"]));
    assert!(human.contains("address_mismatch 1"), "{human}");
    let r = bench.stop();
    assert_eq!(
        lane_total(&r, "upstream", "punted"),
        13,
        "one consumed per request sent"
    );
}

/// The claims of a bundle's token (read without verification).
fn peek(bundle: &Path) -> String {
    let b = Bundle::read(bundle).unwrap();
    let (claims, _) = sluice_coupon::peek_claims(&b.token).unwrap();
    serde_json::to_string(&claims).unwrap()
}
