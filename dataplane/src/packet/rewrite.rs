//! The rewrite actions, each with its incremental checksum update, and the
//! per-packet entry points [`apply_forward`] / [`apply_reverse`].
//!
//! Every action returns an [`Outcome`]: what it did, or why it did nothing.
//! An action either writes all of its fields and checksums or none of them;
//! it never leaves a packet half rewritten.
//!
//! # Fragments
//! Only the first fragment of a datagram carries the L4 header (ports, TCP
//! options and the L4 checksum, which covers the whole reassembled
//! datagram). The decisions:
//! - **DSCP** is rewritten on every fragment: it is an IP-header field and
//!   every fragment has its own (IPv4: its own header checksum). Fragments
//!   with different DSCP still reassemble.
//! - **Port rewrite** and **MSS clamp** act on the first fragment and skip
//!   the others with [`Outcome::NonFirstFragment`]. That is complete, not a
//!   compromise: the fields and the checksum that covers them are all in the
//!   first fragment, and the incremental update needs no other byte.
//! - **Address rewrite** skips *every* fragment, the first included, with
//!   [`Outcome::Fragmented`]. Reassembly keys on (src, dst, protocol, ID), so
//!   all fragments of a datagram must carry the same addresses: rewriting
//!   some of them strands both halves (each host waits for fragments that
//!   went to the other and drops the datagram on timeout). The non-first
//!   fragments have no ports, so a per-flow (5-tuple) decision cannot be
//!   found for them; only skipping all of them guarantees "all or none"
//!   whatever the classifier does. The datagram is delivered unmodified to
//!   its original destination (best effort), which is the same treatment as
//!   traffic without a binding. (Rewriting a later fragment would be cheap,
//!   IPv4 header checksum only, since the L4 checksum lives in the first;
//!   the problem is purely consistency.) Fragmented TCP is rare (PMTUD sets
//!   DF); this mostly touches large UDP datagrams.
//!
//! # UDP checksum 0
//! Over IPv4 a UDP checksum of 0 means "none": port and address rewrites
//! keep it 0 ([`Outcome::RewrittenNoChecksum`]). A computed 0 is written as
//! 0xFFFF. Over IPv6 a zero UDP checksum is invalid (RFC 8200 section 8.1;
//! the RFC 6935 tunnel exception is not ours to guess), so those rewrites
//! skip with [`Outcome::UdpZeroChecksumV6`] and the packet goes unmodified
//! (the receiver will drop it either way).
//!
//! # IPsec and source routes
//! AH authenticates addresses, ports and payload: only DSCP (a mutable
//! field, excluded from the ICV) is rewritten under AH, the rest skip with
//! [`Outcome::IpsecAh`]. With an IPv4 LSRR/SSRR option or an IPv6 routing
//! header with segments left, the destination field is not the final
//! destination the pseudo-header uses, so addresses skip with
//! [`Outcome::SourceRouted`].
use std::net::IpAddr;

use super::checksum::{self, Delta};
use super::parse::{addr_bits, PROTO_TCP, PROTO_UDP};
use super::parse::{arr, rd16, FlowKey, Fragment, IpVersion, Parsed, L4, TCP_SYN};

/// A DiffServ code point, 0..=63. Validated at construction so the fast
/// path never masks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Dscp(u8);

impl Dscp {
    /// Expedited Forwarding (RFC 3246).
    pub const EF: Dscp = Dscp(46);

    /// `None` unless `v < 64`.
    pub const fn new(v: u8) -> Option<Dscp> {
        if v < 64 {
            Some(Dscp(v))
        } else {
            None
        }
    }

    pub const fn value(self) -> u8 {
        self.0
    }
}

/// The rewrites to apply to a flow's packets in its forward direction (the
/// direction of the packet that created the flow). A policy decision; all
/// values were validated when the policy was loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ActionSet {
    /// Replace the DSCP (the two ECN bits are kept).
    pub dscp: Option<Dscp>,
    /// Rewrite the TCP/UDP destination port to this one.
    pub dst_port: Option<u16>,
    /// Rewrite the destination address to this one (same family only).
    pub dst_addr: Option<IpAddr>,
    /// Lower the MSS option of SYN and SYN-ACK segments to this value (the
    /// config validates a sane floor). Also applied to the reply direction's
    /// SYN-ACK through [`ReverseRewrite::mss_clamp`].
    pub mss_clamp: Option<u16>,
}

/// A port rewrite guarded by the value it expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRewrite {
    pub from: u16,
    pub to: u16,
}

/// An address rewrite guarded by the value it expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrRewrite {
    pub from: IpAddr,
    pub to: IpAddr,
}

/// What the reply direction of a flow needs so that the client sees the
/// endpoint it addressed: the inverse of the forward rewrite, on the source
/// fields. Kept in the flow-table entry.
///
/// Example: the client C sent to S:80, the forward rewrite made it P:8080.
/// Replies arrive from P:8080; `src_addr` (P -> S) and `src_port` (8080 ->
/// 80) turn them back into replies from S:80.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReverseRewrite {
    pub src_port: Option<PortRewrite>,
    pub src_addr: Option<AddrRewrite>,
    /// Clamp the SYN-ACK's MSS as well (the server's advertisement).
    pub mss_clamp: Option<u16>,
}

