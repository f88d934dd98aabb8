//! The appliance as a plain bridge: packet conservation on net_null, byte
//! identity on net_pcap, and clear errors for bad config and EAL arguments.
mod common;

use std::time::Duration;

use common::*;

#[test]
fn null_ports_conserve_packets_and_return_every_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &config("net_null0,copy=1", "net_null1,copy=1"));
    let json = dir.path().join("report.json");
    let out = run(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--duration",
            "3",
            "--stats-json",
            json.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", describe(&out));
    let r = report(&json);
    assert_eq!(r["pool_in_use"], 0, "buffers leaked: {r:#}");
    for (dir, rx_port, tx_port) in [
        ("upstream", "subscriber", "upstream"),
        ("downstream", "upstream", "subscriber"),
    ] {
        let rx = lane_total(&r, dir, "rx_packets");
        let tx = lane_total(&r, dir, "tx_packets");
        let dropped = lane_total(&r, dir, "tx_full_drops");
        assert!(rx > 10_000, "{dir}: only {rx} packets in 3 s: {r:#}");
        assert_eq!(rx, tx + dropped, "{dir}: rx != tx + counted drops: {r:#}");
        // The PMDs agree with the workers.
        assert_eq!(port(&r, rx_port)["ipackets"].as_u64().unwrap(), rx, "{r:#}");
        assert_eq!(port(&r, tx_port)["opackets"].as_u64().unwrap(), tx, "{r:#}");
        // net_null with copy=1 sends 64-byte frames.
        assert_eq!(lane_total(&r, dir, "rx_bytes"), rx * 64);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("packets conserved: yes"), "{text}");
    assert!(
        text.contains("mempool: all 16383 buffers returned"),
        "{text}"
    );
}

#[test]
fn pcap_bridge_is_byte_identical_in_both_directions() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a_in, b_in) = (mixed_traffic(0x00), mixed_traffic(0x5a));
    write_pcap(&d.join("sub_in.pcap"), &a_in);
    write_pcap(&d.join("up_in.pcap"), &b_in);
    let dev = |name: &str, rx: &str, tx: &str| {
        format!(
            "{name},rx_pcap={},tx_pcap={}",
            d.join(rx).display(),
            d.join(tx).display()
        )
    };
    let cfg = write_config(
        d,
        &config(
            &dev("net_pcap0", "sub_in.pcap", "sub_out.pcap"),
            &dev("net_pcap1", "up_in.pcap", "up_out.pcap"),
        ),
    );
    let json = d.join("report.json");
    let out = run(
        &[
            "-c",
            cfg.to_str().unwrap(),
            "--duration",
            "2",
            "--stats-json",
            json.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", describe(&out));
    // A bridge changes nothing: what entered one side leaves the other,
    // every byte the same, in order (truncated frame and ARP included).
    assert_eq!(
        read_pcap(&d.join("up_out.pcap")),
        a_in,
        "subscriber -> upstream"
    );
    assert_eq!(
        read_pcap(&d.join("sub_out.pcap")),
        b_in,
        "upstream -> subscriber"
    );
    let r = report(&json);
    assert_eq!(lane_total(&r, "upstream", "tx_packets"), a_in.len() as u64);
    assert_eq!(r["pool_in_use"], 0);
}

fn assert_clean_error(out: &std::process::Output, code: i32, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{}", describe(out));
    assert!(
        err.contains(needle),
        "stderr lacks {needle:?}: {}",
        describe(out)
    );
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{}",
        describe(out)
    );
}

#[test]
fn bad_config_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases = [
        (
            format!(
                "{}[workers]\ncorez = [1]\n",
                config("net_null0", "net_null1")
            ),
            "unknown field `corez`",
        ),
        (
            format!(
                "{}[workers]\nburst = 9999\n",
                config("net_null0", "net_null1")
            ),
            "workers.burst",
        ),
        (config("eth0", "net_null1"), "ports.subscriber.device"),
        ("[ports]\n".to_string(), "missing field `subscriber`"),
        ("not toml at all [".to_string(), "config"),
    ];
    for (toml, needle) in cases {
        let cfg = write_config(d, &toml);
        let out = run(&["-c", cfg.to_str().unwrap()], Duration::from_secs(20));
        assert_clean_error(&out, 2, needle);
    }
    let out = run(&["-c", "/nonexistent/sluice.toml"], Duration::from_secs(20));
    assert_clean_error(&out, 2, "cannot read config file /nonexistent/sluice.toml");
    let out = run(&["--duration=-1"], Duration::from_secs(20));
    assert_clean_error(&out, 2, "--duration");
}

#[test]
fn bad_eal_arguments_and_devices_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &config("net_null0", "net_null1"));
    let cfg = cfg.to_str().unwrap();
    let out = run(
        &["-c", cfg, "--", "--definitely-not-an-eal-flag"],
        Duration::from_secs(30),
    );
    assert_clean_error(&out, 1, "rte_eal_init failed");
    // A driver that does not exist: EAL cannot create the vdev.
    let cfg2 = write_config(dir.path(), &config("net_nosuchdriver0", "net_null1"));
    let out = run(&["-c", cfg2.to_str().unwrap()], Duration::from_secs(30));
    assert_clean_error(&out, 1, "rte_eal_init failed: No such device");
    let out = run(&["--check-config", "-c", cfg], Duration::from_secs(10));
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--vdev net_null0 --vdev net_null1"));
}

#[test]
fn default_config_is_printed_and_loadable() {
    let out = run(&["--print-default-config"], Duration::from_secs(10));
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let p = write_config(dir.path(), &String::from_utf8_lossy(&out.stdout));
    let out = run(
        &["--check-config", "-c", p.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("--vdev net_tap0,iface=sl-sub --vdev net_tap1,iface=sl-up"),
        "{text}"
    );
}
