//! Traffic with real headers for the scenarios that need the packet path
//! to parse (net_null frames are all zeros): 64-byte TCP and UDP/IPv4
//! frames with valid checksums, the `rewrite` corpus (one kind of flow), the
//! `pipeline` corpus (a mix of the subscribers and destinations the policy
//! tables know), and a minimal pcap writer for net_pcap `rx_pcap=`.
use std::io::Write;
use std::path::Path;

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

/// The transport header of a generated frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    /// A TCP ACK with 6 bytes of payload (a running connection).
    TcpAck,
    /// A TCP SYN carrying an MSS option (a connection being opened).
    TcpSyn { mss: u16 },
    /// A UDP datagram (QUIC-like) with 22 bytes of payload.
    Udp,
}

/// One 64-byte Ethernet/IPv4 frame of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSpec {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub l4: L4,
}

impl FrameSpec {
    /// The frame: 64 bytes (no FCS), valid IPv4 and TCP/UDP checksums.
    pub fn frame(&self) -> Vec<u8> {
        let mut f = vec![0u8; 64];
        f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 0x0b]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0x0a]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = 14;
        let l4 = ip + 20;
        let (proto, l4_len) = match self.l4 {
            L4::TcpAck => (6u8, 20 + 6),
            L4::TcpSyn { .. } => (6, 24),
            L4::Udp => (17, 64 - l4),
        };
        let total = 20 + l4_len;
        f[ip] = 0x45;
        f[ip + 2..ip + 4].copy_from_slice(&(total as u16).to_be_bytes());
        f[ip + 8] = 64;
        f[ip + 9] = proto;
        f[ip + 12..ip + 16].copy_from_slice(&self.src);
        f[ip + 16..ip + 20].copy_from_slice(&self.dst);
        let c = fold(sum(&f[ip..ip + 20]));
        f[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
        f[l4..l4 + 2].copy_from_slice(&self.sport.to_be_bytes());
        f[l4 + 2..l4 + 4].copy_from_slice(&self.dport.to_be_bytes());
        let end = ip + total;
        let csum_at = match self.l4 {
            L4::TcpAck | L4::TcpSyn { .. } => {
                f[l4 + 4..l4 + 8].copy_from_slice(&1u32.to_be_bytes());
                f[l4 + 14..l4 + 16].copy_from_slice(&65535u16.to_be_bytes());
                if let L4::TcpSyn { mss } = self.l4 {
                    f[l4 + 12] = 6 << 4;
                    f[l4 + 13] = 0x02;
                    f[l4 + 20..l4 + 22].copy_from_slice(&[2, 4]);
                    f[l4 + 22..l4 + 24].copy_from_slice(&mss.to_be_bytes());
                } else {
                    f[l4 + 12] = 5 << 4;
                    f[l4 + 13] = 0x10;
                }
                l4 + 16
            }
            L4::Udp => {
                f[l4 + 4..l4 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
                l4 + 6
            }
        };
        let pseudo = sum(&f[ip + 12..ip + 20]) + u32::from(proto) + (end - l4) as u32;
        let mut c = fold(pseudo + sum(&f[l4..end]));
        if c == 0 && proto == 17 {
            c = 0xffff;
        }
        f[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
        f
    }
}

/// Coupon subscriber `i`'s address: 10.(i >> 16).(i >> 8).i.
pub fn coupon_subscriber(i: u32) -> [u8; 4] {
    [10, (i >> 16) as u8, (i >> 8) as u8, i as u8]
}

/// One 64-byte Ethernet/IPv4/TCP ACK frame of flow `i`: source
/// 10.x.y.z:(10000 + i % 50000), destination 198.18.0.2:80, 6 bytes of
/// payload, valid IPv4 and TCP checksums.
pub fn tcp_frame(i: u32) -> Vec<u8> {
    FrameSpec {
        src: coupon_subscriber(i),
        dst: [198, 18, 0, 2],
        sport: 10000 + (i % 50000) as u16,
        dport: 80,
        l4: L4::TcpAck,
    }
    .frame()
}

/// `n` frames, one per flow.
pub fn tcp_flows(n: u32) -> Vec<Vec<u8>> {
    (0..n).map(tcp_frame).collect()
}

/// Who a flow of the `pipeline` corpus belongs to, i.e. which row of the
/// populated policy store classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FlowClass {
    /// A coupon subscriber (10.0.0.0/22) whose coupon is premium.
    CouponPremium,
    /// A coupon subscriber whose coupon is best effort.
    CouponBestEffort,
    /// A logged-in subscriber (12.0.0.0/12, among the 1M logins; tier gold).
    Login,
    /// Traffic to the service provider's prefix (198.51.100.0/24, port 443).
    Sp,
    /// Nobody has a binding for it: the default decision.
    Default,
}

