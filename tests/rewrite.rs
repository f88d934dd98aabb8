//! Rewrite rules through the real binary, checked against an independent
//! oracle (full checksum recompute, written here without the dataplane's
//! code) and against tshark's checksum validation.
mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// Offsets of one frame, found by a deliberately simple parser (the test
/// traffic has no IPv6 extension headers and no IPv4 options).
struct Layout {
    l3: usize,
    v6: bool,
    l4: usize,
    proto: u8,
}

fn layout(f: &[u8]) -> Option<Layout> {
    let mut off = 12;
    let mut et = u16::from_be_bytes([f[off], f[off + 1]]);
    while et == 0x8100 || et == 0x88a8 {
        off += 4;
        et = u16::from_be_bytes([f[off], f[off + 1]]);
    }
    let l3 = off + 2;
    match et {
        0x0800 => {
            let total = u16::from_be_bytes([f[l3 + 2], f[l3 + 3]]) as usize;
            (f.len() >= l3 + total).then(|| Layout {
                l3,
                v6: false,
                l4: l3 + 20,
                proto: f[l3 + 9],
            })
        }
        0x86dd => {
            let plen = u16::from_be_bytes([f[l3 + 4], f[l3 + 5]]) as usize;
            (f.len() >= l3 + 40 + plen).then(|| Layout {
                l3,
                v6: true,
                l4: l3 + 40,
                proto: f[l3 + 6],
            })
        }
        _ => None,
    }
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn sum(b: &[u8]) -> u32 {
    b.chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum()
}

/// Recomputes every checksum of a frame from scratch.
fn fix_checksums(f: &mut [u8]) {
    let Some(l) = layout(f) else { return };
    let end = if l.v6 {
        l.l4 + u16::from_be_bytes([f[l.l3 + 4], f[l.l3 + 5]]) as usize
    } else {
        f[l.l3 + 10..l.l3 + 12].copy_from_slice(&[0, 0]);
        let c = fold(sum(&f[l.l3..l.l3 + 20]));
        f[l.l3 + 10..l.l3 + 12].copy_from_slice(&c.to_be_bytes());
        l.l3 + u16::from_be_bytes([f[l.l3 + 2], f[l.l3 + 3]]) as usize
    };
    let ck = match l.proto {
        6 => l.l4 + 16,
        17 => l.l4 + 6,
        _ => return,
    };
    if l.proto == 17 && !l.v6 && f[ck] == 0 && f[ck + 1] == 0 {
        return; // IPv4 UDP without checksum stays without.
    }
    f[ck..ck + 2].copy_from_slice(&[0, 0]);
    let (src, dst) = if l.v6 {
        (&f[l.l3 + 8..l.l3 + 24], &f[l.l3 + 24..l.l3 + 40])
    } else {
        (&f[l.l3 + 12..l.l3 + 16], &f[l.l3 + 16..l.l3 + 20])
    };
    let len = (end - l.l4) as u32;
    let s = sum(src) + sum(dst) + l.proto as u32 + len + sum(&f[l.l4..end]);
    let mut c = fold(s);
    if l.proto == 17 && c == 0 {
        c = 0xffff;
    }
    f[ck..ck + 2].copy_from_slice(&c.to_be_bytes());
}

fn set_dscp(f: &mut [u8], dscp: u8) {
    if let Some(l) = layout(f) {
        if l.v6 {
            let tc = ((f[l.l3] & 0x0f) << 4) | (f[l.l3 + 1] >> 4);
            let tc = (dscp << 2) | (tc & 0x03);
            f[l.l3] = 0x60 | (tc >> 4);
            f[l.l3 + 1] = (tc << 4) | (f[l.l3 + 1] & 0x0f);
        } else {
            f[l.l3 + 1] = (dscp << 2) | (f[l.l3 + 1] & 0x03);
        }
        fix_checksums(f);
    }
}

fn ports(f: &[u8]) -> Option<(u8, u16, u16)> {
    let l = layout(f)?;
    if l.proto != 6 && l.proto != 17 {
        return None;
    }
    let p = |o: usize| u16::from_be_bytes([f[l.l4 + o], f[l.l4 + o + 1]]);
    Some((l.proto, p(0), p(2)))
}

fn set_port(f: &mut [u8], dst: bool, port: u16) {
    let l = layout(f).unwrap();
    let o = l.l4 + if dst { 2 } else { 0 };
    f[o..o + 2].copy_from_slice(&port.to_be_bytes());
    fix_checksums(f);
}

fn set_addr(f: &mut [u8], dst: bool, addr: &[u8]) {
    let l = layout(f).unwrap();
    let o = match (l.v6, dst) {
        (false, false) => l.l3 + 12,
        (false, true) => l.l3 + 16,
        (true, false) => l.l3 + 8,
        (true, true) => l.l3 + 24,
    };
    f[o..o + addr.len()].copy_from_slice(addr);
    fix_checksums(f);
}

fn dst_addr(f: &[u8]) -> Option<Vec<u8>> {
    let l = layout(f)?;
    Some(if l.v6 {
        f[l.l3 + 24..l.l3 + 40].to_vec()
    } else {
        f[l.l3 + 16..l.l3 + 20].to_vec()
    })
}

/// Runs sluice over pcaps with `rules` (TOML) and returns the two outputs:
/// (what left upstream, what left towards the subscriber).
fn through_sluice(
    rules: &str,
    sub_in: &[Vec<u8>],
    up_in: &[Vec<u8>],
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_pcap(&d.join("sub_in.pcap"), sub_in);
    write_pcap(&d.join("up_in.pcap"), up_in);
    let dev = |name: &str, rx: &str, tx: &str| {
        format!(
            "{name},rx_pcap={},tx_pcap={}",
            d.join(rx).display(),
            d.join(tx).display()
        )
    };
    let toml = format!(
        "{}{rules}",
        config(
            &dev("net_pcap0", "sub_in.pcap", "sub_out.pcap"),
            &dev("net_pcap1", "up_in.pcap", "up_out.pcap"),
        )
    );
    let cfg = write_config(d, &toml);
    let out = run(
        &["-c", cfg.to_str().unwrap(), "--duration", "2"],
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", describe(&out));
    let up = read_pcap(&d.join("up_out.pcap"));
    let sub = read_pcap(&d.join("sub_out.pcap"));
    (up, sub, dir)
}

/// tshark with checksum validation on: no bad checksum, and some good ones
/// (so the check really ran).
fn assert_tshark_checksums_good(frames: &[Vec<u8>], dir: &std::path::Path, name: &str) {
    let path = dir.join(format!("{name}.pcap"));
    write_pcap(&path, frames);
    let tshark = |filter: &str| {
        let out = Command::new("tshark")
            .args(["-r", path.to_str().unwrap()])
            .args([
                "-o",
                "ip.check_checksum:TRUE",
                "-o",
                "tcp.check_checksum:TRUE",
                "-o",
                "udp.check_checksum:TRUE",
            ])
            .args(["-Y", filter])
            .output()
            .expect("run tshark");
        assert!(out.status.success(), "{}", describe(&out));
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    let bad =
        tshark("ip.checksum.status == 0 || tcp.checksum.status == 0 || udp.checksum.status == 0");
    assert_eq!(bad, 0, "tshark found {bad} bad checksums in {name}");
    let good =
        tshark("ip.checksum.status == 1 || tcp.checksum.status == 1 || udp.checksum.status == 1");
    assert!(good > 0, "tshark validated no checksum at all in {name}");
}

#[test]
fn dscp_rule_marks_every_ip_packet_and_keeps_ecn_and_checksums() {
    let mut sub_in = mixed_traffic(0);
    // Give one packet ECN bits, which must survive.
    let l = layout(&sub_in[1]).unwrap();
    sub_in[1][l.l3 + 1] |= 0x02;
    fix_checksums(&mut sub_in[1]);
    let (up, sub, dir) = through_sluice("[[rules]]\nname = \"ef\"\ndscp = 46\n", &sub_in, &[]);
    let expected: Vec<Vec<u8>> = sub_in
        .iter()
        .map(|f| {
            let mut f = f.clone();
            set_dscp(&mut f, 46);
            f
        })
        .collect();
    assert!(sub.is_empty());
    assert_eq!(up.len(), expected.len());
    for (i, (got, want)) in up.iter().zip(&expected).enumerate() {
        assert_eq!(
            got, want,
            "frame {i}: DSCP 46 set, ECN kept, checksums valid; nothing else changes"
        );
    }
    assert_eq!(up[1][layout(&up[1]).unwrap().l3 + 1], (46 << 2) | 0x02);
    assert_tshark_checksums_good(&up, dir.path(), "dscp");
}

#[test]
fn port_remap_rewrites_matching_flows_and_their_replies_only() {
    let sub_in = mixed_traffic(1);
    let up_in = replies(
        [198, 18, 0, 2],
        [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
        8080,
        5353,
    );
    let rules = "[[rules]]\nname = \"web\"\ndst = \"198.18.0.2/32\"\nprotocol = \"tcp\"\ndst_port = 80\nremap_port = 8080\n\
                 [[rules]]\nname = \"dns\"\nprotocol = \"udp\"\ndst_port = 53\nremap_port = 5353\n";
    let (up, sub, dir) = through_sluice(rules, &sub_in, &up_in);
    // Forward: TCP to 198.18.0.2:80 now goes to 8080 (the data packet and
    // the SYN with options); UDP to 53 goes to 5353. Nothing else changes.
    let want_up: Vec<Vec<u8>> = sub_in
        .iter()
        .map(|f| {
            let mut f = f.clone();
            match ports(&f) {
                Some((6, _, 80)) if dst_addr(&f) == Some(vec![198, 18, 0, 2]) => {
                    set_port(&mut f, true, 8080)
                }
                Some((17, _, 53)) => set_port(&mut f, true, 5353),
                _ => {}
            }
            f
        })
        .collect();
    assert_eq!(up.len(), want_up.len());
    for (i, (got, want)) in up.iter().zip(&want_up).enumerate() {
        assert_eq!(got, want, "upstream frame {i}");
    }
    // Reverse: replies from :8080 and :5353 get their source port rewritten
    // back, so the client sees the port it talked to. The v6 reply and the
    // unrelated flow pass untouched.
    let mut want_sub = up_in.clone();
    set_port(&mut want_sub[0], false, 80);
    set_port(&mut want_sub[1], false, 53);
    assert_eq!(sub.len(), want_sub.len());
    for (i, (got, want)) in sub.iter().zip(&want_sub).enumerate() {
        assert_eq!(got, want, "downstream frame {i}");
    }
    assert_tshark_checksums_good(&up, dir.path(), "port-up");
    assert_tshark_checksums_good(&sub, dir.path(), "port-down");
}

#[test]
fn ip_remap_sends_flows_to_the_priority_endpoint_and_restores_replies() {
    let sub_in = mixed_traffic(2);
    let v6_b = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    let v6_p = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3];
    let up_in = replies([198, 18, 0, 3], v6_p, 80, 53);
    let rules = "[[rules]]\nname = \"v4\"\ndst = \"198.18.0.2/32\"\nremap_ip = \"198.18.0.3\"\n\
                 [[rules]]\nname = \"v6\"\ndst = \"2001:db8::2/128\"\nremap_ip = \"2001:db8::3\"\n";
    let (up, sub, dir) = through_sluice(rules, &sub_in, &up_in);
    let want_up: Vec<Vec<u8>> = sub_in
        .iter()
        .map(|f| {
            let mut f = f.clone();
            // Remaps apply to TCP and UDP only (ICMP passes untouched).
            match dst_addr(&f).as_deref() {
                _ if ports(&f).is_none() => {}
                Some([198, 18, 0, 2]) => set_addr(&mut f, true, &[198, 18, 0, 3]),
                Some(a) if a == v6_b => set_addr(&mut f, true, &v6_p),
                _ => {}
            }
            f
        })
        .collect();
    assert_eq!(up.len(), want_up.len());
    for (i, (got, want)) in up.iter().zip(&want_up).enumerate() {
        assert_eq!(got, want, "upstream frame {i}");
    }
    // Replies from the endpoint come back as if from the original server.
    let mut want_sub = up_in.clone();
    set_addr(&mut want_sub[0], false, &[198, 18, 0, 2]);
    set_addr(&mut want_sub[1], false, &[198, 18, 0, 2]);
    set_addr(&mut want_sub[2], false, &v6_b);
    assert_eq!(sub.len(), want_sub.len());
    for (i, (got, want)) in sub.iter().zip(&want_sub).enumerate() {
        assert_eq!(got, want, "downstream frame {i}");
    }
    assert_tshark_checksums_good(&up, dir.path(), "ip-up");
    assert_tshark_checksums_good(&sub, dir.path(), "ip-down");
}

#[test]
fn mss_rule_clamps_syn_options_only() {
    let sub_in = mixed_traffic(3);
    let rules = "[[rules]]\nname = \"clamp\"\nprotocol = \"tcp\"\nmss = 1360\n";
    let (up, _, dir) = through_sluice(rules, &sub_in, &[]);
    let syn = sub_in.len() - 3; // the SYN with options (before ARP and the truncated frame)
    for (i, (got, sent)) in up.iter().zip(&sub_in).enumerate() {
        if i == syn {
            let mut want = sent.clone();
            let l = layout(&want).unwrap();
            // MSS is the first option: kind 2, len 4, value.
            assert_eq!(&want[l.l4 + 20..l.l4 + 22], &[2, 4]);
            want[l.l4 + 22..l.l4 + 24].copy_from_slice(&1360u16.to_be_bytes());
            fix_checksums(&mut want);
            assert_eq!(got, &want, "SYN: MSS 1460 clamped to 1360");
        } else {
            assert_eq!(got, sent, "frame {i} has no MSS option and must not change");
        }
    }
    assert_tshark_checksums_good(&up, dir.path(), "mss");
}
