//! The egress scheduler with real TCP through net_tap: the upstream port
//! shaped to 50 Mbit/s, one bulk best-effort iperf3 flow and one premium
//! flow (a coupon at the premium level) at once, pings beside them. Then
//! the same topology with the scheduler replaced by a plain FIFO at the
//! same rate. Both runs print their figures.
mod common;

use std::process::{Child, Stdio};
use std::time::Duration;

use common::*;

const RATE: u64 = 50_000_000;

/// The tests here measure rates and delays: one at a time, each with the
/// machine's second core to itself (a sluice worker busy-polls the other).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
const PREMIUM: &str = "198.18.0.11";

/// Average RTT in ms of `count` pings from `src` to the server.
fn ping(bench: &Bench, src: &str, count: u32) -> f64 {
    let out = Namespaces::exec(
        &bench.ns.a,
        &[
            "ping",
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-I",
            src,
            "198.18.0.2",
        ],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "ping: {}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    // rtt min/avg/max/mdev = 0.109/0.159/0.204/0.023 ms
    let line = text.lines().find(|l| l.contains("min/avg/max")).unwrap();
    let nums = line.split('=').nth(1).unwrap().trim();
    nums.split('/').nth(1).unwrap().parse().unwrap()
}

fn iperf_client(bench: &Bench, src: &str, port: u16, secs: u32) -> Child {
    Namespaces::exec(
        &bench.ns.a,
        &[
            "iperf3",
            "-c",
            "198.18.0.2",
            "-p",
            &port.to_string(),
            "-B",
            src,
            "-t",
            &secs.to_string(),
            "-J",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap()
}

/// Received Mbit/s of a finished iperf3 client.
fn received_mbit(c: Child) -> f64 {
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success(), "iperf3: {}", describe(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap()
        / 1e6
}

/// Bytes on the wire the shaped egress sent so far: frames plus 24 bytes
/// of framing each, over all levels.
fn wire_bytes(socket: &std::path::Path) -> f64 {
    let s = stats(socket);
    s["dataplane"]["egress"]["upstream"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["sent_bytes"].as_f64().unwrap() + 24.0 * l["sent"].as_f64().unwrap())
        .sum()
}

/// Gives the client namespace the premium address, adds a coupon for it
/// with `coupon` (its id, level and treatment), and starts the two iperf3
/// servers (5201 bulk, 5202 premium), one test each.
fn premium_setup(bench: &Bench, coupon: &[&str]) -> Vec<Child> {
    let st = std::process::Command::new("ip")
        .args([
            "-n",
            &bench.ns.a,
            "addr",
            "add",
            &format!("{PREMIUM}/24"),
            "dev",
            &bench.if_a,
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let mut args = vec!["coupon", "add", "--subscriber", PREMIUM];
    args.extend_from_slice(coupon);
    let out = sluicectl(&bench.socket, &args);
    assert!(out.status.success(), "{}", describe(&out));
    ["5201", "5202"]
        .iter()
        .map(|port| {
            Namespaces::exec(&bench.ns.b, &["iperf3", "-s", "-1", "-p", port])
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect()
}

/// What one run measured.
#[derive(Debug)]
struct Run {
    premium_mbit: f64,
    bulk_mbit: f64,
    /// The shaped egress's wire rate while both flows ran, Mbit/s.
    link_mbit: f64,
    idle_rtt: f64,
    premium_rtt: f64,
    best_effort_rtt: f64,
}

fn run(mode: &str) -> (Run, serde_json::Value) {
    let mut bench = Bench::new(&format!(
        "rate_bps = {RATE}\n[scheduler]\nmode = \"{mode}\"\n"
    ));
    let servers = premium_setup(
        &bench,
        &["--id", "premium", "--level", "premium", "--dscp", "level"],
    );
    std::thread::sleep(Duration::from_millis(600));
    let idle_rtt = ping(&bench, PREMIUM, 10);
    let bulk = iperf_client(&bench, "198.18.0.1", 5201, 8);
    let premium = iperf_client(&bench, PREMIUM, 5202, 8);
    std::thread::sleep(Duration::from_secs(2));
    let (t0, w0) = (std::time::Instant::now(), wire_bytes(&bench.socket));
    let premium_rtt = ping(&bench, PREMIUM, 15);
    let best_effort_rtt = ping(&bench, "198.18.0.1", 10);
    let link_mbit = (wire_bytes(&bench.socket) - w0) * 8.0 / t0.elapsed().as_secs_f64() / 1e6;
    let r = Run {
        link_mbit,
        bulk_mbit: received_mbit(bulk),
        premium_mbit: received_mbit(premium),
        idle_rtt,
        premium_rtt,
        best_effort_rtt,
    };
    for mut s in servers {
        let _ = s.wait();
    }
    let stats = stats(&bench.socket);
    bench.stop();
    (r, stats["dataplane"]["egress"]["upstream"].clone())
}

#[test]
fn premium_keeps_its_rate_and_delay_beside_a_bulk_flow_where_a_fifo_does_not() {
    let _one = serial();
    let (levels, egress) = run("levels");
    let (fifo, fifo_egress) = run("fifo");
    eprintln!("shaped to {} Mbit/s", RATE / 1_000_000);
    for (name, r) in [("levels", &levels), ("fifo", &fifo)] {
        eprintln!(
            "{name:>6}: premium {:.1} Mbit/s, bulk {:.1} Mbit/s (TCP goodput), link {:.1} % \
             on the wire; RTT idle {:.2} ms, premium under load {:.2} ms, best effort under \
             load {:.2} ms",
            r.premium_mbit,
            r.bulk_mbit,
            r.link_mbit / (RATE as f64 / 1e6) * 100.0,
            r.idle_rtt,
            r.premium_rtt,
            r.best_effort_rtt
        );
    }
    eprintln!("levels egress: {egress}");
    eprintln!("fifo egress: {fifo_egress}");

    let link = RATE as f64 / 1e6;
    // Premium is held to its ceiling (half the port), never below 20.
    assert!(levels.premium_mbit >= 20.0, "{levels:?}");
    assert!(levels.link_mbit >= 0.9 * link, "{levels:?}");
    assert!(levels.premium_rtt - levels.idle_rtt < 2.0, "{levels:?}");
    // Best effort's delay is held by flow queueing and CoDel: bounded near
    // the 5 ms target, not the FIFO's standing queue.
    assert!(levels.best_effort_rtt < 15.0, "{levels:?}");
    // The FIFO at the same rate queues everybody alike (its figures are
    // reported above, not held to targets).
    assert!(
        fifo.premium_rtt > levels.premium_rtt + 2.0,
        "a FIFO should delay premium too: {fifo:?} vs {levels:?}"
    );
    // The level counters saw premium (3) and best effort (5).
    let sent = |e: &serde_json::Value, l: usize| e[l]["sent"].as_u64().unwrap_or(0);
    assert!(
        sent(&egress, 3) > 1000 && sent(&egress, 5) > 1000,
        "{egress}"
    );
    assert_eq!(sent(&fifo_egress, 3), 0, "fifo mode queues all in one");
}

#[test]
fn a_binding_with_a_rate_is_held_to_its_peak_and_its_red_packets_are_counted() {
    let _one = serial();
    // No shaping: the meter alone polices (red dropped), beside an
    // unmetered flow.
    let mut bench = Bench::new("");
    let servers = premium_setup(
        &bench,
        &[
            "--id",
            "metered",
            "--level",
            "premium",
            "--rate-committed",
            "4000000",
            "--rate-peak",
            "6000000",
        ],
    );
    std::thread::sleep(Duration::from_millis(600));
    let free = iperf_client(&bench, "198.18.0.1", 5201, 5);
    let metered = iperf_client(&bench, PREMIUM, 5202, 5);
    let (free, metered) = (received_mbit(free), received_mbit(metered));
    for mut s in servers {
        let _ = s.wait();
    }
    let s = stats(&bench.socket);
    let report = bench.stop();
    eprintln!(
        "metered coupon (4/6 Mbit/s): {metered:.2} Mbit/s; unmetered beside it: {free:.1} Mbit/s"
    );
    eprintln!("mirror: {}", s["dataplane"]["mirror"]);
    assert!(
        metered <= 6.5,
        "the metered flow passed its peak: {metered}"
    );
    assert!(metered >= 1.0, "the metered flow starved: {metered}");
    assert!(
        free > 3.0 * metered,
        "the unmetered flow was held too: {free}"
    );
    assert_eq!(s["dataplane"]["mirror"]["meters"], 1);
    let m = &report["workers"][0]["path"]["metered"];
    assert!(m["green"].as_u64().unwrap() > 100, "{m}");
    assert!(m["red_dropped"].as_u64().unwrap() > 0, "{m}");
}