/// How many flows of each class the `pipeline` corpus holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    pub coupon_premium: u32,
    pub coupon_best_effort: u32,
    pub login: u32,
    /// SP flows; the first [`Mix::sp_syn`] are TCP SYNs (the MSS clamp
    /// and the port remap act on them), the rest UDP (the remap acts).
    pub sp: u32,
    pub sp_syn: u32,
    pub default: u32,
}

/// The `pipeline` corpus: 4096 flows.
pub const PIPELINE_MIX: Mix = Mix {
    coupon_premium: 64,
    coupon_best_effort: 960,
    login: 1024,
    sp: 256,
    sp_syn: 32,
    default: 1792,
};

/// Logins populated in the store (12.0.0.0/12): the `login` flows' sources
/// are spread over them.
pub const POPULATED_LOGINS: u32 = 1 << 20;
/// The SP allocation's prefix and port, and what it rewrites.
pub const SP_PREFIX: &str = "198.51.100.0/24";
pub const SP_PORT: u16 = 443;
pub const SP_REMAP_PORT: u16 = 8443;
pub const SP_MSS_CLAMP: u16 = 1360;

impl Mix {
    pub const fn total(&self) -> u32 {
        self.coupon_premium + self.coupon_best_effort + self.login + self.sp + self.default
    }

    /// Coupon subscribers (premium first): the store holds a coupon for
    /// each of `coupon_subscriber(0 .. coupons())`.
    pub fn coupons(&self) -> u32 {
        self.coupon_premium + self.coupon_best_effort
    }

    /// Every flow's class and first frame, in class order.
    pub fn flows(&self) -> Vec<(FlowClass, FrameSpec)> {
        let mut v = Vec::with_capacity(self.total() as usize);
        for i in 0..self.coupons() {
            let class = if i < self.coupon_premium {
                FlowClass::CouponPremium
            } else {
                FlowClass::CouponBestEffort
            };
            v.push((
                class,
                FrameSpec {
                    src: coupon_subscriber(i),
                    dst: [198, 18, 0, 2],
                    sport: 10000 + (i % 50000) as u16,
                    dport: 80,
                    l4: L4::TcpAck,
                },
            ));
        }
        for k in 0..self.login {
            // A stride coprime with 2^20 spreads the sources over the table.
            let j = (u64::from(k) * 40_503 % u64::from(POPULATED_LOGINS)) as u32;
            v.push((
                FlowClass::Login,
                FrameSpec {
                    src: [12, (j >> 16) as u8, (j >> 8) as u8, j as u8],
                    dst: [198, 18, 1, (k % 250 + 1) as u8],
                    sport: 20000 + (k % 40000) as u16,
                    dport: 443,
                    l4: L4::TcpAck,
                },
            ));
        }
        for k in 0..self.sp {
            v.push((
                FlowClass::Sp,
                FrameSpec {
                    src: [100, 65, (k >> 8) as u8, k as u8],
                    dst: [198, 51, 100, (k % 254 + 1) as u8],
                    sport: 30000 + (k % 30000) as u16,
                    dport: SP_PORT,
                    l4: if k < self.sp_syn {
                        L4::TcpSyn { mss: 1460 }
                    } else {
                        L4::Udp
                    },
                },
            ));
        }
        for k in 0..self.default {
            v.push((
                FlowClass::Default,
                FrameSpec {
                    src: [100, 64, (k >> 8) as u8, k as u8],
                    dst: [203, 0, 113, (k % 254 + 1) as u8],
                    sport: 40000 + (k % 25000) as u16,
                    dport: 80,
                    l4: L4::TcpAck,
                },
            ));
        }
        v
    }

