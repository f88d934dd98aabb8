//! `sluicectl` end to end: the real binary against a fake appliance, a
//! Unix socket in a temp dir answered line by line by an in-memory
//! `Policy` (the same code the appliance runs behind its socket).
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::thread;

use serde_json::Value;
use sluice_control::policy::{Policy, Table};

/// A fake appliance: the policy it serves and every request line it got.
struct Appliance {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    policy: Arc<Mutex<Policy>>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Appliance {
    fn start() -> Appliance {
        Appliance::answering(None)
    }

    /// With `canned`, every request gets that line instead of the
    /// policy's answer.
    fn answering(canned: Option<&'static str>) -> Appliance {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("control.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let policy = Arc::new(Mutex::new(Policy::in_memory()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (p, r) = (Arc::clone(&policy), Arc::clone(&requests));
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let mut w = conn.try_clone().unwrap();
                for line in BufReader::new(conn).lines() {
                    let Ok(line) = line else { break };
                    let answer = match canned {
                        Some(c) => format!("{c}\n"),
                        None => p.lock().unwrap().handle_line(&line).to_line(),
                    };
                    r.lock().unwrap().push(line);
                    if w.write_all(answer.as_bytes()).is_err() {
                        break;
                    }
                }
            }
        });
        Appliance {
            _dir: dir,
            socket,
            policy,
            requests,
        }
    }

    fn ctl(&self, args: &[&str]) -> Run {
        ctl(&self.socket, args)
    }

    fn rows(&self, t: Table) -> usize {
        self.policy.lock().unwrap().state().len(t)
    }

    fn seq(&self) -> u64 {
        self.policy.lock().unwrap().state().seq()
    }

    /// The ops of the requests received so far.
    fn ops(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["op"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    #[track_caller]
    fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    fn fails(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
        self
    }
}

fn ctl(socket: &Path, args: &[&str]) -> Run {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_sluicectl"))
        .env_remove("SLUICE_SOCKET")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn coupons_csv(dir: &Path, n: usize, bad_line: Option<usize>) -> PathBuf {
    let mut s = String::from("id,subscriber,dst,port,level,dscp\n");
    for i in 0..n {
        // Line 1 is the header: row i is on line i + 2.
        let subscriber = if Some(i + 2) == bad_line {
            "10.0.0.300".to_string()
        } else {
            format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255)
        };
        s.push_str(&format!(
            "cp-{i},{subscriber},203.0.113.0/24,443,voice,level\n"
        ));
    }
    let path = dir.join(format!("coupons-{n}.csv"));
    std::fs::write(&path, s).unwrap();
    path
}

#[test]
fn typed_commands_add_get_list_and_remove_rows() {
    let a = Appliance::start();
    let r = a
        .ctl(&[
            "tier", "add", "--name", "gold", "--level", "premium", "--dscp", "level",
        ])
        .ok();
    assert_eq!(r.stdout, "ok: 1 change applied (seq 1)\n");
    a.ctl(&[
        "login",
        "add",
        "--subscriber",
        "10.0.0.7",
        "--login",
        "alice",
        "--tier",
        "gold",
    ])
    .ok();
    a.ctl(&[
        "coupon",
        "add",
        "--id",
        "cp-1",
        "--subscriber",
        "10.0.0.8",
        "--level",
        "voice",
        "--dscp",
        "46",
        "--dst",
        "203.0.113.0/24",
        "--port",
        "443",
        "--rate-committed",
        "2000000",
        "--rate-peak",
        "4000000",
        "--expires",
        "1767225600",
    ])
    .ok();
    a.ctl(&[
        "sp",
        "add",
        "--id",
        "sp-1",
        "--provider",
        "acme",
        "--prefix",
        "198.51.100.0/24",
        "--level",
        "2",
        "--mss",
        "1400",
    ])
    .ok();
    a.ctl(&["eligibility", "add", "--dst", "203.0.113.0/24"])
        .ok();
    a.ctl(&["default", "set", "--level", "bulk"]).ok();
    assert_eq!(a.seq(), 6);

    let r = a.ctl(&["get", "login", "10.0.0.7"]).ok();
    assert_eq!(
        r.stdout,
        "subscriber  10.0.0.7\nlogin       alice\ntier        gold\n"
    );
    let r = a.ctl(&["list", "coupon"]).ok();
    assert_eq!(
        r.stdout,
        "\
id    subscriber  dst             port  level  dscp  committed_bps  peak_bps  expires
cp-1  10.0.0.8    203.0.113.0/24  443   voice  46    2000000        4000000   1767225600
"
    );
    let r = a.ctl(&["--json", "get", "coupon", "--id", "cp-1"]).ok();
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["entry"]["decision"]["rate"]["peak_bps"], 4000000);
    let r = a.ctl(&["get", "default"]).ok();
    assert_eq!(r.stdout, "level  bulk\n");

    let r = a.ctl(&["tables"]).ok();
    assert!(r.stdout.starts_with("table"), "{}", r.stdout);
    assert!(r.stdout.contains("\ncoupon "), "{}", r.stdout);
    let r = a.ctl(&["stats"]).ok();
    assert!(r.stdout.starts_with("seq: 6\n"), "{}", r.stdout);
    let r = a.ctl(&["stats", "--json"]).ok();
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["seq"], 6);

    a.ctl(&["coupon", "remove", "--id", "cp-1"]).ok();
    assert_eq!(a.rows(Table::Coupon), 0);
    let r = a.ctl(&["get", "coupon", "cp-1"]).fails(1);
    assert_eq!(r.stderr, "error: key.id: no coupon \"cp-1\"\n");
    // Refused by the appliance: a tier in use stays.
    let r = a.ctl(&["tier", "remove", "--name", "gold"]).fails(1);
    assert!(
        r.stderr.starts_with("error: keys[0].name: "),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("(index 0)"), "{}", r.stderr);
    assert_eq!(a.rows(Table::Tier), 1);
    let r = a
        .ctl(&["--json", "tier", "remove", "--name", "gold"])
        .fails(1);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["error"]["index"], 0);
}