impl ReverseRewrite {
    /// The reverse state of a flow whose forward packets (key `fwd`, before
    /// any rewrite) get `actions`. Rewrites that would not change the packet
    /// (same port, same address) or cannot apply (wrong family, not TCP/UDP)
    /// are left out, so a reply is only ever touched to undo a real change.
    pub fn for_forward(fwd: &FlowKey, actions: &ActionSet) -> ReverseRewrite {
        let l4 = fwd.proto == PROTO_TCP || fwd.proto == PROTO_UDP;
        let src_port = match actions.dst_port {
            Some(to) if l4 && to != fwd.dst_port => Some(PortRewrite {
                from: to,
                to: fwd.dst_port,
            }),
            _ => None,
        };
        let src_addr = actions.dst_addr.and_then(|new| {
            let (v, bits) = addr_bits(new);
            (l4 && v == fwd.version && bits != fwd.dst).then(|| AddrRewrite {
                from: new,
                to: fwd.dst_addr(),
            })
        });
        ReverseRewrite {
            src_port,
            src_addr,
            mss_clamp: actions.mss_clamp.filter(|_| fwd.proto == PROTO_TCP),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == ReverseRewrite::default()
    }
}

impl FlowKey {
    /// The key the replies of this flow carry once the forward rewrite
    /// described by `rr` is in place: endpoints swapped, direction flipped,
    /// and the replying endpoint is the rewritten one (`rr.*.from`).
    pub fn reply_key(&self, rr: &ReverseRewrite) -> FlowKey {
        let src = rr.src_addr.map_or(self.dst, |a| addr_bits(a.from).1);
        FlowKey {
            src,
            dst: self.src,
            src_port: rr.src_port.map_or(self.dst_port, |p| p.from),
            dst_port: self.src_port,
            vlan: self.vlan,
            proto: self.proto,
            version: self.version,
            direction: match self.direction {
                crate::stats::Direction::Upstream => crate::stats::Direction::Downstream,
                crate::stats::Direction::Downstream => crate::stats::Direction::Upstream,
            },
        }
    }
}

/// One rewrite action, as a counter row index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Action {
    Dscp,
    DstPort,
    DstAddr,
    MssClamp,
    SrcPort,
    SrcAddr,
}

impl Action {
    pub const COUNT: usize = 6;
    pub const ALL: [Action; Action::COUNT] = [
        Action::Dscp,
        Action::DstPort,
        Action::DstAddr,
        Action::MssClamp,
        Action::SrcPort,
        Action::SrcAddr,
    ];

    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Action::Dscp => "dscp",
            Action::DstPort => "dst_port",
            Action::DstAddr => "dst_addr",
            Action::MssClamp => "mss_clamp",
            Action::SrcPort => "src_port",
            Action::SrcAddr => "src_addr",
        }
    }
}

/// What one action did to one packet, or why it did nothing. `#[repr(u8)]`
/// so that `counters[action.index()][outcome.index()]` counts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Outcome {
    /// The action was not in the set.
    #[default]
    NotRequested,
    /// Field and every checksum covering it rewritten.
    Rewritten,
    /// UDP over IPv4 without checksum (0): field rewritten, L4 checksum kept
    /// 0 (the IPv4 header checksum, if covered, was updated).
    RewrittenNoChecksum,
    /// The field already held the new value; nothing written.
    Unchanged,
    /// MSS clamp: the MSS is already at or below the limit (never raised).
    AtOrBelowLimit,
    /// Port or address rewrite on a packet that is neither TCP nor UDP.
    NotTcpUdp,
    /// MSS clamp on a packet that is not TCP.
    NotTcp,
    /// Port rewrite or MSS clamp on a non-first fragment (no L4 header).
    NonFirstFragment,
    /// Address rewrite on any fragment (see the module doc).
    Fragmented,
    /// Address rewrite to an address of the other IP family.
    FamilyMismatch,
    /// UDP over IPv6 with checksum 0 (invalid); left untouched.
    UdpZeroChecksumV6,
    /// An AH header authenticates the field.
    IpsecAh,
    /// A source route makes the destination field not final.
    SourceRouted,
    /// MSS clamp on a TCP segment without SYN.
    NotSyn,
    /// MSS clamp on a SYN without any TCP option.
    NoTcpOptions,
    /// MSS clamp on a SYN whose options have no MSS.
    NoMssOption,
    /// MSS clamp: an option length runs past the header, is below 2, or the
    /// MSS option is not 4 bytes long.
    BadTcpOptions,
    /// Reverse rewrite: the field does not hold the value the flow expects.
    Mismatch,
    /// The buffer is shorter than the headers the `Parsed` describes (it
    /// was parsed from another buffer).
    Truncated,
}

impl Outcome {
    pub const COUNT: usize = 19;
    pub const ALL: [Outcome; Outcome::COUNT] = [
        Outcome::NotRequested,
        Outcome::Rewritten,
        Outcome::RewrittenNoChecksum,
        Outcome::Unchanged,
        Outcome::AtOrBelowLimit,
        Outcome::NotTcpUdp,
        Outcome::NotTcp,
        Outcome::NonFirstFragment,
        Outcome::Fragmented,
        Outcome::FamilyMismatch,
        Outcome::UdpZeroChecksumV6,
        Outcome::IpsecAh,
        Outcome::SourceRouted,
        Outcome::NotSyn,
        Outcome::NoTcpOptions,
        Outcome::NoMssOption,
        Outcome::BadTcpOptions,
        Outcome::Mismatch,
        Outcome::Truncated,
    ];

    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }

    /// True if the packet was modified.
    #[inline]
    pub fn changed(self) -> bool {
        matches!(self, Outcome::Rewritten | Outcome::RewrittenNoChecksum)
    }

    pub fn name(self) -> &'static str {
        match self {
            Outcome::NotRequested => "not_requested",
            Outcome::Rewritten => "rewritten",
            Outcome::RewrittenNoChecksum => "rewritten_no_checksum",
            Outcome::Unchanged => "unchanged",
            Outcome::AtOrBelowLimit => "at_or_below_limit",
            Outcome::NotTcpUdp => "not_tcp_udp",
            Outcome::NotTcp => "not_tcp",
            Outcome::NonFirstFragment => "non_first_fragment",
            Outcome::Fragmented => "fragmented",
            Outcome::FamilyMismatch => "family_mismatch",
            Outcome::UdpZeroChecksumV6 => "udp_zero_checksum_v6",
            Outcome::IpsecAh => "ipsec_ah",
            Outcome::SourceRouted => "source_routed",
            Outcome::NotSyn => "not_syn",
            Outcome::NoTcpOptions => "no_tcp_options",
            Outcome::NoMssOption => "no_mss_option",
            Outcome::BadTcpOptions => "bad_tcp_options",
            Outcome::Mismatch => "mismatch",
            Outcome::Truncated => "truncated",
        }
    }
}