    /// The corpus as replayed: every flow's frame, the classes interleaved
    /// by a fixed shuffle so that each burst mixes them as real traffic
    /// would.
    pub fn frames(&self) -> Vec<Vec<u8>> {
        let mut flows = self.flows();
        shuffle(&mut flows, 0x5eed_1ce5);
        flows.iter().map(|(_, f)| f.frame()).collect()
    }
}

/// Coupon `i` of the 1M bulk coupons (11.0.0.0/12, premium, DSCP 46):
/// table scale only, no corpus flow comes from these subscribers.
pub fn bulk_coupon(i: u32) -> String {
    let mut row = String::new();
    write_bulk_coupon(&mut row, i, 46);
    row
}

/// Appends coupon `i` of the bulk coupons with DSCP `dscp` to `out` (the
/// `updates` storm rewrites them with another mark).
pub fn write_bulk_coupon(out: &mut String, i: u32, dscp: u8) {
    use std::fmt::Write;
    let _ = write!(
        out,
        r#"{{"id":"f{i}","subscriber":"11.{}.{}.{}","decision":{{"level":"premium","dscp":{dscp}}}}}"#,
        i >> 16,
        (i >> 8) & 255,
        i & 255
    );
}

/// Login `i` of the 1M bulk logins (12.0.0.0/12, tier gold); the corpus's
/// login flows come from among them.
pub fn bulk_login(i: u32) -> String {
    format!(
        r#"{{"subscriber":"12.{}.{}.{}","login":"u{i}","tier":"gold"}}"#,
        i >> 16,
        (i >> 8) & 255,
        i & 255
    )
}

