//! Property tests over every header combination: 0/1/2 VLAN tags x IPv4
//! with or without options x IPv6 with or without extension headers x
//! TCP/UDP, fragments, random payloads and options. The oracle is the
//! builder in `testutil`, which computes every checksum in full: a rewrite
//! must give exactly the bytes of the frame built with the new values.
use std::net::IpAddr;

use proptest::prelude::*;

use super::testutil::{self, Ext, Frag, Ip, Layout, Spec, Tcp, Udp, V4, V6};
use super::*;
use crate::flow::{FlowDecision, FlowTable, FlowTableConfig, Side};
use crate::stats::Direction;

/// TCP options, kept structured so the model knows where the MSS is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opt {
    Nop,
    Mss(u16),
    WScale(u8),
    SackOk,
    Ts(u32, u32),
}

impl Opt {
    fn bytes(self) -> Vec<u8> {
        match self {
            Opt::Nop => vec![1],
            Opt::Mss(m) => testutil::mss_opt(m),
            Opt::WScale(s) => vec![3, 3, s],
            Opt::SackOk => vec![4, 2],
            Opt::Ts(a, b) => {
                let mut v = vec![8, 10];
                v.extend(a.to_be_bytes());
                v.extend(b.to_be_bytes());
                v
            }
        }
    }
}

fn opts_bytes(opts: &[Opt]) -> Vec<u8> {
    opts.iter().flat_map(|o| o.bytes()).collect()
}

/// A frame to build: the spec plus structured TCP options.
#[derive(Debug, Clone)]
struct Case {
    spec: Spec,
    opts: Vec<Opt>,
}

impl Case {
    fn build(&self) -> (Vec<u8>, Layout) {
        let mut s = self.spec.clone();
        if let testutil::L4::Tcp(t) = &mut s.l4 {
            t.options = opts_bytes(&self.opts);
        }
        s.build()
    }

    fn v6(&self) -> bool {
        matches!(self.spec.ip, Ip::V6(_))
    }

    fn nonfirst(&self) -> bool {
        matches!(self.spec.frag(), Frag::NonFirst { .. })
    }

    fn fragmented(&self) -> bool {
        matches!(self.spec.frag(), Frag::First | Frag::NonFirst { .. })
    }

    fn tcp(&self) -> Option<&Tcp> {
        match &self.spec.l4 {
            testutil::L4::Tcp(t) => Some(t),
            _ => None,
        }
    }

    fn udp_zero(&self) -> bool {
        matches!(
            &self.spec.l4,
            testutil::L4::Udp(Udp {
                zero_csum: true,
                ..
            })
        )
    }

    fn dst_port(&self) -> u16 {
        match &self.spec.l4 {
            testutil::L4::Tcp(t) => t.dport,
            testutil::L4::Udp(u) => u.dport,
            testutil::L4::Other(_) => 0,
        }
    }

    fn set_dst_port(&mut self, port: u16) {
        match &mut self.spec.l4 {
            testutil::L4::Tcp(t) => t.dport = port,
            testutil::L4::Udp(u) => u.dport = port,
            testutil::L4::Other(_) => {}
        }
    }

    fn set_src_port(&mut self, port: u16) {
        match &mut self.spec.l4 {
            testutil::L4::Tcp(t) => t.sport = port,
            testutil::L4::Udp(u) => u.sport = port,
            testutil::L4::Other(_) => {}
        }
    }

    fn dscp(&self) -> u8 {
        match &self.spec.ip {
            Ip::V4(v) => v.tos >> 2,
            Ip::V6(v) => v.tclass >> 2,
        }
    }

    fn set_dscp(&mut self, d: u8) {
        match &mut self.spec.ip {
            Ip::V4(v) => v.tos = (d << 2) | (v.tos & 3),
            Ip::V6(v) => v.tclass = (d << 2) | (v.tclass & 3),
        }
    }

    fn dst_addr(&self) -> IpAddr {
        match &self.spec.ip {
            Ip::V4(v) => v.dst.into(),
            Ip::V6(v) => v.dst.into(),
        }
    }

    fn src_addr(&self) -> IpAddr {
        match &self.spec.ip {
            Ip::V4(v) => v.src.into(),
            Ip::V6(v) => v.src.into(),
        }
    }

    /// An address of this packet's family made of the given bytes.
    fn addr_like(&self, a4: [u8; 4], a6: [u8; 16]) -> IpAddr {
        if self.v6() {
            a6.into()
        } else {
            a4.into()
        }
    }