/// One packet's outcome per action (6 bytes). Actions not asked for are
/// [`Outcome::NotRequested`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyReport {
    outcomes: [Outcome; Action::COUNT],
}

impl ApplyReport {
    #[inline]
    pub fn get(&self, a: Action) -> Outcome {
        self.outcomes.get(a.index()).copied().unwrap_or_default()
    }

    #[inline]
    fn set(&mut self, a: Action, o: Outcome) {
        if let Some(slot) = self.outcomes.get_mut(a.index()) {
            *slot = o;
        }
    }

    /// True if any action modified the packet.
    #[inline]
    pub fn changed(&self) -> bool {
        self.outcomes.iter().any(|o| o.changed())
    }

    /// The requested actions and their outcomes, for counting:
    /// `for (a, o) in report.requested() { c[a.index()][o.index()] += 1 }`.
    #[inline]
    pub fn requested(&self) -> impl Iterator<Item = (Action, Outcome)> + '_ {
        Action::ALL
            .iter()
            .zip(self.outcomes.iter())
            .filter(|(_, o)| **o != Outcome::NotRequested)
            .map(|(a, o)| (*a, *o))
    }
}

/// Applies a flow's forward actions to one packet: DSCP, destination
/// address, destination port, MSS clamp, in that order, each with its own
/// incremental checksum update. Allocation-free; never panics.
///
/// Always inlined: the worker has one or two call sites, and inlining lets
/// the absent actions' checks fold away against the flow's `ActionSet`.
#[inline(always)]
pub fn apply_forward(buf: &mut [u8], p: &Parsed, a: &ActionSet) -> ApplyReport {
    let mut r = ApplyReport::default();
    if let Some(d) = a.dscp {
        r.set(Action::Dscp, set_dscp(buf, p, d));
    }
    if let Some(addr) = a.dst_addr {
        r.set(Action::DstAddr, rewrite_addr(buf, p, DST, None, addr));
    }
    if let Some(port) = a.dst_port {
        r.set(Action::DstPort, rewrite_port(buf, p, DST, None, port));
    }
    if let Some(mss) = a.mss_clamp {
        r.set(Action::MssClamp, clamp_mss(buf, p, mss));
    }
    r
}

/// Applies a flow's reverse state to one reply packet: source address and
/// source port back to what the client addressed (only if they hold the
/// expected rewritten values, else [`Outcome::Mismatch`]), and the MSS clamp
/// on the SYN-ACK. Allocation-free; never panics.
#[inline]
pub fn apply_reverse(buf: &mut [u8], p: &Parsed, rr: &ReverseRewrite) -> ApplyReport {
    let mut r = ApplyReport::default();
    if let Some(a) = rr.src_addr {
        r.set(
            Action::SrcAddr,
            rewrite_addr(buf, p, SRC, Some(a.from), a.to),
        );
    }
    if let Some(pr) = rr.src_port {
        r.set(
            Action::SrcPort,
            rewrite_port(buf, p, SRC, Some(pr.from), pr.to),
        );
    }
    if let Some(mss) = rr.mss_clamp {
        r.set(Action::MssClamp, clamp_mss(buf, p, mss));
    }
    r
}

/// Which endpoint a port/address rewrite touches.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Src,
    Dst,
}
const SRC: End = End::Src;
const DST: End = End::Dst;

/// `&mut` to `N` bytes at `off`, or `None` past the end (`off` is a frame
/// offset from a [`Parsed`], far from overflowing).
#[inline(always)]
fn window<const N: usize>(b: &mut [u8], off: usize) -> Option<&mut [u8; N]> {
    b.get_mut(off..off + N)?.try_into().ok()
}

/// Writes a big-endian u16 at `off` (callers read it first, so it is there).
#[inline(always)]
fn wr16(b: &mut [u8], off: usize, v: u16) {
    if let Some(w) = window::<2>(b, off) {
        *w = v.to_be_bytes();
    }
}

/// Sets the DSCP, keeping the ECN bits. IPv4: TOS byte and header checksum.
/// IPv6: the six traffic-class bits that straddle the first two bytes (no
/// header checksum, and the traffic class is not in the L4 pseudo-header).
/// Applies to every fragment.
#[inline]
pub fn set_dscp(buf: &mut [u8], p: &Parsed, dscp: Dscp) -> Outcome {
    let l3 = p.l3_offset();
    match p.version() {
        IpVersion::V4 => {
            let Some(h) = window::<12>(buf, l3) else {
                return Outcome::Truncated;
            };
            let tos = h[1];
            let new_tos = (dscp.value() << 2) | (tos & 0x03);
            if tos == new_tos {
                return Outcome::Unchanged;
            }
            // The word [version/IHL, TOS] changes in its low byte only.
            let d = Delta::default().low_byte(tos, new_tos);
            let c = checksum::update(u16::from_be_bytes([h[10], h[11]]), d);
            h[1] = new_tos;
            [h[10], h[11]] = c.to_be_bytes();
        }
        IpVersion::V6 => {
            let Some(h) = window::<2>(buf, l3) else {
                return Outcome::Truncated;
            };
            let w = u16::from_be_bytes(*h);
            let new = (w & !0x0fc0) | (u16::from(dscp.value()) << 6);
            if w == new {
                return Outcome::Unchanged;
            }
            *h = new.to_be_bytes();
        }
    }
    Outcome::Rewritten
}

