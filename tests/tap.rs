//! Real kernel traffic through the appliance: two network namespaces joined
//! only by sluice's net_tap ports.
mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[test]
fn tap_namespaces_pass_ping_and_a_checksummed_tcp_transfer() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (if_a, if_b) = (unique("sa"), unique("sb"));
    let cfg = write_config(
        d,
        &config(
            &format!("net_tap0,iface={if_a}"),
            &format!("net_tap1,iface={if_b}"),
        ),
    );
    let sluice = Running::start(&cfg, d.join("report.json"));
    let ns = Namespaces::up(&sluice, &if_a, "198.18.0.1/24", &if_b, "198.18.0.2/24");

    // A capture on the far side.
    let cap = d.join("far.pcap");
    let mut tcpdump = Namespaces::exec(
        &ns.b,
        &[
            "tcpdump",
            "-i",
            &if_b,
            "-nn",
            "-U",
            "-w",
            cap.to_str().unwrap(),
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(1000));

    let ping = Namespaces::exec(
        &ns.a,
        &["ping", "-c", "3", "-i", "0.2", "-W", "3", "198.18.0.2"],
    )
    .output()
    .unwrap();
    assert!(ping.status.success(), "ping failed: {}", describe(&ping));
    assert!(String::from_utf8_lossy(&ping.stdout).contains("3 received"));

    // 4 MiB over TCP, compared byte for byte.
    let sent: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(d.join("sent"), &sent).unwrap();
    let received = d.join("received");
    let mut server = Namespaces::exec(
        &ns.b,
        &[
            "socat",
            "-u",
            "TCP-LISTEN:5001,bind=198.18.0.2,reuseaddr",
            &format!("OPEN:{},creat,trunc", received.display()),
        ],
    )
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let client = Namespaces::exec(
        &ns.a,
        &[
            "timeout",
            "60",
            "socat",
            "-u",
            &format!("OPEN:{}", d.join("sent").display()),
            "TCP:198.18.0.2:5001",
        ],
    )
    .output()
    .unwrap();
    assert!(
        client.status.success(),
        "socat client: {}",
        describe(&client)
    );
    assert!(server.wait().unwrap().success());
    let got = std::fs::read(&received).unwrap();
    assert!(
        got == sent,
        "transfer differs: {} of {} bytes",
        got.len(),
        sent.len()
    );

    std::thread::sleep(Duration::from_millis(300));
    let _ = Command::new("kill")
        .args(["-INT", &tcpdump.id().to_string()])
        .status();
    let _ = tcpdump.wait();
    let out = sluice.stop();
    assert!(out.status.success(), "{}", describe(&out));

    // The far side saw the echo requests and the TCP stream.
    let icmp = Command::new("tcpdump")
        .args([
            "-nn",
            "-r",
            cap.to_str().unwrap(),
            "icmp[icmptype] == icmp-echo",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&icmp.stdout).lines().count(),
        3,
        "{}",
        describe(&icmp)
    );
    let tcp = Command::new("tcpdump")
        .args([
            "-nn",
            "-r",
            cap.to_str().unwrap(),
            "tcp port 5001 and dst host 198.18.0.2",
        ])
        .output()
        .unwrap();
    let segments = String::from_utf8_lossy(&tcp.stdout).lines().count();
    assert!(segments > 100, "only {segments} TCP segments seen upstream");

    let r = report(&d.join("report.json"));
    assert_eq!(r["pool_in_use"], 0, "{r:#}");
    let up_tx = lane_total(&r, "upstream", "tx_packets");
    assert!(
        up_tx as usize >= segments,
        "sluice sent {up_tx} upstream, capture saw {segments} TCP"
    );
    for dir in ["upstream", "downstream"] {
        let rx = lane_total(&r, dir, "rx_packets");
        let tx = lane_total(&r, dir, "tx_packets");
        let dropped = lane_total(&r, dir, "tx_full_drops");
        assert_eq!(rx, tx + dropped, "{dir}: {r:#}");
    }
}