    fn set_addr(&mut self, dst: bool, a: IpAddr) {
        match (&mut self.spec.ip, a) {
            (Ip::V4(v), IpAddr::V4(a)) if dst => v.dst = a.octets(),
            (Ip::V4(v), IpAddr::V4(a)) => v.src = a.octets(),
            (Ip::V6(v), IpAddr::V6(a)) if dst => v.dst = a.octets(),
            (Ip::V6(v), IpAddr::V6(a)) => v.src = a.octets(),
            _ => panic!("family mismatch in test"),
        }
    }
}

fn vlans() -> impl Strategy<Value = Vec<testutil::Vlan>> {
    prop_oneof![
        Just(vec![]),
        (0u16..4096).prop_map(|v| vec![(0x8100, v)]),
        (
            prop_oneof![Just(0x88a8u16), Just(0x9100), Just(0x8100)],
            0u16..4096,
            0u16..4096
        )
            .prop_map(|(t, a, b)| vec![(t, a), (0x8100, b)]),
    ]
}

fn frag(v6: bool) -> impl Strategy<Value = Frag> {
    let nonfirst =
        (1u16..0x1fff, any::<bool>()).prop_map(|(offset, more)| Frag::NonFirst { offset, more });
    let atomic = if v6 { Frag::Atomic } else { Frag::None };
    prop_oneof![
        6 => Just(Frag::None),
        1 => Just(atomic),
        1 => Just(Frag::First),
        1 => nonfirst,
    ]
}

fn v4_options() -> impl Strategy<Value = Vec<u8>> {
    // Up to 40 bytes: NOPs, optionally after a router-alert option.
    prop_oneof![
        Just(vec![]),
        (0usize..=9, any::<bool>()).prop_map(|(n, ra)| {
            let mut v = if ra { vec![148, 4, 0, 0] } else { vec![1; 4] };
            v.extend(vec![1; n * 4]);
            v
        }),
    ]
}

fn ext6() -> impl Strategy<Value = Vec<Ext>> {
    prop::collection::vec(
        prop_oneof![
            (0u8..3).prop_map(Ext::HopByHop),
            (0u8..3).prop_map(Ext::DestOpts),
            (0u8..3).prop_map(|len| Ext::Routing {
                len,
                segments_left: 0
            }),
        ],
        0..4,
    )
}

fn ip() -> impl Strategy<Value = Ip> {
    prop_oneof![
        (
            any::<[u8; 4]>(),
            any::<[u8; 4]>(),
            any::<u8>(),
            any::<u16>(),
            v4_options(),
            frag(false)
        )
            .prop_map(|(src, dst, tos, id, options, frag)| Ip::V4(V4 {
                src,
                dst,
                tos,
                id,
                options,
                frag,
                ah: false
            })),
        (
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<u8>(),
            any::<u32>(),
            ext6(),
            frag(true)
        )
            .prop_map(|(src, dst, tclass, flow, ext, frag)| Ip::V6(V6 {
                src,
                dst,
                tclass,
                flow,
                ext,
                frag
            })),
    ]
}

fn opt() -> impl Strategy<Value = Opt> {
    prop_oneof![
        Just(Opt::Nop),
        any::<u16>().prop_map(Opt::Mss),
        (0u8..15).prop_map(Opt::WScale),
        Just(Opt::SackOk),
        (any::<u32>(), any::<u32>()).prop_map(|(a, b)| Opt::Ts(a, b)),
    ]
}

fn tcp_opts() -> impl Strategy<Value = Vec<Opt>> {
    prop::collection::vec(opt(), 0..7).prop_map(|v| {
        // Keep what fits in 40 bytes (the builder pads with EOL).
        let mut len = 0;
        v.into_iter()
            .take_while(|o| {
                len += o.bytes().len();
                len <= 40
            })
            .collect()
    })
}

fn l4() -> impl Strategy<Value = testutil::L4> {
    prop_oneof![
        (any::<u16>(), any::<u16>(), any::<u32>(), any::<u8>()).prop_map(
            |(sport, dport, seq, flags)| testutil::L4::Tcp(Tcp {
                sport,
                dport,
                seq,
                flags,
                options: vec![],
            })
        ),
        (any::<u16>(), any::<u16>(), prop::bool::weighted(0.2)).prop_map(
            |(sport, dport, zero_csum)| testutil::L4::Udp(Udp {
                sport,
                dport,
                zero_csum,
            })
        ),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        vlans(),
        ip(),
        l4(),
        tcp_opts(),
        prop::collection::vec(any::<u8>(), 0..48),
        0usize..8,
    )
        .prop_map(|(vlans, ip, l4, opts, payload, eth_pad)| Case {
            spec: Spec {
                vlans,
                ip,
                l4,
                payload,
                eth_pad,
            },
            opts,
        })
}