/// Rewrites the TCP/UDP destination port (and the L4 checksum).
#[inline]
pub fn set_dst_port(buf: &mut [u8], p: &Parsed, port: u16) -> Outcome {
    rewrite_port(buf, p, DST, None, port)
}

/// Rewrites the TCP/UDP source port (and the L4 checksum).
#[inline]
pub fn set_src_port(buf: &mut [u8], p: &Parsed, port: u16) -> Outcome {
    rewrite_port(buf, p, SRC, None, port)
}

/// Rewrites the destination address (IPv4 header checksum, L4 checksum).
#[inline]
pub fn set_dst_addr(buf: &mut [u8], p: &Parsed, addr: IpAddr) -> Outcome {
    rewrite_addr(buf, p, DST, None, addr)
}

/// Rewrites the source address (IPv4 header checksum, L4 checksum).
#[inline]
pub fn set_src_addr(buf: &mut [u8], p: &Parsed, addr: IpAddr) -> Outcome {
    rewrite_addr(buf, p, SRC, None, addr)
}

#[inline(always)]
fn no_l4(p: &Parsed) -> Outcome {
    if p.fragment() == Fragment::NonFirst {
        Outcome::NonFirstFragment
    } else {
        Outcome::NotTcpUdp
    }
}

/// Offset of the L4 checksum from the L4 header, and whether it is UDP.
#[inline(always)]
fn l4_checksum_at(p: &Parsed) -> Option<(usize, bool)> {
    match p.l4() {
        L4::Tcp => Some((16, false)),
        L4::Udp => Some((6, true)),
        L4::None => None,
    }
}

#[inline(always)]
fn rewrite_port(buf: &mut [u8], p: &Parsed, end: End, expect: Option<u16>, new: u16) -> Outcome {
    let Some((csum_at, udp)) = l4_checksum_at(p) else {
        return no_l4(p);
    };
    if p.has_ah() {
        return Outcome::IpsecAh;
    }
    let l4 = p.l4_offset();
    let port_off = l4 + if end == SRC { 0 } else { 2 };
    let csum_off = l4 + csum_at;
    let (Some(old), Some(csum)) = (rd16(buf, port_off), rd16(buf, csum_off)) else {
        return Outcome::Truncated;
    };
    if expect.is_some_and(|e| e != old) {
        return Outcome::Mismatch;
    }
    if old == new {
        return Outcome::Unchanged;
    }
    let outcome = if udp && csum == 0 {
        if p.version() == IpVersion::V6 {
            return Outcome::UdpZeroChecksumV6;
        }
        Outcome::RewrittenNoChecksum
    } else {
        let d = Delta::default().word(old, new);
        let c = if udp {
            checksum::update_udp(csum, d)
        } else {
            checksum::update(csum, d)
        };
        wr16(buf, csum_off, c);
        Outcome::Rewritten
    };
    wr16(buf, port_off, new);
    outcome
}

#[inline(always)]
fn rewrite_addr(
    buf: &mut [u8],
    p: &Parsed,
    end: End,
    expect: Option<IpAddr>,
    new: IpAddr,
) -> Outcome {
    if p.fragment() != Fragment::None {
        return Outcome::Fragmented;
    }
    let Some((csum_at, udp)) = l4_checksum_at(p) else {
        return Outcome::NotTcpUdp;
    };
    if p.has_ah() {
        return Outcome::IpsecAh;
    }
    if p.is_source_routed() {
        return Outcome::SourceRouted;
    }
    let l3 = p.l3_offset();
    let csum_off = p.l4_offset() + csum_at;
    let Some(l4c) = rd16(buf, csum_off) else {
        return Outcome::Truncated;
    };
    let no_l4_csum = udp && l4c == 0;
    let d = match (p.version(), new) {
        (IpVersion::V4, IpAddr::V4(n)) => {
            let off = l3 + if end == SRC { 12 } else { 16 };
            let (Some(old), Some(ipc)) = (arr::<4>(buf, off), rd16(buf, l3 + 10)) else {
                return Outcome::Truncated;
            };
            let (old, n) = (u32::from_be_bytes(old), u32::from(n));
            if expect.is_some_and(|e| e != IpAddr::from(old.to_be_bytes())) {
                return Outcome::Mismatch;
            }
            if old == n {
                return Outcome::Unchanged;
            }
            let d = Delta::default().word32(old, n);
            if let Some(w) = window::<4>(buf, off) {
                *w = n.to_be_bytes();
            }
            wr16(buf, l3 + 10, checksum::update(ipc, d));
            d
        }
        (IpVersion::V6, IpAddr::V6(n)) => {
            let off = l3 + if end == SRC { 8 } else { 24 };
            let Some(old) = arr::<16>(buf, off) else {
                return Outcome::Truncated;
            };
            let (old, n) = (u128::from_be_bytes(old), u128::from(n));
            if expect.is_some_and(|e| e != IpAddr::from(old.to_be_bytes())) {
                return Outcome::Mismatch;
            }
            if old == n {
                return Outcome::Unchanged;
            }
            if no_l4_csum {
                return Outcome::UdpZeroChecksumV6;
            }
            if let Some(w) = window::<16>(buf, off) {
                *w = n.to_be_bytes();
            }
            Delta::default().word128(old, n)
        }
        _ => return Outcome::FamilyMismatch,
    };
    if no_l4_csum {
        return Outcome::RewrittenNoChecksum;
    }
    let c = if udp {
        checksum::update_udp(l4c, d)
    } else {
        checksum::update(l4c, d)
    };
    wr16(buf, csum_off, c);
    Outcome::Rewritten
}