#[test]
fn tap_port_remap_reaches_the_premium_port_while_the_client_sees_only_80() {
    let mut bench = Bench::new(
        "[[rules]]\nname = \"web\"\ndst = \"198.18.0.2/32\"\nprotocol = \"tcp\"\ndst_port = 80\nremap_port = 8080\n",
    );
    let (cap_a, pcap_a) = bench.capture(true, "client");
    let (cap_b, pcap_b) = bench.capture(false, "server");
    std::thread::sleep(Duration::from_millis(800));
    // Nothing listens on :80; only the rewrite can make this work.
    bench.transfer("198.18.0.2", 80, "8080");
    stop_capture(cap_a);
    stop_capture(cap_b);
    bench.stop();
    assert!(
        count(&pcap_a, "tcp port 80") > 20,
        "client side saw no :80 traffic"
    );
    assert_eq!(
        count(&pcap_a, "tcp port 8080"),
        0,
        "client side saw the remapped port"
    );
    assert!(
        count(&pcap_b, "tcp port 8080") > 20,
        "server side saw no :8080 traffic"
    );
    assert_eq!(
        count(&pcap_b, "tcp port 80"),
        0,
        "server side saw the original port"
    );
}

#[test]
fn tap_ip_remap_reaches_the_priority_endpoint_while_the_client_sees_the_original() {
    let mut bench = Bench::new(
        "[[rules]]\nname = \"endpoint\"\ndst = \"198.18.0.2/32\"\nremap_ip = \"198.18.0.3\"\n",
    );
    let st = Command::new("ip")
        .args([
            "-n",
            &bench.ns.b,
            "addr",
            "add",
            "198.18.0.3/24",
            "dev",
            &bench.if_b,
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let (cap_a, pcap_a) = bench.capture(true, "client");
    std::thread::sleep(Duration::from_millis(800));
    // The server listens on the priority endpoint's address only.
    bench.transfer("198.18.0.2", 5002, "5002,bind=198.18.0.3");
    stop_capture(cap_a);
    bench.stop();
    assert!(count(&pcap_a, "tcp and host 198.18.0.2") > 20);
    assert_eq!(
        count(&pcap_a, "host 198.18.0.3"),
        0,
        "client saw the endpoint address"
    );
}

#[test]
fn tap_dscp_and_mss_rule_marks_are_seen_downstream_with_valid_checksums() {
    let mut bench = Bench::new(
        "[[rules]]\nname = \"premium\"\ndst = \"198.18.0.2/32\"\nprotocol = \"tcp\"\ndscp = 46\nmss = 1200\n",
    );
    let (cap_a, pcap_a) = bench.capture(true, "near");
    let (cap_b, pcap_b) = bench.capture(false, "far");
    std::thread::sleep(Duration::from_millis(800));
    bench.transfer("198.18.0.2", 5003, "5003");
    stop_capture(cap_a);
    stop_capture(cap_b);
    bench.stop();
    let to_server = "tcp and ip.dst == 198.18.0.2";
    let dscp = tshark_fields(&pcap_b, to_server, "ip.dsfield.dscp");
    assert!(
        dscp.len() > 20,
        "far side saw {} packets to the server",
        dscp.len()
    );
    assert!(dscp.iter().all(|d| d == "46"), "unmarked packets: {dscp:?}");
    let bad = bad_checksums_from_subscriber(&pcap_b);
    assert!(bad.is_empty(), "{bad}");
    let mss = tshark_fields(
        &pcap_b,
        "tcp.flags.syn == 1 && tcp.flags.ack == 0",
        "tcp.options.mss_val",
    );
    assert_eq!(mss, vec!["1200".to_string()], "SYN MSS not clamped");
    // The server's SYN-ACK is clamped on its way back too.
    let mss = tshark_fields(
        &pcap_a,
        "tcp.flags.syn == 1 && tcp.flags.ack == 1",
        "tcp.options.mss_val",
    );
    assert_eq!(mss, vec!["1200".to_string()], "SYN-ACK MSS not clamped");
}
