//! The policy through the real appliance: `sluicectl` changes it over the
//! control socket while traffic runs, the workers apply it from their
//! lock-free tables, and what was accepted survives a crash.
mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;

/// The DSCP of each data segment the server side saw, collapsed into runs
/// (`[0, 46, 0]`: unmarked, then marked, then unmarked).
fn dscp_runs(pcap: &Path, filter: &str) -> (Vec<String>, usize) {
    let all = tshark_fields(pcap, filter, "ip.dsfield.dscp");
    let mut runs: Vec<String> = Vec::new();
    for d in &all {
        if runs.last() != Some(d) {
            runs.push(d.clone());
        }
    }
    (runs, all.len())
}

fn ok(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{}", describe(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_coupon_added_mid_transfer_marks_the_flow_and_its_removal_unmarks_it() {
    let mut bench = Bench::new("");
    let (cap, pcap) = bench.capture(false, "far");
    let d = bench.dir.path().to_owned();
    // 96 chunks of 16 KiB, one every 80 ms: about 8 s of one TCP flow.
    let chunk: Vec<u8> = (0..16384u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(d.join("chunk"), &chunk).unwrap();
    let received = d.join("received");
    let mut server = Namespaces::exec(
        &bench.ns.b,
        &[
            "socat",
            "-u",
            "TCP-LISTEN:5010,reuseaddr",
            &format!("OPEN:{},creat,trunc", received.display()),
        ],
    )
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let script = format!(
        "for i in $(seq 96); do cat {}; sleep 0.08; done | socat -u - TCP:198.18.0.2:5010",
        d.join("chunk").display()
    );
    let mut client = Namespaces::exec(&bench.ns.a, &["timeout", "40", "sh", "-c", &script])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();

    std::thread::sleep(Duration::from_millis(2500));
    let out = sluicectl(
        &bench.socket,
        &[
            "coupon",
            "add",
            "--id",
            "live",
            "--subscriber",
            "198.18.0.1",
            "--level",
            "voice",
            "--dscp",
            "level",
        ],
    );
    ok(&out);
    std::thread::sleep(Duration::from_millis(2500));
    let mid = stats(&bench.socket);
    ok(&sluicectl(
        &bench.socket,
        &["coupon", "remove", "--id", "live"],
    ));

    assert!(client.wait().unwrap().success(), "client failed");
    assert!(server.wait().unwrap().success(), "server failed");
    let want: Vec<u8> = chunk.repeat(96);
    assert!(
        std::fs::read(&received).unwrap() == want,
        "the transfer lost or corrupted data"
    );
    let end = stats(&bench.socket);
    settle(&pcap);
    stop_capture(cap);
    let report = bench.stop();

    let data = "tcp.len > 0 && ip.dst == 198.18.0.2";
    let (runs, n) = dscp_runs(&pcap, data);
    assert!(n > 50, "far side saw only {n} data segments");
    assert_eq!(
        runs,
        ["0", "46", "0"],
        "the mark should switch on once and off once"
    );
    let bad = bad_checksums_from_subscriber(&pcap);
    assert!(bad.is_empty(), "{bad}");

    // The counters saw it: the flow was classified by the coupon (the
    // tables were inert before it, so that was the flow's first lookup),
    // carried at level 1 (voice) meanwhile, then re-classified to the
    // default when the coupon went.
    let dp = &mid["dataplane"];
    assert_eq!(dp["tables"][1]["bindings"], 1, "{dp:#}");
    assert!(dp["levels"][1]["packets"].as_u64().unwrap() > 10, "{dp:#}");
    let dp = &end["dataplane"];
    assert_eq!(dp["tables"][1]["bindings"], 0, "{dp:#}");
    assert!(dp["classified"]["coupon"].as_u64().unwrap() >= 1, "{dp:#}");
    assert!(dp["reclassified"].as_u64().unwrap() >= 1, "{dp:#}");
    assert_eq!(dp["mirror"]["errors"], 0, "{dp:#}");
    // Every packet received was sent or counted (a full kernel tap queue
    // can refuse one now and then; TCP resends it, and the data above
    // arrived whole).
    for dir in ["upstream", "downstream"] {
        assert_eq!(
            lane_total(&report, dir, "rx_packets"),
            lane_total(&report, dir, "tx_packets") + lane_total(&report, dir, "tx_full_drops")
        );
    }
}

/// An appliance on two tap ports nobody uses: a control plane to talk to.
struct Quiet {
    dir: tempfile::TempDir,
    cfg: std::path::PathBuf,
    socket: std::path::PathBuf,
}

impl Quiet {
    fn new() -> Quiet {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        let toml = config(
            &format!("net_tap0,iface={}", unique("qa")),
            &format!("net_tap1,iface={}", unique("qb")),
        );
        let cfg = write_config(dir.path(), &toml);
        let socket = cfg.with_extension("sock");
        Quiet { dir, cfg, socket }
    }

    fn start(&self, name: &str) -> Running {
        let r = Running::start(&self.cfg, self.dir.path().join(format!("{name}.json")));
        r.wait_ready();
        r
    }
}

#[test]
fn ten_thousand_bindings_survive_kill_9_and_are_published_at_start() {
    let q = Quiet::new();
    let first = q.start("first");
    let mut csv = String::from("id,subscriber,dst,port,level,dscp\n");
    for i in 0..10_000u32 {
        csv.push_str(&format!(
            "cp-{i},10.{}.{}.{},203.0.113.0/24,443,voice,level\n",
            i >> 16,
            (i >> 8) & 255,
            i & 255
        ));
    }
    let path = q.dir.path().join("coupons.csv");
    std::fs::write(&path, csv).unwrap();
    ok(&sluicectl(
        &q.socket,
        &["import", "coupon", path.to_str().unwrap(), "--quiet"],
    ));
    ok(&sluicectl(
        &q.socket,
        &["tier", "add", "--name", "gold", "--level", "premium"],
    ));
    ok(&sluicectl(
        &q.socket,
        &[
            "login",
            "add",
            "--subscriber",
            "10.9.9.9",
            "--login",
            "alice",
            "--tier",
            "gold",
        ],
    ));
    first.kill9();

    let second = q.start("second");
    let s = stats(&q.socket);
    let coupons = s["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "coupon")
        .unwrap();
    assert_eq!(coupons["entries"], 10_000, "{s:#}");
    // In the workers' tables too, before any packet could arrive.
    assert_eq!(s["dataplane"]["tables"][1]["bindings"], 10_000, "{s:#}");
    assert_eq!(s["dataplane"]["tables"][2]["bindings"], 1, "{s:#}");
    assert_eq!(s["dataplane"]["mirror"]["errors"], 0, "{s:#}");
    let row = ok(&sluicectl(
        &q.socket,
        &["--json", "get", "coupon", "cp-9999"],
    ));
    assert!(row.contains("\"subscriber\":\"10.0.39.15\""), "{row}");
    let out = second.stop();
    assert!(out.status.success(), "{}", describe(&out));
}

/// Sends one request line and returns the response line.
fn ask(conn: &mut UnixStream, line: &[u8]) -> serde_json::Value {
    conn.write_all(line).unwrap();
    conn.write_all(b"\n").unwrap();
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut resp = String::new();
    r.read_line(&mut resp).unwrap();
    serde_json::from_str(&resp).unwrap_or_else(|e| panic!("{e}: {resp}"))
}

#[test]
fn bad_requests_and_bad_csv_are_refused_with_the_field_and_change_nothing() {
    let q = Quiet::new();
    let sluice = q.start("bad");
    ok(&sluicectl(
        &q.socket,
        &[
            "coupon",
            "add",
            "--id",
            "keep",
            "--subscriber",
            "10.0.0.1",
            "--level",
            "premium",
        ],
    ));
    let before = stats(&q.socket);
    let mut conn = UnixStream::connect(&q.socket).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let coupon = |body: &str| {
        format!(
            r#"{{"op":"add","table":"coupon","entries":[{{"id":"n1","subscriber":"10.0.0.2","decision":{{"level":3}}{body}}}]}}"#
        )
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (coupon(r#","colour":"red""#).into_bytes(), "colour"),
        (
            br#"{"op":"add","table":"coupon","entries":[{"id":"n1","subscriber":"10.0.0.300","decision":{"level":3}}]}"#.to_vec(),
            "subscriber",
        ),
        (coupon(r#","dst":"10.0.0.1/8""#).into_bytes(), "dst"),
        (coupon(r#","dst":"10.0.0.0/33""#).into_bytes(), "dst"),
        (
            br#"{"op":"add","table":"coupon","entries":[{"id":"n1","subscriber":"10.0.0.2","decision":{"level":8}}]}"#.to_vec(),
            "level",
        ),
        (
            br#"{"op":"add","table":"coupon","entries":[{"id":"keep","subscriber":"10.0.0.3","decision":{"level":3}}]}"#.to_vec(),
            "id",
        ),
        (
            br#"{"op":"add","table":"coupon","entries":[{"id":"n2","subscriber":"10.0.0.4","decision":{"level":3}},{"id":"n2","subscriber":"10.0.0.5","decision":{"level":3}}]}"#.to_vec(),
            "id",
        ),
        (br#"{"op":"add","table":"coupon","entries":[{"id":"#.to_vec(), ""),
        (
            {
                let mut v = br#"{"op":"stats","pad":""#.to_vec();
                v.extend(std::iter::repeat_n(b'x', 10 << 20));
                v.extend_from_slice(br#""}"#);
                v
            },
            "",
        ),
    ];
    for (line, field) in &cases {
        let r = ask(&mut conn, line);
        let shown = String::from_utf8_lossy(&line[..line.len().min(120)]).into_owned();
        assert_eq!(r["ok"], false, "{shown} was accepted: {r}");
        let err = &r["error"];
        assert!(
            err["reason"].as_str().is_some_and(|s| !s.is_empty()),
            "{shown}: no reason: {r}"
        );
        if !field.is_empty() {
            assert!(
                err["field"].as_str().unwrap_or("").contains(field),
                "{shown}: error does not name `{field}`: {r}"
            );
        }
    }
    // The connection still works after all that.
    assert_eq!(ask(&mut conn, br#"{"op":"tables"}"#)["ok"], true);

    // A CSV with a bad row is refused with its line, and nothing of it lands.
    let csv = q.dir.path().join("bad.csv");
    std::fs::write(
        &csv,
        "id,subscriber,level\nc1,10.1.0.1,premium\nc2,10.1.0.2,11\nc3,10.1.0.3,bulk\n",
    )
    .unwrap();
    let out = sluicectl(
        &q.socket,
        &["import", "coupon", csv.to_str().unwrap(), "--quiet"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3") && err.contains("level"), "{err}");

    let after = stats(&q.socket);
    assert_eq!(after["seq"], before["seq"], "the state changed");
    assert_eq!(after["tables"], before["tables"]);
    assert_eq!(after["dataplane"]["tables"], before["dataplane"]["tables"]);
    let out = sluice.stop();
    assert!(out.status.success(), "{}", describe(&out));
}