/// What `clamp_mss` must do to this case, and the options after it.
fn mss_model(c: &Case, limit: u16) -> (Outcome, Vec<Opt>) {
    let unchanged = c.opts.clone();
    if c.nonfirst() {
        return (Outcome::NonFirstFragment, unchanged);
    }
    let Some(t) = c.tcp() else {
        return (Outcome::NotTcp, unchanged);
    };
    if t.flags & TCP_SYN == 0 {
        return (Outcome::NotSyn, unchanged);
    }
    if opts_bytes(&c.opts).is_empty() {
        return (Outcome::NoTcpOptions, unchanged);
    }
    let Some(i) = c.opts.iter().position(|o| matches!(o, Opt::Mss(_))) else {
        return (Outcome::NoMssOption, unchanged);
    };
    let mut opts = unchanged;
    match opts[i] {
        Opt::Mss(m) if m > limit => {
            opts[i] = Opt::Mss(limit);
            (Outcome::Rewritten, opts)
        }
        _ => (Outcome::AtOrBelowLimit, opts),
    }
}

/// What a port rewrite to `new` must do, and the case after it.
fn port_model(c: &Case, new: u16) -> (Outcome, Case) {
    let mut after = c.clone();
    let o = if c.nonfirst() {
        Outcome::NonFirstFragment
    } else if c.dst_port() == new {
        Outcome::Unchanged
    } else if c.udp_zero() && c.v6() {
        Outcome::UdpZeroChecksumV6
    } else {
        after.set_dst_port(new);
        if c.udp_zero() {
            Outcome::RewrittenNoChecksum
        } else {
            Outcome::Rewritten
        }
    };
    (o, after)
}

/// What a destination address rewrite to `new` must do.
fn addr_model(c: &Case, new: IpAddr) -> (Outcome, Case) {
    let mut after = c.clone();
    let o = if c.fragmented() {
        Outcome::Fragmented
    } else if c.dst_addr() == new {
        Outcome::Unchanged
    } else if c.udp_zero() && c.v6() {
        Outcome::UdpZeroChecksumV6
    } else {
        after.set_addr(true, new);
        if c.udp_zero() {
            Outcome::RewrittenNoChecksum
        } else {
            Outcome::Rewritten
        }
    };
    (o, after)
}