/// The policy rows the corpus's flows meet, as `(table, entries)` in the
/// order to add them (the tier before any login): tier gold (standard,
/// DSCP of the level); a coupon per coupon subscriber (premium for the
/// first `coupon_premium`, best effort for the rest; DSCP of the level; a
/// 100 Gbit/s meter no flow reaches); the SP allocation on [`SP_PREFIX`]
/// port [`SP_PORT`] (voice, DSCP of the level, destination port remapped
/// to [`SP_REMAP_PORT`], MSS clamped to [`SP_MSS_CLAMP`]). The SP is at
/// voice, not interactive: the `updates` probe moves a subscriber to
/// interactive and watches that level's counter, so no corpus traffic may
/// use it. Default traffic needs no row. The bulk rows are
/// [`bulk_coupon`] and [`bulk_login`].
pub fn policy_rows(mix: &Mix) -> Vec<(&'static str, Vec<String>)> {
    let coupons = (0..mix.coupons())
        .map(|i| {
            let level = if i < mix.coupon_premium {
                "premium"
            } else {
                "best-effort"
            };
            let [a, b, c, d] = coupon_subscriber(i);
            format!(
                r#"{{"id":"c{i}","subscriber":"{a}.{b}.{c}.{d}","decision":{{"level":"{level}","dscp":"level","rate":{{"committed_bps":100000000000,"peak_bps":100000000000}}}}}}"#
            )
        })
        .collect();
    vec![
        (
            "tier",
            vec![r#"{"name":"gold","decision":{"level":"standard","dscp":"level"}}"#.into()],
        ),
        ("coupon", coupons),
        (
            "sp",
            vec![format!(
                r#"{{"id":"sp-bench","provider":"bench-cdn","prefix":"{SP_PREFIX}","port":{SP_PORT},"decision":{{"level":"voice","dscp":"level","dst_port":{SP_REMAP_PORT},"mss_clamp":{SP_MSS_CLAMP}}}}}"#
            )],
        ),
    ]
}

/// The store's contents in a sentence, for RESULTS.md.
pub fn describe_policy(mix: &Mix) -> String {
    format!(
        "{POPULATED_LOGINS} coupons (11.0.0.0/12, premium, DSCP 46) and {POPULATED_LOGINS} \
         logins (12.0.0.0/12, tier gold: standard, DSCP of the level) for table scale; a coupon \
         per corpus coupon subscriber (10.0.0.0/22; the first {} premium, the other {} best \
         effort; DSCP of the level; a 100 Gbit/s meter); SP allocation sp-bench on {SP_PREFIX} \
         port {SP_PORT} (voice, DSCP of the level, destination port -> {SP_REMAP_PORT}, MSS \
         clamp {SP_MSS_CLAMP}); default decision unchanged (best effort, no rewrite)",
        mix.coupon_premium, mix.coupon_best_effort
    )
}

/// The corpus in a sentence, for RESULTS.md.
pub fn describe_mix(mix: &Mix) -> String {
    format!(
        "{} flows, one 64-byte frame each (valid checksums), shuffled, replayed with \
         infinite_rx=1: {} premium-coupon and {} best-effort-coupon subscribers (10.0.0.0/22, \
         TCP ACK to 198.18.0.2:80); {} logged-in subscribers from among the 1M logins \
         (12.0.0.0/12, TCP ACK to 198.18.1.x:443); {} flows to the SP prefix {SP_PREFIX}:{SP_PORT} \
         ({} TCP SYN with MSS 1460, the rest UDP) from unbound subscribers 100.65.x.x; {} default \
         flows (unbound 100.64.x.x, TCP ACK to 203.0.113.x:80)",
        mix.total(),
        mix.coupon_premium,
        mix.coupon_best_effort,
        mix.login,
        mix.sp,
        mix.sp_syn,
        mix.default
    )
}

/// Fisher-Yates with a fixed xorshift sequence: the same order every run.
fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut x = seed | 1;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

/// Writes a classic (microsecond, Ethernet) pcap file.
pub fn write_pcap(path: &Path, frames: &[Vec<u8>]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(24 + frames.len() * 80);
    out.extend(0xa1b2_c3d4u32.to_le_bytes());
    out.extend(2u16.to_le_bytes());
    out.extend(4u16.to_le_bytes());
    out.extend([0u8; 8]);
    out.extend(65535u32.to_le_bytes());
    out.extend(1u32.to_le_bytes());
    for (i, f) in frames.iter().enumerate() {
        out.extend((i as u32 / 1_000_000).to_le_bytes());
        out.extend((i as u32 % 1_000_000).to_le_bytes());
        out.extend((f.len() as u32).to_le_bytes());
        out.extend((f.len() as u32).to_le_bytes());
        out.extend(f);
    }
    std::fs::File::create(path)?.write_all(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_valid_checksums_and_distinct_flows() {
        let a = tcp_frame(1);
        let b = tcp_frame(2);
        assert_eq!(a.len(), 64);
        assert_ne!(a[26..30], b[26..30]);
        // A valid header sums to 0xffff (checksum included), i.e. folds to 0.
        assert_eq!(fold(sum(&a[14..34])), 0);
        let pseudo = sum(&a[26..34]) + 6 + 26;
        assert_eq!(fold(pseudo + sum(&a[34..60])), 0);
    }

    fn l4_checksum_ok(f: &[u8]) -> bool {
        let total = u16::from_be_bytes([f[16], f[17]]) as usize;
        let end = 14 + total;
        let pseudo = sum(&f[26..34]) + u32::from(f[23]) + (total - 20) as u32;
        fold(pseudo + sum(&f[34..end])) == 0
    }

    #[test]
    fn every_kind_of_frame_is_64_bytes_with_valid_checksums() {
        for l4 in [L4::TcpAck, L4::TcpSyn { mss: 1460 }, L4::Udp] {
            let f = FrameSpec {
                src: [100, 65, 0, 7],
                dst: [198, 51, 100, 8],
                sport: 30007,
                dport: 443,
                l4,
            }
            .frame();
            assert_eq!(f.len(), 64, "{l4:?}");
            assert_eq!(fold(sum(&f[14..34])), 0, "{l4:?}");
            assert!(l4_checksum_ok(&f), "{l4:?}");
        }
        let syn = FrameSpec {
            src: [1, 2, 3, 4],
            dst: [5, 6, 7, 8],
            sport: 1,
            dport: 2,
            l4: L4::TcpSyn { mss: 1460 },
        }
        .frame();
        assert_eq!(syn[47], 0x02, "SYN only");
        assert_eq!(&syn[54..58], &[2, 4, 0x05, 0xb4], "MSS option");
    }

    #[test]
    fn the_rewrite_corpus_is_unchanged_by_the_generaliser() {
        // Bytes of flow 1 before FrameSpec existed (seq 1, ACK, window 65535).
        let f = tcp_frame(1);
        assert_eq!(&f[26..38], &[10, 0, 0, 1, 198, 18, 0, 2, 0x27, 0x11, 0, 80]);
        assert_eq!(
            &f[38..50],
            &[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10, 0xff, 0xff]
        );
    }

    #[test]
    fn the_pipeline_mix_has_distinct_flows_of_every_class_interleaved() {
        let mix = PIPELINE_MIX;
        assert_eq!(mix.total(), 4096);
        let flows = mix.flows();
        assert_eq!(flows.len(), 4096);
        let tuples: std::collections::HashSet<_> = flows
            .iter()
            .map(|(_, f)| (f.src, f.dst, f.sport, f.dport))
            .collect();
        assert_eq!(tuples.len(), 4096, "every flow distinct");
        let frames = mix.frames();
        assert_eq!(frames.len(), 4096);
        assert!(frames.iter().all(|f| f.len() == 64 && l4_checksum_ok(f)));
        // Shuffled: the first 64 frames are not all coupon flows.
        assert!(frames[..64].iter().any(|f| f[26] != 10));
        assert_eq!(frames, mix.frames(), "the same order every time");
    }

    /// The reference classifier of the policy gives each class the level
    /// the scenarios' tables attribute to it.
    #[test]
    fn each_class_meets_the_policy_row_meant_for_it() {
        use sluice_control::policy::{parse_request, FlowQuery, PolicyState, Request};
        let mix = PIPELINE_MIX;
        let mut state = PolicyState::new();
        let mut add = |table: &str, entries: Vec<String>| {
            let line = format!(
                r#"{{"op":"add","table":"{table}","entries":[{}]}}"#,
                entries.join(",")
            );
            let Ok(Request::Apply { changes, .. }) = parse_request(&line) else {
                panic!("bad request {line}");
            };
            state.apply(&changes).unwrap();
        };
        let rows = policy_rows(&mix);
        add(rows[0].0, rows[0].1.clone());
        // The logins the corpus uses (the store holds all 1M).
        let logins: Vec<String> = mix
            .flows()
            .iter()
            .filter(|f| f.0 == FlowClass::Login)
            .map(|(_, f)| {
                let j =
                    (u32::from(f.src[1]) << 16) | (u32::from(f.src[2]) << 8) | u32::from(f.src[3]);
                assert!(f.src[0] == 12 && j < POPULATED_LOGINS);
                bulk_login(j)
            })
            .collect();
        add("login", logins);
        for (table, entries) in rows.into_iter().skip(1) {
            add(table, entries);
        }
        for (class, f) in mix.flows() {
            let q = FlowQuery {
                src: std::net::IpAddr::from(f.src),
                dst: std::net::IpAddr::from(f.dst),
                proto: if f.l4 == L4::Udp { 17 } else { 6 },
                dst_port: f.dport,
                now: 0,
            };
            let (decision, _) = state.classify(&q);
            let want = match class {
                FlowClass::Sp => "voice",
                FlowClass::CouponPremium => "premium",
                FlowClass::Login => "standard",
                FlowClass::CouponBestEffort | FlowClass::Default => "best-effort",
            };
            assert_eq!(decision.level().to_string(), want, "{class:?} {f:?}");
        }
    }

    #[test]
    fn bulk_rows_and_policy_rows_are_valid_requests() {
        use sluice_control::policy::parse_request;
        for (table, row) in [("coupon", bulk_coupon(7)), ("login", bulk_login(1 << 19))] {
            let line = format!(r#"{{"op":"add","table":"{table}","entries":[{row}]}}"#);
            assert!(parse_request(&line).is_ok(), "{line}");
        }
    }

    #[test]
    fn pcap_has_header_and_records() {
        let dir = std::env::temp_dir().join(format!("corpus-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.pcap");
        write_pcap(&p, &tcp_flows(3)).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(bytes.len(), 24 + 3 * (16 + 64));
        assert_eq!(&bytes[0..4], &0xa1b2_c3d4u32.to_le_bytes());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