/// Lowers the MSS option of a SYN or SYN-ACK to `limit` (never raises it),
/// walking the options with every length checked. Acts on the first
/// fragment, skips the others.
#[inline]
pub fn clamp_mss(buf: &mut [u8], p: &Parsed, limit: u16) -> Outcome {
    if p.fragment() == Fragment::NonFirst {
        return Outcome::NonFirstFragment;
    }
    if p.l4() != L4::Tcp {
        return Outcome::NotTcp;
    }
    if p.has_ah() {
        return Outcome::IpsecAh;
    }
    if p.tcp_flags() & TCP_SYN == 0 {
        return Outcome::NotSyn;
    }
    let hlen = p.tcp_header_len();
    if hlen <= 20 {
        return Outcome::NoTcpOptions;
    }
    let l4 = p.l4_offset();
    let Some(tcp) = buf.get_mut(l4..l4 + hlen) else {
        return Outcome::Truncated;
    };
    let mut i = 20;
    while let Some(&kind) = tcp.get(i) {
        match kind {
            0 => break,
            1 => i += 1,
            _ => {
                let len = match tcp.get(i + 1) {
                    Some(&l) if l >= 2 && i + usize::from(l) <= hlen => usize::from(l),
                    _ => return Outcome::BadTcpOptions,
                };
                if kind == 2 {
                    if len != 4 {
                        return Outcome::BadTcpOptions;
                    }
                    let (Some(mss), Some(csum)) = (rd16(tcp, i + 2), rd16(tcp, 16)) else {
                        return Outcome::Truncated;
                    };
                    if mss <= limit {
                        return Outcome::AtOrBelowLimit;
                    }
                    // The segment's words start at the TCP header, so an odd
                    // `i` puts the value across two words.
                    let d = if i % 2 == 0 {
                        Delta::default().word(mss, limit)
                    } else {
                        Delta::default().word_at_odd_offset(mss, limit)
                    };
                    wr16(tcp, 16, checksum::update(csum, d));
                    wr16(tcp, i + 2, limit);
                    return Outcome::Rewritten;
                }
                i += len;
            }
        }
    }
    Outcome::NoMssOption
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::parse::{parse, TCP_ACK, TCP_FIN};
    use crate::packet::testutil::{self, mss_opt, Ext, Frag, Ip, Spec};
    use crate::stats::Direction;

    fn v4() -> IpAddr {
        IpAddr::from([198, 51, 100, 7])
    }

    fn v6() -> IpAddr {
        "2001:db8::7".parse().unwrap()
    }

    /// Parses the built frame, runs `f` on it, returns the outcome and
    /// whether the bytes changed.
    fn run(spec: &Spec, f: impl FnOnce(&mut [u8], &Parsed) -> Outcome) -> (Outcome, bool) {
        let (frame, _) = spec.build();
        let p = parse(&frame).expect("parse");
        let mut b = frame.clone();
        let o = f(&mut b, &p);
        (o, b != frame)
    }

    fn with_frag(mut s: Spec, frag: Frag) -> Spec {
        match &mut s.ip {
            Ip::V4(v) => v.frag = frag,
            Ip::V6(v) => v.frag = frag,
        }
        s
    }

    const LATER: Frag = Frag::NonFirst {
        offset: 8,
        more: false,
    };

    /// (name, outcome got, outcome wanted, bytes changed) for one case of
    /// every outcome, so the test below can also check coverage.
    fn scenarios() -> Vec<(&'static str, Outcome, Outcome, bool)> {
        let syn = |opts: Vec<u8>| Spec::tcp4(TCP_SYN, opts, 0);
        let mut ah4 = Spec::tcp4(TCP_SYN, mss_opt(1460), 0);
        if let Ip::V4(v) = &mut ah4.ip {
            v.ah = true;
        }
        let mut routed6 = Spec::tcp6(0, vec![], 0);
        if let Ip::V6(v) = &mut routed6.ip {
            v.ext = vec![Ext::Routing {
                len: 2,
                segments_left: 1,
            }];
        }
        let mut lsrr4 = Spec::tcp4(0, vec![], 0);
        if let Ip::V4(v) = &mut lsrr4.ip {
            v.options = vec![1, 137, 7, 4, 192, 0, 2, 1];
        }
        let mut icmp = Spec::tcp4(0, vec![], 8);
        icmp.l4 = testutil::L4::Other(1);
        let mut esp6 = Spec::tcp6(0, vec![], 8);
        esp6.l4 = testutil::L4::Other(50);
        let ef = Dscp::EF;

        let mut out = vec![];
        let mut case = |name, spec: &Spec, want, f: &dyn Fn(&mut [u8], &Parsed) -> Outcome| {
            let (got, changed) = run(spec, f);
            out.push((name, got, want, changed));
        };
        use Outcome::*;
        case("dscp v4", &Spec::tcp4(0, vec![], 0), Rewritten, &|b, p| {
            set_dscp(b, p, ef)
        });
        case("dscp v6", &Spec::udp6(false, 0), Rewritten, &|b, p| {
            set_dscp(b, p, ef)
        });
        case(
            "dscp same",
            &Spec::tcp4(0, vec![], 0),
            Unchanged,
            &|b, p| set_dscp(b, p, Dscp::new(0).unwrap()),
        );
        case(
            "dscp later fragment",
            &with_frag(Spec::udp4(false, 16), LATER),
            Rewritten,
            &|b, p| set_dscp(b, p, ef),
        );
        case("dscp under AH", &ah4, Rewritten, &|b, p| set_dscp(b, p, ef));
        case("port tcp", &Spec::tcp4(0, vec![], 0), Rewritten, &|b, p| {
            set_dst_port(b, p, 8080)
        });
        case("port udp6", &Spec::udp6(false, 3), Rewritten, &|b, p| {
            set_dst_port(b, p, 8080)
        });
        case(
            "port first fragment",
            &with_frag(Spec::udp4(false, 16), Frag::First),
            Rewritten,
            &|b, p| set_dst_port(b, p, 8080),
        );
        case(
            "port udp4 no csum",
            &Spec::udp4(true, 3),
            RewrittenNoChecksum,
            &|b, p| set_dst_port(b, p, 8080),
        );
        case(
            "addr udp4 no csum",
            &Spec::udp4(true, 3),
            RewrittenNoChecksum,
            &|b, p| set_dst_addr(b, p, v4()),
        );
        case(
            "port same",
            &Spec::tcp4(0, vec![], 0),
            Unchanged,
            &|b, p| set_dst_port(b, p, 80),
        );
        case(
            "addr same",
            &Spec::tcp4(0, vec![], 0),
            Unchanged,
            &|b, p| set_dst_addr(b, p, IpAddr::from([192, 0, 2, 80])),
        );
        case("mss below", &syn(mss_opt(1400)), AtOrBelowLimit, &|b, p| {
            clamp_mss(b, p, 1460)
        });
        case("mss at", &syn(mss_opt(1460)), AtOrBelowLimit, &|b, p| {
            clamp_mss(b, p, 1460)
        });
        case("port icmp", &icmp, NotTcpUdp, &|b, p| set_dst_port(b, p, 1));
        case("addr icmp", &icmp, NotTcpUdp, &|b, p| {
            set_dst_addr(b, p, v4())
        });
        case("port esp6", &esp6, NotTcpUdp, &|b, p| set_src_port(b, p, 1));
        case("mss udp", &Spec::udp4(false, 0), NotTcp, &|b, p| {
            clamp_mss(b, p, 1200)
        });
        case(
            "port later fragment",
            &with_frag(Spec::tcp4(0, vec![], 16), LATER),
            NonFirstFragment,
            &|b, p| set_dst_port(b, p, 8080),
        );
        case(
            "mss later fragment",
            &with_frag(Spec::tcp6(TCP_SYN, vec![], 16), LATER),
            NonFirstFragment,
            &|b, p| clamp_mss(b, p, 1200),
        );
        case(
            "addr first fragment",
            &with_frag(Spec::tcp4(0, vec![], 16), Frag::First),
            Fragmented,
            &|b, p| set_dst_addr(b, p, v4()),
        );
        case(
            "addr later fragment",
            &with_frag(Spec::udp6(false, 16), LATER),
            Fragmented,
            &|b, p| set_dst_addr(b, p, v6()),
        );
        case(
            "addr v6 on v4",
            &Spec::tcp4(0, vec![], 0),
            FamilyMismatch,
            &|b, p| set_dst_addr(b, p, v6()),
        );
        case(
            "addr v4 on v6",
            &Spec::tcp6(0, vec![], 0),
            FamilyMismatch,
            &|b, p| set_src_addr(b, p, v4()),
        );
        case(
            "port udp6 zero",
            &Spec::udp6(true, 0),
            UdpZeroChecksumV6,
            &|b, p| set_dst_port(b, p, 1),
        );
        case(
            "addr udp6 zero",
            &Spec::udp6(true, 0),
            UdpZeroChecksumV6,
            &|b, p| set_dst_addr(b, p, v6()),
        );
        case("port under AH", &ah4, IpsecAh, &|b, p| {
            set_dst_port(b, p, 8080)
        });
        case("addr under AH", &ah4, IpsecAh, &|b, p| {
            set_dst_addr(b, p, v4())
        });
        case("mss under AH", &ah4, IpsecAh, &|b, p| clamp_mss(b, p, 1200));
        case("addr routed v6", &routed6, SourceRouted, &|b, p| {
            set_dst_addr(b, p, v6())
        });
        case("addr ssrr v4", &lsrr4, SourceRouted, &|b, p| {
            set_dst_addr(b, p, v4())
        });
        case(
            "mss on ack",
            &Spec::tcp4(TCP_ACK, mss_opt(1460), 0),
            NotSyn,
            &|b, p| clamp_mss(b, p, 1200),
        );
        case("mss no options", &syn(vec![]), NoTcpOptions, &|b, p| {
            clamp_mss(b, p, 1200)
        });
        case(
            "mss no mss",
            &syn(vec![1, 1, 4, 2]),
            NoMssOption,
            &|b, p| clamp_mss(b, p, 1200),
        );
        case(
            "mss after eol",
            &syn(vec![0, 0, 0, 0, 2, 4, 5, 0xb4]),
            NoMssOption,
            &|b, p| clamp_mss(b, p, 1200),
        );
        case(
            "opt len 0",
            &syn(vec![3, 0, 0, 0]),
            BadTcpOptions,
            &|b, p| clamp_mss(b, p, 1200),
        );
        case(
            "opt len 1",
            &syn(vec![8, 1, 0, 0]),
            BadTcpOptions,
            &|b, p| clamp_mss(b, p, 1200),
        );
        case(
            "opt past end",
            &syn(vec![1, 8, 10, 0]),
            BadTcpOptions,
            &|b, p| clamp_mss(b, p, 1200),
        );
        case(
            "opt no length byte",
            &syn(vec![1, 1, 1, 3]),
            BadTcpOptions,
            &|b, p| clamp_mss(b, p, 1200),
        );
        case(
            "mss len 3",
            &syn(vec![2, 3, 5, 1]),
            BadTcpOptions,
            &|b, p| clamp_mss(b, p, 1200),
        );
        case(
            "reverse port mismatch",
            &Spec::tcp4(0, vec![], 0),
            Mismatch,
            &|b, p| rewrite_port(b, p, SRC, Some(8081), 80),
        );
        case(
            "reverse addr mismatch",
            &Spec::tcp6(0, vec![], 0),
            Mismatch,
            &|b, p| rewrite_addr(b, p, SRC, Some(v6()), v6()),
        );
        for cut in [10, 20, 30, 40, 50] {
            case(
                "truncated buffer",
                &Spec::tcp6(TCP_SYN, mss_opt(1460), 0),
                Truncated,
                &move |b, p| {
                    let b = &mut b[..cut];
                    match cut {
                        10 => set_dscp(b, p, ef),
                        20 => set_dst_addr(b, p, v6()),
                        30 => set_src_addr(b, p, v6()),
                        40 => set_dst_port(b, p, 1),
                        _ => clamp_mss(b, p, 1000),
                    }
                },
            );
        }
        case(
            "truncated v4 dscp",
            &Spec::tcp4(0, vec![], 0),
            Truncated,
            &|b, p| set_dscp(&mut b[..20], p, ef),
        );
        case(
            "truncated v4 addr",
            &Spec::tcp4(0, vec![], 0),
            Truncated,
            &|b, p| set_dst_addr(&mut b[..p.l3_offset() + 18], p, v4()),
        );
        out
    }

    #[test]
    fn every_action_reports_what_it_did_or_why_not() {
        for (name, got, want, changed) in scenarios() {
            assert_eq!(got, want, "{name}");
            assert_eq!(changed, want.changed(), "{name}: bytes changed = {changed}");
        }
    }

    #[test]
    fn every_outcome_has_a_test() {
        let seen: std::collections::HashSet<Outcome> =
            scenarios().iter().map(|(_, _, want, _)| *want).collect();
        for o in Outcome::ALL {
            if o != Outcome::NotRequested {
                assert!(seen.contains(&o), "no scenario produces {o:?}");
            }
        }
    }

    #[test]
    fn outcome_and_action_indices_and_names_form_counter_tables() {
        let mut names = std::collections::HashSet::new();
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(o.index(), i);
            assert!(names.insert(o.name()), "{o:?}");
        }
        let mut names = std::collections::HashSet::new();
        for (i, a) in Action::ALL.iter().enumerate() {
            assert_eq!(a.index(), i);
            assert!(names.insert(a.name()), "{a:?}");
        }
    }

    #[test]
    fn an_empty_action_set_touches_nothing_and_reports_nothing() {
        let (frame, _) = Spec::tcp4(TCP_SYN, mss_opt(1460), 0).build();
        let p = parse(&frame).unwrap();
        let mut b = frame.clone();
        let r = apply_forward(&mut b, &p, &ActionSet::default());
        assert_eq!(b, frame);
        assert!(!r.changed());
        assert_eq!(r.requested().count(), 0);
        let r = apply_reverse(&mut b, &p, &ReverseRewrite::default());
        assert_eq!(r, ApplyReport::default());
    }

    #[test]
    fn report_lists_requested_actions_for_counting() {
        let (frame, _) = Spec::tcp4(TCP_ACK, vec![], 0).build();
        let p = parse(&frame).unwrap();
        let mut b = frame;
        let a = ActionSet {
            dscp: Some(Dscp::EF),
            mss_clamp: Some(1200),
            ..Default::default()
        };
        let r = apply_forward(&mut b, &p, &a);
        let got: Vec<_> = r.requested().collect();
        assert_eq!(
            got,
            vec![
                (Action::Dscp, Outcome::Rewritten),
                (Action::MssClamp, Outcome::NotSyn)
            ]
        );
        assert!(r.changed());
    }

    #[test]
    fn dscp_keeps_ecn_and_the_ipv6_flow_label() {
        let mut s = Spec::tcp4(0, vec![], 0);
        if let Ip::V4(v) = &mut s.ip {
            v.tos = 0b0000_0011;
        }
        let (mut f, lay) = s.build();
        let p = parse(&f).unwrap();
        set_dscp(&mut f, &p, Dscp::EF);
        assert_eq!(f[lay.l3 + 1], 46 << 2 | 0b11);

        let mut s = Spec::tcp6(0, vec![], 0);
        if let Ip::V6(v) = &mut s.ip {
            v.tclass = 0b1111_1110;
            v.flow = 0xfffff;
        }
        let (mut f, lay) = s.build();
        let p = parse(&f).unwrap();
        set_dscp(&mut f, &p, Dscp::new(0).unwrap());
        let w = u32::from_be_bytes(f[lay.l3..lay.l3 + 4].try_into().unwrap());
        assert_eq!(w, 6 << 28 | 0b10 << 20 | 0xfffff);
    }

    #[test]
    fn dscp_values_above_63_are_rejected_at_construction() {
        assert_eq!(Dscp::new(63).map(Dscp::value), Some(63));
        assert_eq!(Dscp::new(64), None);
    }

    #[test]
    fn udp_checksum_that_computes_to_zero_is_written_as_ffff() {
        let spec = Spec::udp4(false, 6);
        let (frame, lay) = spec.build();
        let p = parse(&frame).unwrap();
        let hc = u16::from_be_bytes([frame[lay.l4 + 6], frame[lay.l4 + 7]]);
        // Solve ~(~hc + ~53 + new) == 0, i.e. ~hc + ~53 + new == 0xffff.
        let base = checksum::fold(u64::from(!hc) + u64::from(!53u16));
        let new = 0xffff - base;
        let mut b = frame.clone();
        assert_eq!(set_dst_port(&mut b, &p, new), Outcome::Rewritten);
        assert_eq!(&b[lay.l4 + 6..lay.l4 + 8], &[0xff, 0xff]);
        let mut want = spec.clone();
        if let testutil::L4::Udp(u) = &mut want.l4 {
            u.dport = new;
        }
        assert_eq!(b, want.build().0);
    }

    #[test]
    fn mss_at_an_odd_offset_is_clamped_with_a_correct_checksum() {
        let opts = vec![1, 2, 4, 0x05, 0xb4, 1, 1, 1];
        let (mut f, _) = Spec::tcp4(TCP_SYN | TCP_ACK, opts, 0).build();
        let p = parse(&f).unwrap();
        assert_eq!(clamp_mss(&mut f, &p, 1200), Outcome::Rewritten);
        let [a, b] = 1200u16.to_be_bytes();
        let want = Spec::tcp4(TCP_SYN | TCP_ACK, vec![1, 2, 4, a, b, 1, 1, 1], 0)
            .build()
            .0;
        assert_eq!(f, want);
    }

    #[test]
    fn mss_is_never_raised() {
        let (mut f, _) = Spec::tcp6(TCP_SYN, mss_opt(536), 0).build();
        let before = f.clone();
        let p = parse(&f).unwrap();
        assert_eq!(clamp_mss(&mut f, &p, 1400), Outcome::AtOrBelowLimit);
        assert_eq!(f, before);
    }

    #[test]
    fn syn_ack_of_the_reply_direction_is_clamped_too() {
        let (mut f, _) = Spec::tcp4(TCP_SYN | TCP_ACK, mss_opt(1460), 0).build();
        let p = parse(&f).unwrap();
        let rr = ReverseRewrite {
            mss_clamp: Some(1360),
            ..Default::default()
        };
        let r = apply_reverse(&mut f, &p, &rr);
        assert_eq!(r.get(Action::MssClamp), Outcome::Rewritten);
        assert_eq!(f, Spec::tcp4(TCP_SYN | TCP_ACK, mss_opt(1360), 0).build().0);
    }

    fn key_of(spec: &Spec, dir: Direction) -> FlowKey {
        let (f, _) = spec.build();
        parse(&f).unwrap().flow_key(&f, dir).unwrap()
    }

    #[test]
    fn reverse_state_undoes_exactly_the_forward_rewrite() {
        // C:40000 -> S:80, rewritten to P:8080.
        let fwd = key_of(&Spec::tcp4(TCP_SYN, vec![], 0), Direction::Upstream);
        let actions = ActionSet {
            dst_port: Some(8080),
            dst_addr: Some(v4()),
            mss_clamp: Some(1400),
            dscp: Some(Dscp::EF),
        };
        let rr = ReverseRewrite::for_forward(&fwd, &actions);
        assert_eq!(rr.src_port, Some(PortRewrite { from: 8080, to: 80 }));
        assert_eq!(
            rr.src_addr,
            Some(AddrRewrite {
                from: v4(),
                to: IpAddr::from([192, 0, 2, 80])
            })
        );
        assert_eq!(rr.mss_clamp, Some(1400));
        let reply = fwd.reply_key(&rr);
        assert_eq!((reply.src_addr(), reply.src_port), (v4(), 8080));
        assert_eq!((reply.dst_addr(), reply.dst_port), (fwd.src_addr(), 40000));
        assert_eq!(reply.direction, Direction::Downstream);
        assert_eq!(
            reply.reply_key(&ReverseRewrite::default()).direction,
            Direction::Upstream
        );
    }

    #[test]
    fn reverse_state_leaves_out_what_the_forward_rewrite_cannot_change() {
        let fwd = key_of(&Spec::udp4(false, 0), Direction::Upstream);
        // Same port, other family, MSS on UDP: nothing to undo.
        let actions = ActionSet {
            dst_port: Some(53),
            dst_addr: Some(v6()),
            mss_clamp: Some(1200),
            dscp: None,
        };
        let rr = ReverseRewrite::for_forward(&fwd, &actions);
        assert!(rr.is_empty());
        assert_eq!(fwd.reply_key(&rr).src_port, 53);
    }

    #[test]
    fn address_rewrite_updates_both_ipv4_checksums() {
        for spec in [Spec::tcp4(0, vec![], 9), Spec::udp4(false, 9)] {
            let (mut f, _) = spec.build();
            let p = parse(&f).unwrap();
            assert_eq!(set_dst_addr(&mut f, &p, v4()), Outcome::Rewritten);
            let mut want = spec.clone();
            if let Ip::V4(v) = &mut want.ip {
                v.dst = [198, 51, 100, 7];
            }
            assert_eq!(f, want.build().0);
        }
    }

    #[test]
    fn fin_and_rst_segments_are_rewritten_like_any_other() {
        for flags in [TCP_FIN | TCP_ACK, crate::packet::TCP_RST] {
            let (mut f, _) = Spec::tcp4(flags, vec![], 0).build();
            let p = parse(&f).unwrap();
            assert_eq!(set_dst_port(&mut f, &p, 8080), Outcome::Rewritten);
        }
    }
}