#[test]
fn generic_commands_send_json_rows_keys_and_batches() {
    let a = Appliance::start();
    a.ctl(&[
        "add",
        "tier",
        r#"{"name":"gold","decision":{"level":"premium"}}"#,
        r#"{"name":"silver","decision":{"level":4}}"#,
    ])
    .ok();
    let dir = tempfile::tempdir().unwrap();
    let logins = dir.path().join("logins.json");
    std::fs::write(
        &logins,
        "{\"subscriber\":\"10.0.0.1\",\"login\":\"a\",\"tier\":\"gold\"}\n{\"subscriber\":\"10.0.0.2\",\"login\":\"b\",\"tier\":\"silver\"}\n",
    )
    .unwrap();
    let r = a
        .ctl(&["add", "login", "--file", logins.to_str().unwrap()])
        .ok();
    assert_eq!(r.stdout, "ok: 2 changes applied (seq 4)\n");
    a.ctl(&[
        "update",
        "login",
        r#"{"subscriber":"10.0.0.2","login":"b","tier":"gold"}"#,
    ])
    .ok();
    let batch = dir.path().join("batch.json");
    std::fs::write(
        &batch,
        r#"[{"op":"remove","table":"login","key":{"subscriber":"10.0.0.2"}},{"op":"remove","table":"tier","key":{"name":"silver"}}]"#,
    )
    .unwrap();
    a.ctl(&["batch", "--file", batch.to_str().unwrap()]).ok();
    assert_eq!((a.rows(Table::Tier), a.rows(Table::Login)), (1, 1));
    a.ctl(&["remove", "login", "10.0.0.1"]).ok();
    assert_eq!(a.rows(Table::Login), 0);
    // SLUICE_SOCKET names the socket when --socket does not.
    let out = Command::new(env!("CARGO_BIN_EXE_sluicectl"))
        .env("SLUICE_SOCKET", &a.socket)
        .arg("tables")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn an_import_of_25k_rows_goes_in_batches_and_lists_back() {
    let a = Appliance::start();
    let dir = tempfile::tempdir().unwrap();
    let csv = coupons_csv(dir.path(), 25_000, None);
    let r = a.ctl(&["import", "coupon", csv.to_str().unwrap()]).ok();
    assert!(
        r.stdout.starts_with("imported 25000 rows into coupon in "),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains(" rows/s, 3 requests)"), "{}", r.stdout);
    assert_eq!(
        r.stderr, "",
        "no progress bar when stderr is not a terminal"
    );
    assert_eq!(a.rows(Table::Coupon), 25_000);
    assert_eq!(a.ops(), ["add", "add", "add"]);

    let r = a.ctl(&["--json", "list", "coupon", "--all"]).ok();
    let pages: Vec<Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(pages.len(), 3);
    let rows: usize = pages
        .iter()
        .map(|p| p["entries"].as_array().unwrap().len())
        .sum();
    assert_eq!(rows, 25_000);
    let r = a.ctl(&["list", "coupon", "--all"]).ok();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 1 + 25_000 + 1);
    assert!(lines[0].starts_with("id "), "{}", lines[0]);
    assert_eq!(lines[25_001], "25000 of 25000 rows");
    let r = a
        .ctl(&["list", "coupon", "--offset", "10", "--limit", "5"])
        .ok();
    assert_eq!(r.stdout.lines().count(), 1 + 5 + 1);
    assert!(
        r.stdout
            .ends_with("rows 11-15 of 25000 (--offset and --limit page, --all lists every row)\n"),
        "{}",
        r.stdout
    );

    // Same rows again: the appliance refuses the first batch, whole.
    let before = a.seq();
    let r = a
        .ctl(&[
            "import",
            "coupon",
            csv.to_str().unwrap(),
            "--batch",
            "1000",
            "--quiet",
        ])
        .fails(1);
    assert!(
        r.stderr.starts_with(&format!(
            "error: {}: line 2: entries[0].id: ",
            csv.display()
        )),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("note: the refused batch, lines 2-1001 (1000 rows), was not applied"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("note: no rows were committed before it"),
        "{}",
        r.stderr
    );
    assert_eq!(a.seq(), before);
}

#[test]
fn an_import_refused_midway_says_what_was_committed() {
    let a = Appliance::start();
    // Row 12,345 (line 12,347) will clash with this coupon's id.
    a.ctl(&[
        "coupon",
        "add",
        "--id",
        "cp-12345",
        "--subscriber",
        "192.0.2.1",
        "--level",
        "1",
    ])
    .ok();
    let dir = tempfile::tempdir().unwrap();
    let csv = coupons_csv(dir.path(), 20_000, None);
    let r = a.ctl(&["import", "coupon", csv.to_str().unwrap()]).fails(1);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert!(
        lines[0].starts_with(&format!(
            "error: {}: line 12347: entries[2345].id: ",
            csv.display()
        )),
        "{}",
        r.stderr
    );
    assert_eq!(
        lines[1..],
        [
            "note: the refused batch, lines 10002-20001 (10000 rows), was not applied (a batch is all or nothing)",
            "note: 10000 rows were committed before it (up to line 10001); nothing after was sent",
        ]
    );
    assert_eq!(a.rows(Table::Coupon), 10_001);
}

#[test]
fn bad_input_is_refused_before_the_appliance_sees_it() {
    let a = Appliance::start();
    a.ctl(&["tier", "add", "--name", "gold", "--level", "1"])
        .ok();
    let seen = a.ops().len();
    let seq = a.seq();

    // A flag value that does not parse is a usage error.
    let r = a
        .ctl(&[
            "coupon",
            "add",
            "--id",
            "c",
            "--subscriber",
            "10.0.0.300",
            "--level",
            "voice",
        ])
        .fails(2);
    assert!(r.stderr.contains("10.0.0.300"), "{}", r.stderr);
    // A bad value inside JSON is the appliance's own error, found here.
    let r = a
        .ctl(&[
            "add",
            "login",
            r#"{"subscriber":"10.0.0.300","login":"a","tier":"gold"}"#,
        ])
        .fails(1);
    assert!(
        r.stderr
            .starts_with("error: entries[0].subscriber: bad IP address \"10.0.0.300\""),
        "{}",
        r.stderr
    );
    let r = a.ctl(&["add", "login", "{not json"]).fails(1);
    assert!(
        r.stderr.starts_with("error: argument 1: not JSON"),
        "{}",
        r.stderr
    );
    let r = a
        .ctl(&[
            "--json",
            "tier",
            "add",
            "--name",
            "x",
            "--level",
            "1",
            "--rate-committed",
            "9",
            "--rate-peak",
            "1",
        ])
        .fails(1);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["error"]["field"], "entries[0].decision.rate.peak_bps");

    // A bad row anywhere in a CSV file: nothing of the file is sent.
    let dir = tempfile::tempdir().unwrap();
    let csv = coupons_csv(dir.path(), 20_000, Some(15_002));
    let r = a.ctl(&["import", "coupon", csv.to_str().unwrap()]).fails(1);
    assert!(
        r.stderr.starts_with(&format!(
            "error: {}: line 15002, column `subscriber`: bad IP address \"10.0.0.300\"",
            csv.display()
        )),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .ends_with("note: no rows were committed before it\n"),
        "{}",
        r.stderr
    );
    let r = ctl(
        Path::new("/nonexistent.sock"),
        &["import", "coupon", csv.to_str().unwrap(), "--check"],
    )
    .fails(1);
    assert!(
        r.stderr.contains("line 15002"),
        "--check needs no appliance: {}",
        r.stderr
    );
    let good = coupons_csv(dir.path(), 100, None);
    let r = a
        .ctl(&["import", "coupon", good.to_str().unwrap(), "--check"])
        .ok();
    assert_eq!(
        r.stdout,
        format!("{}: 100 rows, all valid for table coupon\n", good.display())
    );
    let r = a
        .ctl(&["import", "default", csv.to_str().unwrap()])
        .fails(1);
    assert!(r.stderr.contains("line 1"), "{}", r.stderr);
    let r = a.ctl(&["import", "coupon", "/nonexistent.csv"]).fails(1);
    assert!(
        r.stderr.contains("cannot read /nonexistent.csv"),
        "{}",
        r.stderr
    );

    assert_eq!(a.ops().len(), seen, "{:?}", a.ops());
    assert_eq!(a.seq(), seq);
    assert_eq!(a.rows(Table::Coupon), 0);
}

#[test]
fn a_missing_appliance_is_named_with_its_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    for args in [
        &["stats"][..],
        &["list", "tier"],
        &["coupon", "remove", "--id", "x"],
    ] {
        let r = ctl(&socket, args).fails(1);
        assert!(
            r.stderr.starts_with(&format!(
                "error: cannot connect to the control socket {}: ",
                socket.display()
            )),
            "{}",
            r.stderr
        );
        assert!(
            r.stderr.contains("is the appliance (sluice) running?"),
            "{}",
            r.stderr
        );
    }
}

#[test]
fn a_malformed_response_is_an_error_not_a_panic() {
    for canned in [
        "garbage",
        r#"{"ok":false}"#,
        r#"{"ok":true,"total":"x"}"#,
        "[]",
    ] {
        let a = Appliance::answering(Some(canned));
        for args in [
            &["stats"][..],
            &["list", "coupon", "--all"],
            &["get", "tier", "g"],
        ] {
            let r = a.ctl(args);
            if r.code == 0 {
                // A response that is ok but odd is shown as well as it can be.
                continue;
            }
            let r = r.fails(1);
            assert!(
                r.stderr.starts_with("error: malformed response"),
                "{canned}: {}",
                r.stderr
            );
        }
    }
}