fn expected_fragment(f: Frag) -> Fragment {
    match f {
        Frag::None | Frag::Atomic => Fragment::None,
        Frag::First => Fragment::First,
        Frag::NonFirst { .. } => Fragment::NonFirst,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn parser_finds_every_header_the_builder_wrote(c in case()) {
        let (frame, lay) = c.build();
        let p = parse(&frame).expect("built frames parse");
        prop_assert_eq!(p.l3_offset(), lay.l3);
        prop_assert_eq!(p.l4_offset(), lay.l4);
        prop_assert_eq!(p.ip_end(), lay.ip_end);
        prop_assert_eq!(usize::from(p.vlan_count()), c.spec.vlans.len());
        for (i, (_, vid)) in c.spec.vlans.iter().enumerate() {
            prop_assert_eq!(p.vlan_ids()[i], *vid);
        }
        prop_assert_eq!(p.fragment(), expected_fragment(c.spec.frag()));
        let want_l4 = match (&c.spec.l4, c.nonfirst()) {
            (_, true) => L4::None,
            (testutil::L4::Tcp(_), _) => L4::Tcp,
            (testutil::L4::Udp(_), _) => L4::Udp,
            (testutil::L4::Other(_), _) => L4::None,
        };
        prop_assert_eq!(p.l4(), want_l4);
        if want_l4 != L4::None {
            prop_assert_eq!(p.dst_port(), c.dst_port());
        }
        if let (Some(t), false) = (c.tcp(), c.nonfirst()) {
            prop_assert_eq!(p.tcp_flags(), t.flags);
            prop_assert_eq!(p.tcp_header_len(), 20 + opts_bytes(&c.opts).len().div_ceil(4) * 4);
        }
        let key = p.flow_key(&frame, Direction::Upstream).expect("key");
        prop_assert_eq!(key.dst_addr(), c.dst_addr());
        prop_assert_eq!(key.src_addr(), c.src_addr());
    }

    #[test]
    fn each_incremental_rewrite_equals_a_full_recompute(
        c in case(),
        dscp in 0u8..64,
        port in any::<u16>(),
        a4 in any::<[u8; 4]>(),
        a6 in any::<[u8; 16]>(),
        limit in 0u16..2000,
    ) {
        let (frame, _) = c.build();
        let p = parse(&frame).expect("built frames parse");

        // DSCP: every fragment.
        let mut f = frame.clone();
        let o = set_dscp(&mut f, &p, Dscp::new(dscp).expect("dscp"));
        let mut want = c.clone();
        want.set_dscp(dscp);
        prop_assert_eq!(o, if c.dscp() == dscp { Outcome::Unchanged } else { Outcome::Rewritten });
        prop_assert_eq!(&f, &want.build().0);

        // Destination port.
        let mut f = frame.clone();
        let o = set_dst_port(&mut f, &p, port);
        let (wo, want) = port_model(&c, port);
        prop_assert_eq!(o, wo);
        prop_assert_eq!(&f, &want.build().0);

        // Destination address, same family.
        let new = c.addr_like(a4, a6);
        let mut f = frame.clone();
        let o = set_dst_addr(&mut f, &p, new);
        let (wo, want) = addr_model(&c, new);
        prop_assert_eq!(o, wo);
        prop_assert_eq!(&f, &want.build().0);

        // MSS clamp.
        let mut f = frame.clone();
        let o = clamp_mss(&mut f, &p, limit);
        let (wo, opts) = mss_model(&c, limit);
        prop_assert_eq!(o, wo);
        prop_assert_eq!(&f, &Case { spec: c.spec.clone(), opts }.build().0);

        // All four at once.
        let actions = ActionSet {
            dscp: Dscp::new(dscp),
            dst_port: Some(port),
            dst_addr: Some(new),
            mss_clamp: Some(limit),
        };
        let mut f = frame.clone();
        let r = apply_forward(&mut f, &p, &actions);
        let mut want = port_model(&addr_model(&c, new).1, port).1;
        want.set_dscp(dscp);
        want.opts = mss_model(&c, limit).1;
        prop_assert_eq!(&f, &want.build().0);
        prop_assert_eq!(r.get(Action::DstPort), port_model(&c, port).0);
        prop_assert_eq!(r.get(Action::DstAddr), addr_model(&c, new).0);
        prop_assert_eq!(r.get(Action::MssClamp), mss_model(&c, limit).0);
        prop_assert_eq!(r.get(Action::SrcPort), Outcome::NotRequested);
    }

    #[test]
    fn undoing_a_forward_rewrite_restores_the_original_bytes(
        c in case(),
        port in any::<u16>(),
        a4 in any::<[u8; 4]>(),
        a6 in any::<[u8; 16]>(),
    ) {
        let (frame, _) = c.build();
        let p = parse(&frame).expect("built frames parse");
        let new = c.addr_like(a4, a6);
        let mut f = frame.clone();
        let actions = ActionSet { dst_port: Some(port), dst_addr: Some(new), ..Default::default() };
        apply_forward(&mut f, &p, &actions);
        let (old_port, old_addr) = (c.dst_port(), c.dst_addr());
        let back = ActionSet { dst_port: Some(old_port), dst_addr: Some(old_addr), ..Default::default() };
        apply_forward(&mut f, &p, &back);
        prop_assert_eq!(f, frame);
    }

    #[test]
    fn reverse_rewrite_turns_the_priority_endpoints_reply_into_the_original(
        c in case(),
        p_port in any::<u16>(),
        a4 in any::<[u8; 4]>(),
        a6 in any::<[u8; 16]>(),
    ) {
        // `c` is a reply as the client must see it: from S:sport. The
        // priority endpoint P:p_port actually sends `wire`.
        prop_assume!(!c.fragmented());
        prop_assume!(!(c.udp_zero() && c.v6()));
        let p_addr = c.addr_like(a4, a6);
        let s_port = match &c.spec.l4 {
            testutil::L4::Tcp(t) => t.sport,
            testutil::L4::Udp(u) => u.sport,
            testutil::L4::Other(_) => 0,
        };
        let s_addr = c.src_addr();
        prop_assume!(p_addr != s_addr && p_port != s_port);
        let mut wire = c.clone();
        wire.set_addr(false, p_addr);
        wire.set_src_port(p_port);
        let (mut f, _) = wire.build();
        let p = parse(&f).expect("built frames parse");
        let rr = ReverseRewrite {
            src_port: Some(PortRewrite { from: p_port, to: s_port }),
            src_addr: Some(AddrRewrite { from: p_addr, to: s_addr }),
            mss_clamp: None,
        };
        let r = apply_reverse(&mut f, &p, &rr);
        let want = if c.udp_zero() { Outcome::RewrittenNoChecksum } else { Outcome::Rewritten };
        prop_assert_eq!(r.get(Action::SrcAddr), want);
        prop_assert_eq!(r.get(Action::SrcPort), want);
        prop_assert_eq!(f, c.build().0);
    }

    #[test]
    fn reply_direction_finds_the_flow_and_gets_the_inverse_rewrite(
        c in case(),
        p_port in any::<u16>(),
        a4 in any::<[u8; 4]>(),
        a6 in any::<[u8; 16]>(),
    ) {
        // Forward: client C:cport -> S:sport, rewritten to P:p_port.
        prop_assume!(!c.fragmented());
        prop_assume!(!(c.udp_zero() && c.v6()));
        let p_addr = c.addr_like(a4, a6);
        prop_assume!(p_addr != c.dst_addr() && p_port != c.dst_port());
        prop_assume!(p_addr != c.src_addr());
        let (mut fwd, _) = c.build();
        let pf = parse(&fwd).expect("parse");
        let key = pf.flow_key(&fwd, Direction::Upstream).expect("key");
        let actions = ActionSet { dst_port: Some(p_port), dst_addr: Some(p_addr), ..Default::default() };
        let rr = ReverseRewrite::for_forward(&key, &actions);
        let mut table: FlowTable = FlowTable::new(FlowTableConfig { capacity: 8, ..Default::default() }).expect("table");
        let d = FlowDecision::new(&actions, 0, false, crate::flow::NO_METER, Default::default());
        table.insert(key, rr, actions, d, 0, 0).expect("insert");
        apply_forward(&mut fwd, &pf, &actions);

        // The endpoint's reply: P:p_port -> C:cport, on the other port.
        let mut reply = c.clone();
        let (c_addr, s_addr) = (c.src_addr(), c.dst_addr());
        let (c_port, s_port) = match &c.spec.l4 {
            testutil::L4::Tcp(t) => (t.sport, t.dport),
            testutil::L4::Udp(u) => (u.sport, u.dport),
            testutil::L4::Other(_) => (0, 0),
        };
        reply.set_addr(false, p_addr);
        reply.set_addr(true, c_addr);
        reply.set_src_port(p_port);
        reply.set_dst_port(c_port);
        let (mut wire, _) = reply.build();
        let pr = parse(&wire).expect("parse");
        let rkey = pr.flow_key(&wire, Direction::Downstream).expect("key");
        let hit = table.lookup(&rkey, pr.tcp_flags(), 1).expect("reply finds the flow");
        prop_assert_eq!(hit.side, Side::Reply);
        apply_reverse(&mut wire, &pr, hit.reverse);

        // What the client must see: a reply from S:s_port.
        let mut seen = reply.clone();
        seen.set_addr(false, s_addr);
        seen.set_src_port(s_port);
        prop_assert_eq!(wire, seen.build().0);

        // And the forward direction still finds it as Forward.
        let hit = table.lookup(&key, 0, 2).expect("forward finds the flow");
        prop_assert_eq!(hit.side, Side::Forward);
    }
}

/// Runs every action, forward and reverse, on `buf` with `p`; the point is
/// only that nothing panics.
fn hammer(buf: &mut [u8], p: &Parsed) {
    for addr in [
        IpAddr::from([192, 0, 2, 9]),
        IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 9]),
    ] {
        let a = ActionSet {
            dscp: Dscp::new(46),
            dst_port: Some(8080),
            dst_addr: Some(addr),
            mss_clamp: Some(536),
        };
        let _ = apply_forward(buf, p, &a);
        let rr = ReverseRewrite {
            src_port: Some(PortRewrite { from: 8080, to: 80 }),
            src_addr: Some(AddrRewrite {
                from: addr,
                to: addr,
            }),
            mss_clamp: Some(536),
        };
        let _ = apply_reverse(buf, p, &rr);
        let _ = set_src_addr(buf, p, addr);
        let _ = set_src_port(buf, p, 1);
    }
    let _ = p.flow_key(buf, Direction::Downstream);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn arbitrary_bytes_never_panic(mut bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(p) = parse(&bytes) {
            hammer(&mut bytes, &p);
        }
    }

    #[test]
    fn arbitrary_bytes_after_an_ethernet_ip_prefix_never_panic(
        ethertype in prop_oneof![Just(0x0800u16), Just(0x86dd), Just(0x8100), Just(0x88a8)],
        version in prop_oneof![Just(0x45u8), Just(0x4f), Just(0x60), any::<u8>()],
        proto in prop_oneof![Just(6u8), Just(17), Just(44), Just(51), Just(0), Just(43), any::<u8>()],
        rest in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        // Random bytes rarely get past the EtherType; these do, and reach the
        // IP, extension-header and L4 code with garbage.
        let mut f = vec![0u8; 12];
        f.extend(ethertype.to_be_bytes());
        f.push(version);
        f.extend(&rest);
        if let Some(b) = f.get_mut(14 + 6) {
            *b = proto; // IPv6 next header
        }
        if let Some(b) = f.get_mut(14 + 9) {
            *b = proto; // IPv4 protocol
        }
        if let Ok(p) = parse(&f) {
            hammer(&mut f, &p);
        }
    }

    #[test]
    fn mutated_and_truncated_frames_never_panic(
        c in case(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let (mut f, _) = c.build();
        for (at, x) in &flips {
            let i = at.index(f.len());
            f[i] ^= x;
        }
        let full = f.clone();
        if let Ok(p) = parse(&f) {
            hammer(&mut f, &p);
            // A `Parsed` applied to a shorter buffer than it came from.
            let n = cut.index(full.len() + 1);
            let mut short = full[..n].to_vec();
            hammer(&mut short, &p);
        }
        let n = cut.index(full.len() + 1);
        let mut short = full[..n].to_vec();
        if let Ok(p) = parse(&short) {
            hammer(&mut short, &p);
        }
    }

    #[test]
    fn the_common_case_path_agrees_with_the_general_parser(
        c in case(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        cut in any::<prop::sample::Index>(),
        noise in prop::collection::vec(any::<u8>(), 40..80),
        header in prop::sample::select(vec![
            [0x08, 0x00, 0x45, 0x00],
            [0x08, 0x00, 0x45, 0xb8],
            [0x08, 0x00, 0x46, 0x00],
            [0x08, 0x00, 0x55, 0x00],
            [0x81, 0x00, 0x45, 0x00],
            [0x86, 0xdd, 0x45, 0x00],
        ]),
    ) {
        // Built frames (most of them untagged IPv4 with TCP or UDP), with
        // a few bytes flipped and cut short; and noise behind an IPv4-like
        // prefix, so that every check of the fast path is met or missed.
        let (mut f, _) = c.build();
        for (at, x) in &flips {
            let i = at.index(f.len());
            f[i] ^= x;
        }
        let n = cut.index(f.len() + 1);
        let mut g = vec![0u8; 12];
        g.extend(header);
        g.extend(&noise);
        for frame in [&f[..], &f[..n], &g[..]] {
            if let Some(p) = parse::parse_common(frame) {
                prop_assert_eq!(Ok(p), parse::parse_any(frame));
            }
            prop_assert_eq!(parse(frame), parse::parse_any(frame));
        }
    }
}

#[test]
fn the_common_case_path_takes_plain_tcp_and_udp_over_ipv4() {
    let mut first = Spec::udp4(false, 18);
    if let Ip::V4(v) = &mut first.ip {
        v.frag = Frag::First;
    }
    for spec in [
        Spec::tcp4(TCP_SYN, testutil::mss_opt(1460), 0),
        Spec::udp4(true, 20),
        first,
    ] {
        let (f, _) = spec.build();
        assert_eq!(parse::parse_common(&f).map(Ok), Some(parse::parse_any(&f)));
    }
    // Options, a tag, IPv6 or a frame below 54 bytes: the general path.
    let mut opts = Spec::tcp4(0, vec![], 0);
    if let Ip::V4(v) = &mut opts.ip {
        v.options = vec![1, 1, 1, 0];
    }
    let mut tagged = Spec::tcp4(0, vec![], 0);
    tagged.vlans = vec![(0x8100, 5)];
    for spec in [opts, tagged, Spec::tcp6(0, vec![], 0), Spec::udp4(false, 0)] {
        assert_eq!(parse::parse_common(&spec.build().0), None);
    }
}
