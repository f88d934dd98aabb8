//! The header parser: Ethernet (0-2 VLAN tags), IPv4 (with options) or IPv6
//! (with its extension-header chain), then TCP or UDP.
//!
//! It reads only through `get()` (and constant indices into a fixed-size
//! array `get()` returned, which the compiler checks), never indexes a
//! slice, never allocates and never copies the packet; the result is a
//! 16-byte [`Parsed`] of offsets and a few header fields. Every malformed
//! input is an [`Err`] naming what was wrong, usable as a counter index.
//!
//! The frame may hold fewer bytes than the IP length says: the worker hands
//! over the first segment of a possibly chained mbuf, and only the headers
//! must be in it. Headers must lie inside both the frame and the IP datagram.
use std::net::IpAddr;
use std::num::NonZeroU64;

use crate::stats::Direction;

// Ethernet.
const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const TPID_8021Q: u16 = 0x8100;
const TPID_8021AD: u16 = 0x88a8;
const TPID_QINQ_LEGACY: u16 = 0x9100;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;

// IP protocol / IPv6 next-header numbers.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
const PROTO_HOPOPTS: u8 = 0;
const PROTO_ROUTING: u8 = 43;
const PROTO_FRAGMENT: u8 = 44;
const PROTO_AH: u8 = 51;
const PROTO_DSTOPTS: u8 = 60;
const PROTO_MOBILITY: u8 = 135;
const PROTO_HIP: u8 = 139;
const PROTO_SHIM6: u8 = 140;

/// At most this many IPv6 extension headers (AH included) are walked; a
/// longer chain is [`ParseError::TooManyExtHeaders`]. Real traffic carries
/// one or two; the bound keeps the worst case per packet fixed.
pub const MAX_EXT_HEADERS: usize = 8;

// TCP flags (byte 13 of the TCP header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

// The layout of `Parsed::at` (where things are in the frame).
const AT_L4_OFF: u32 = 0; // 16 bits
const AT_IP_END: u32 = 16; // 17 bits: at most 22 + 40 + 65535
const AT_L3_OFF: u32 = 33; // 5 bits: 14, 18 or 22
const AT_VLAN: u32 = 38; // 26 bits: the VLAN key, see `Parsed::vlan_key`
const IP_END_MASK: u64 = (1 << 17) - 1;
const L3_OFF_MASK: u64 = (1 << 5) - 1;

// The layout of `Parsed::info` (header fields). The version nibble (4 or 6)
// is never 0, so neither is the word: `Result<Parsed, ParseError>` keeps
// its error in that niche and stays 16 bytes, returned in two registers.
const IN_SRC_PORT: u32 = 0; // 16 bits
const IN_DST_PORT: u32 = 16; // 16 bits
const IN_PROTO: u32 = 32; // 8 bits
const IN_TCP_FLAGS: u32 = 40; // 8 bits
const IN_TCP_DOFF: u32 = 48; // 4 bits: TCP header length / 4
const IN_L4: u32 = 52; // 2 bits: `L4`
const IN_FRAG: u32 = 54; // 2 bits: `Fragment`
const IN_VERSION: u32 = 56; // 4 bits: 4 or 6
const F_AH: u64 = 1 << 60;
const F_SOURCE_ROUTED: u64 = 1 << 61;

/// Why a frame could not be parsed. `#[repr(u8)]` so that it indexes a
/// counter array of [`ParseError::COUNT`] slots; [`ParseError::name`] is the
/// counter's name. The worker forwards such frames untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ParseError {
    /// The frame ends inside the Ethernet header or a VLAN tag.
    TruncatedEthernet,
    /// A VLAN TPID where none is accepted: an inner tag other than 802.1Q,
    /// or a third tag.
    UnsupportedVlanStack,
    /// Neither IPv4 nor IPv6 (ARP, LLDP, MPLS, PPPoE, ...). Not an error on
    /// the wire, just nothing for the packet path to do.
    NotIp,
    /// The frame ends inside the fixed IPv4/IPv6 header or the IPv4 options.
    TruncatedIp,
    /// The IP version nibble disagrees with the EtherType.
    BadIpVersion,
    /// IPv4 IHL below 5.
    BadIpHeaderLen,
    /// IPv4 total length shorter than its own header.
    BadIpLength,
    /// An IPv6 extension header (or IPv4 AH) runs past the frame or the
    /// datagram.
    TruncatedExtHeader,
    /// More than [`MAX_EXT_HEADERS`] IPv6 extension headers.
    TooManyExtHeaders,
    /// The TCP or UDP header runs past the frame or the datagram (this
    /// includes "tiny" first fragments, RFC 1858).
    TruncatedL4,
    /// TCP data offset below 5.
    BadTcpHeaderLen,
}

impl ParseError {
    pub const COUNT: usize = 11;
    pub const ALL: [ParseError; ParseError::COUNT] = [
        ParseError::TruncatedEthernet,
        ParseError::UnsupportedVlanStack,
        ParseError::NotIp,
        ParseError::TruncatedIp,
        ParseError::BadIpVersion,
        ParseError::BadIpHeaderLen,
        ParseError::BadIpLength,
        ParseError::TruncatedExtHeader,
        ParseError::TooManyExtHeaders,
        ParseError::TruncatedL4,
        ParseError::BadTcpHeaderLen,
    ];

    /// The counter index.
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }

    /// The counter name (snake_case, stable).
    pub fn name(self) -> &'static str {
        match self {
            ParseError::TruncatedEthernet => "truncated_ethernet",
            ParseError::UnsupportedVlanStack => "unsupported_vlan_stack",
            ParseError::NotIp => "not_ip",
            ParseError::TruncatedIp => "truncated_ip",
            ParseError::BadIpVersion => "bad_ip_version",
            ParseError::BadIpHeaderLen => "bad_ip_header_len",
            ParseError::BadIpLength => "bad_ip_length",
            ParseError::TruncatedExtHeader => "truncated_ext_header",
            ParseError::TooManyExtHeaders => "too_many_ext_headers",
            ParseError::TruncatedL4 => "truncated_l4",
            ParseError::BadTcpHeaderLen => "bad_tcp_header_len",
        }
    }
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::error::Error for ParseError {}

/// IP version of a parsed packet or a flow key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum IpVersion {
    V4 = 4,
    V6 = 6,
}

/// The transport header the parser found and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum L4 {
    /// No TCP/UDP header here: another protocol (ICMP, GRE, ...), ESP or
    /// "no next header", or a non-first fragment (see [`Parsed::proto`]).
    None,
    Tcp,
    Udp,
}

/// Where a packet sits in a fragmented datagram.
///
/// What each action does with fragments (see `rewrite.rs` for the reasons):
/// - DSCP: every fragment, first or not (an IP-header field).
/// - port rewrite and MSS clamp: the first fragment (or an unfragmented
///   packet) only; a non-first fragment has no L4 header and is skipped
///   with `NonFirstFragment`. Rewriting the first fragment alone is complete:
///   it holds the ports, the options and the L4 checksum.
/// - address rewrite: never on any fragment (`Fragmented`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Fragment {
    /// A whole datagram (IPv4 MF=0 and offset 0; an IPv6 "atomic fragment"
    /// with offset 0 and M=0 is also whole, RFC 6946).
    None,
    /// Offset 0, more fragments follow: carries the L4 header.
    First,
    /// Offset > 0: carries no L4 header.
    NonFirst,
}

/// The result of [`parse`]: offsets into the frame plus the header fields the
/// fast path needs. `Copy`, 16 bytes, built without copying the packet. Only
/// [`parse`] builds one, so its offsets always describe headers that were
/// inside the parsed frame; the actions still re-check every access, so
/// applying a `Parsed` to another (shorter) buffer cannot panic either.
///
/// The fields are packed into two words behind the accessors. As a struct
/// of byte and u16 fields it was assembled on the stack with narrow stores
/// and copied out with wide loads: a store-forwarding stall on every packet
/// (a third of the stateless rule path's own time in `perf`). Two words,
/// and a `Result` of the same size, stay in registers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// Offsets and VLANs; see the `AT_*` constants.
    at: u64,
    /// Protocol fields and flags; see the `IN_*` constants.
    info: NonZeroU64,
}

impl Parsed {
    /// Builds one from its two words; `info` holds the version nibble, so
    /// it is not 0 (the fallback is unreachable and folds away).
    #[inline(always)]
    fn from_words(at: u64, info: u64) -> Parsed {
        Parsed {
            at,
            info: NonZeroU64::new(info).unwrap_or(NonZeroU64::MIN),
        }
    }

    #[inline(always)]
    fn info(&self) -> u64 {
        self.info.get()
    }

    /// Offset of the IP header.
    #[inline]
    pub fn l3_offset(&self) -> usize {
        ((self.at >> AT_L3_OFF) & L3_OFF_MASK) as usize
    }
    /// Offset of the L4 header (the byte after the last IP extension header;
    /// for a non-first fragment, where its payload starts).
    #[inline]
    pub fn l4_offset(&self) -> usize {
        usize::from((self.at >> AT_L4_OFF) as u16)
    }
    /// Offset just past the IP datagram as its length field says. Bytes after
    /// it are Ethernet padding; it may exceed the frame's length (the rest is
    /// in further mbuf segments).
    #[inline]
    pub fn ip_end(&self) -> usize {
        ((self.at >> AT_IP_END) & IP_END_MASK) as usize
    }
    #[inline]
    pub fn version(&self) -> IpVersion {
        if (self.info() >> IN_VERSION) & 0x0f == IpVersion::V6 as u64 {
            IpVersion::V6
        } else {
            IpVersion::V4
        }
    }
    /// IPv4 protocol or the last IPv6 next-header value (after skipping the
    /// extension headers): 6 for TCP, 17 for UDP, 50 for ESP, ...
    #[inline]
    pub fn proto(&self) -> u8 {
        (self.info() >> IN_PROTO) as u8
    }
    #[inline]
    pub fn l4(&self) -> L4 {
        match (self.info() >> IN_L4) & 3 {
            x if x == L4::Tcp as u64 => L4::Tcp,
            x if x == L4::Udp as u64 => L4::Udp,
            _ => L4::None,
        }
    }
    #[inline]
    pub fn fragment(&self) -> Fragment {
        match (self.info() >> IN_FRAG) & 3 {
            x if x == Fragment::First as u64 => Fragment::First,
            x if x == Fragment::NonFirst as u64 => Fragment::NonFirst,
            _ => Fragment::None,
        }
    }
    /// Number of VLAN tags (0, 1 or 2).
    #[inline]
    pub fn vlan_count(&self) -> u8 {
        (self.vlan_key() >> 24) as u8
    }
    /// VLAN IDs (outer, inner); 0 where there is no tag.
    #[inline]
    pub fn vlan_ids(&self) -> [u16; 2] {
        let k = self.vlan_key();
        [((k >> 12) & 0x0fff) as u16, (k & 0x0fff) as u16]
    }
    /// The VLAN part of a flow key: `count << 24 | outer << 12 | inner`.
    #[inline]
    pub fn vlan_key(&self) -> u32 {
        (self.at >> AT_VLAN) as u32
    }
    /// TCP/UDP source port; 0 without an L4 header.
    #[inline]
    pub fn src_port(&self) -> u16 {
        (self.info() >> IN_SRC_PORT) as u16
    }
    /// TCP/UDP destination port; 0 without an L4 header.
    #[inline]
    pub fn dst_port(&self) -> u16 {
        (self.info() >> IN_DST_PORT) as u16
    }
    /// TCP flags byte ([`TCP_SYN`], ...); 0 unless TCP.
    #[inline]
    pub fn tcp_flags(&self) -> u8 {
        (self.info() >> IN_TCP_FLAGS) as u8
    }
    /// TCP header length in bytes, options included (20..=60); 0 unless TCP.
    #[inline]
    pub fn tcp_header_len(&self) -> usize {
        ((self.info() >> IN_TCP_DOFF) & 0x0f) as usize * 4
    }
    /// An IPsec AH header was skipped: it authenticates the addresses, the
    /// ports and the payload, so only DSCP may be rewritten.
    #[inline]
    pub fn has_ah(&self) -> bool {
        self.info() & F_AH != 0
    }
    /// An IPv4 LSRR/SSRR option, or an IPv6 routing header with segments
    /// left: the destination field is not the final destination, and the L4
    /// pseudo-header uses the final one, so addresses are not rewritten.
    #[inline]
    pub fn is_source_routed(&self) -> bool {
        self.info() & F_SOURCE_ROUTED != 0
    }

    /// The flow key of this packet, read from `buf` (the buffer it was parsed
    /// from) and tagged with the direction it travels. Non-TCP/UDP packets and
    /// non-first fragments get ports 0. `None` if `buf` is too short for the
    /// addresses (never for the buffer that was parsed).
    #[inline]
    pub fn flow_key(&self, buf: &[u8], direction: Direction) -> Option<FlowKey> {
        let l3 = self.l3_offset();
        let version = self.version();
        let (src, dst) = match version {
            IpVersion::V4 => {
                let a = arr::<8>(buf, l3 + 12)?;
                let w = u64::from_be_bytes(a);
                (u128::from((w >> 32) as u32), u128::from(w as u32))
            }
            IpVersion::V6 => (
                u128::from_be_bytes(arr::<16>(buf, l3 + 8)?),
                u128::from_be_bytes(arr::<16>(buf, l3 + 24)?),
            ),
        };
        Some(FlowKey {
            src,
            dst,
            src_port: self.src_port(),
            dst_port: self.dst_port(),
            vlan: self.vlan_key(),
            proto: self.proto(),
            version,
            direction,
        })
    }
}

impl std::fmt::Debug for Parsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parsed")
            .field("l3_off", &self.l3_offset())
            .field("l4_off", &self.l4_offset())
            .field("ip_end", &self.ip_end())
            .field("vlan_count", &self.vlan_count())
            .field("vlan_ids", &self.vlan_ids())
            .field("version", &self.version())
            .field("proto", &self.proto())
            .field("l4", &self.l4())
            .field("frag", &self.fragment())
            .field("src_port", &self.src_port())
            .field("dst_port", &self.dst_port())
            .field("tcp_flags", &self.tcp_flags())
            .field("tcp_hlen", &self.tcp_header_len())
            .field("ah", &self.has_ah())
            .field("source_routed", &self.is_source_routed())
            .finish()
    }
}

/// A flow's identity as seen on the wire in one direction: addresses, ports,
/// protocol, VLAN tags and the direction of travel. Both directions of one
/// connection have different keys; the flow table stores both.
///
/// Addresses are stored as their big-endian integer value (IPv4 in the low
/// 32 bits) so that comparing and hashing a key is a few word operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    pub src: u128,
    pub dst: u128,
    pub src_port: u16,
    pub dst_port: u16,
    /// `count << 24 | outer VID << 12 | inner VID`, see [`Parsed::vlan_key`].
    pub vlan: u32,
    pub proto: u8,
    pub version: IpVersion,
    pub direction: Direction,
}

impl FlowKey {
    /// A key from addresses of one family. `None` if they differ in family.
    pub fn new(
        src: (IpAddr, u16),
        dst: (IpAddr, u16),
        proto: u8,
        vlan: u32,
        direction: Direction,
    ) -> Option<FlowKey> {
        let (vs, s) = addr_bits(src.0);
        let (vd, d) = addr_bits(dst.0);
        (vs == vd).then_some(FlowKey {
            src: s,
            dst: d,
            src_port: src.1,
            dst_port: dst.1,
            vlan,
            proto,
            version: vs,
            direction,
        })
    }

    #[inline]
    pub fn src_addr(&self) -> IpAddr {
        bits_addr(self.version, self.src)
    }

    #[inline]
    pub fn dst_addr(&self) -> IpAddr {
        bits_addr(self.version, self.dst)
    }
}

/// An address as (family, big-endian integer value).
#[inline]
pub fn addr_bits(a: IpAddr) -> (IpVersion, u128) {
    match a {
        IpAddr::V4(a) => (IpVersion::V4, u128::from(u32::from(a))),
        IpAddr::V6(a) => (IpVersion::V6, u128::from(a)),
    }
}

/// The inverse of [`addr_bits`] (IPv4 takes the low 32 bits).
#[inline]
pub fn bits_addr(v: IpVersion, bits: u128) -> IpAddr {
    match v {
        IpVersion::V4 => IpAddr::V4((bits as u32).into()),
        IpVersion::V6 => IpAddr::V6(bits.into()),
    }
}

/// `N` bytes at `off`, or `None` past the end. Offsets are frame offsets
/// (below 2^17), so `off + N` cannot overflow.
#[inline(always)]
pub(crate) fn arr<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    b.get(off..off + N)?.try_into().ok()
}

/// Big-endian u16 at `off`.
#[inline(always)]
pub(crate) fn rd16(b: &[u8], off: usize) -> Option<u16> {
    arr::<2>(b, off).map(u16::from_be_bytes)
}

#[inline(always)]
fn byte(b: &[u8], off: usize) -> Option<u8> {
    b.get(off).copied()
}

/// Parses the headers of one Ethernet frame. Never panics, never reads past
/// `buf`, never allocates. See the module doc for what is accepted.
///
/// The common case (untagged IPv4 without options, TCP or UDP) is checked
/// first with a few word compares (`parse_common`); everything else, and
/// every error, goes through `parse_any`. Both are inlined into the
/// caller (the IPv4 path, tagged or not): the call and passing the result
/// through memory would cost as much as the parse. The IPv6 chain walk
/// stays a separate function.
#[inline(always)]
pub fn parse(buf: &[u8]) -> Result<Parsed, ParseError> {
    match parse_common(buf) {
        Some(p) => Ok(p),
        None => parse_any(buf),
    }
}

/// The common case in four branches instead of some fifteen: an untagged
/// IPv4 packet with a 20-byte header, not a later fragment, whose TCP or
/// UDP header lies inside both the frame and the datagram, in a frame of at
/// least 54 bytes (every frame of Ethernet's 60-byte minimum). `None` for
/// anything else. Where it returns a `Parsed`, [`parse_any`] returns the
/// same one (a proptest holds them to it).
#[inline(always)]
pub(super) fn parse_common(buf: &[u8]) -> Option<Parsed> {
    const L3: usize = ETH_HLEN;
    const L4_OFF: usize = ETH_HLEN + 20;
    let h: &[u8; L4_OFF + 20] = buf.get(..L4_OFF + 20)?.try_into().ok()?;
    // EtherType IPv4, then version 4 and IHL 5, in one compare.
    if u32::from_be_bytes([h[12], h[13], h[14], h[15]]) >> 8 != 0x0008_0045 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([h[L3 + 2], h[L3 + 3]]));
    let later_fragment = u16::from_be_bytes([h[L3 + 6], h[L3 + 7]]) & 0x1fff != 0;
    let first_fragment = h[L3 + 6] & 0x20 != 0;
    let proto = h[L3 + 9];
    // At most 14 + 65535: fits the 17 bits.
    let ip_end = L3 + total;
    let limit = ip_end.min(buf.len());
    let ports = u32::from_be_bytes([h[L4_OFF], h[L4_OFF + 1], h[L4_OFF + 2], h[L4_OFF + 3]]);
    let (src_port, dst_port) = ((ports >> 16) as u16, ports as u16);
    let l4 = match proto {
        PROTO_TCP => {
            let (doff, flags) = (h[L4_OFF + 12] >> 4, h[L4_OFF + 13]);
            let hlen = usize::from(doff) * 4;
            // `|`, not `||`: one branch.
            if later_fragment | (hlen < 20) | (L4_OFF + hlen > limit) {
                return None;
            }
            L4Info::new(L4::Tcp, src_port, dst_port, flags, doff)
        }
        PROTO_UDP => {
            if later_fragment | (L4_OFF + 8 > limit) {
                return None;
            }
            L4Info::new(L4::Udp, src_port, dst_port, 0, 0)
        }
        _ => return None,
    };
    let frag = if first_fragment {
        Fragment::First
    } else {
        Fragment::None
    };
    Some(Parsed::from_words(
        L2::UNTAGGED.at(ip_end) | L4_OFF as u64,
        ip_info(IpVersion::V4, proto, frag) | l4.0,
    ))
}

/// [`parse`] for any frame: every accepted header stack, and the reason
/// for each refusal.
#[inline(always)]
pub(super) fn parse_any(buf: &[u8]) -> Result<Parsed, ParseError> {
    let ethertype = rd16(buf, 12).ok_or(ParseError::TruncatedEthernet)?;
    if ethertype == ETHERTYPE_IPV4 {
        return parse_ipv4(buf, L2::UNTAGGED);
    }
    let l2 = if is_tpid(ethertype) {
        parse_vlans(buf)?
    } else {
        L2 {
            ethertype,
            ..L2::UNTAGGED
        }
    };
    match l2.ethertype {
        ETHERTYPE_IPV4 => parse_ipv4(buf, l2),
        ETHERTYPE_IPV6 => parse_ipv6(buf, l2.l3, l2.vlan),
        _ => Err(ParseError::NotIp),
    }
}

#[inline(always)]
fn is_tpid(t: u16) -> bool {
    matches!(t, TPID_8021Q | TPID_8021AD | TPID_QINQ_LEGACY)
}

/// What the Ethernet header and its tags say.
#[derive(Clone, Copy)]
struct L2 {
    l3: usize,
    ethertype: u16,
    /// The VLAN key (see [`Parsed::vlan_key`]).
    vlan: u32,
}

impl L2 {
    const UNTAGGED: L2 = L2 {
        l3: ETH_HLEN,
        ethertype: ETHERTYPE_IPV4,
        vlan: 0,
    };

    /// The `at` word of a [`Parsed`] without its L4 offset.
    #[inline(always)]
    fn at(self, ip_end: usize) -> u64 {
        (ip_end as u64) << AT_IP_END
            | (self.l3 as u64) << AT_L3_OFF
            | u64::from(self.vlan) << AT_VLAN
    }
}

/// One or two VLAN tags; the outer TPID was already checked.
#[inline]
fn parse_vlans(buf: &[u8]) -> Result<L2, ParseError> {
    use ParseError::*;

    let [t0, t1, e0, e1] = arr::<4>(buf, ETH_HLEN).ok_or(TruncatedEthernet)?;
    let outer = u32::from(u16::from_be_bytes([t0, t1]) & 0x0fff);
    let mut l2 = L2 {
        l3: ETH_HLEN + VLAN_HLEN,
        ethertype: u16::from_be_bytes([e0, e1]),
        vlan: 1 << 24 | outer << 12,
    };
    if l2.ethertype == TPID_8021Q {
        let [t0, t1, e0, e1] = arr::<4>(buf, l2.l3).ok_or(TruncatedEthernet)?;
        let inner = u32::from(u16::from_be_bytes([t0, t1]) & 0x0fff);
        l2.vlan = 2 << 24 | outer << 12 | inner;
        l2.ethertype = u16::from_be_bytes([e0, e1]);
        l2.l3 += VLAN_HLEN;
    }
    if is_tpid(l2.ethertype) {
        return Err(UnsupportedVlanStack);
    }
    Ok(l2)
}

/// The transport part of a [`Parsed`]: its `info` bits for the ports, the
/// TCP flags and data offset, and the [`L4`] kind. A word, so that it stays
/// in a register.
#[derive(Clone, Copy)]
struct L4Info(u64);

impl L4Info {
    #[inline(always)]
    fn new(l4: L4, src_port: u16, dst_port: u16, tcp_flags: u8, tcp_doff: u8) -> L4Info {
        L4Info(
            (l4 as u64) << IN_L4
                | u64::from(src_port) << IN_SRC_PORT
                | u64::from(dst_port) << IN_DST_PORT
                | u64::from(tcp_flags) << IN_TCP_FLAGS
                | u64::from(tcp_doff & 0x0f) << IN_TCP_DOFF,
        )
    }
}

const NO_L4: L4Info = L4Info((L4::None as u64) << IN_L4);

/// The `info` bits of the IP version, protocol and fragment position.
#[inline(always)]
fn ip_info(version: IpVersion, proto: u8, frag: Fragment) -> u64 {
    (version as u64) << IN_VERSION | u64::from(proto) << IN_PROTO | (frag as u64) << IN_FRAG
}

#[inline(always)]
fn parse_ipv4(buf: &[u8], l2: L2) -> Result<Parsed, ParseError> {
    use ParseError::*;

    let off = l2.l3;
    // One length check for the fixed header; the fields come from it.
    let [vihl, _tos, tl0, tl1, _id0, _id1, fr0, fr1, _ttl, proto, ..] =
        arr::<20>(buf, off).ok_or(TruncatedIp)?;
    if vihl >> 4 != 4 {
        return Err(BadIpVersion);
    }
    let ihl = usize::from(vihl & 0x0f) * 4;
    if ihl < 20 {
        return Err(BadIpHeaderLen);
    }
    let total = usize::from(u16::from_be_bytes([tl0, tl1]));
    if total < ihl {
        return Err(BadIpLength);
    }
    let hdr_end = off + ihl;
    if hdr_end > buf.len() {
        return Err(TruncatedIp);
    }
    // At most 22 + 65535: fits the 17 bits, and `hdr_end` (<= 82) the 16.
    let ip_end = off + total;
    let at = l2.at(ip_end);
    let mut flags = 0;
    if ihl > 20 && buf.get(off + 20..hdr_end).is_some_and(ipv4_source_routed) {
        flags |= F_SOURCE_ROUTED;
    }
    let frag = u16::from_be_bytes([fr0, fr1]);
    if frag & 0x1fff != 0 {
        // A later fragment: its payload is no header of ours.
        let info = ip_info(IpVersion::V4, proto, Fragment::NonFirst) | flags;
        return Ok(Parsed::from_words(at | hdr_end as u64, info));
    }
    let frag = if frag & 0x2000 != 0 {
        Fragment::First
    } else {
        Fragment::None
    };
    let limit = ip_end.min(buf.len());
    let mut l4_off = hdr_end;
    let mut proto = proto;
    if proto == PROTO_AH {
        let [next, len] = arr::<2>(buf, l4_off).ok_or(TruncatedExtHeader)?;
        // At most 82 + 1028: still fits the 16 bits.
        l4_off += (usize::from(len) + 2) * 4;
        if l4_off > limit {
            return Err(TruncatedExtHeader);
        }
        proto = next;
        flags |= F_AH;
    }
    let l4 = parse_l4(buf, l4_off, limit, proto)?;
    Ok(Parsed::from_words(
        at | l4_off as u64,
        ip_info(IpVersion::V4, proto, frag) | flags | l4.0,
    ))
}

/// True if the IPv4 options hold a loose or strict source route (131, 137).
/// Malformed options end the walk; they are the receiver's problem.
fn ipv4_source_routed(opts: &[u8]) -> bool {
    let mut i = 0;
    while let Some(&kind) = opts.get(i) {
        match kind {
            0 => return false,
            1 => i += 1,
            131 | 137 => return true,
            _ => match opts.get(i + 1) {
                Some(&len) if len >= 2 => i += usize::from(len),
                _ => return false,
            },
        }
    }
    false
}

/// The IPv6 header, its extension-header chain, then L4. Out of line: the
/// chain walk is a loop and would bloat every caller of [`parse`]. (Its
/// 16-byte result comes back in registers.)
#[inline(never)]
fn parse_ipv6(buf: &[u8], off: usize, vlan: u32) -> Result<Parsed, ParseError> {
    use ParseError::*;

    let l2 = L2 {
        l3: off,
        ethertype: ETHERTYPE_IPV6,
        vlan,
    };
    let [v, _, _, _, pl0, pl1, mut nh, _hop] = arr::<8>(buf, off).ok_or(TruncatedIp)?;
    if buf.len() < off + 40 {
        return Err(TruncatedIp);
    }
    if v >> 4 != 6 {
        return Err(BadIpVersion);
    }
    let ip_end = off + 40 + usize::from(u16::from_be_bytes([pl0, pl1]));
    let mut flags = 0;
    let mut frag = Fragment::None;
    let limit = ip_end.min(buf.len());
    let mut cur = off + 40;
    let mut seen = 0;
    loop {
        let len = match nh {
            PROTO_HOPOPTS | PROTO_ROUTING | PROTO_DSTOPTS | PROTO_MOBILITY | PROTO_HIP
            | PROTO_SHIM6 => {
                let [next, hlen] = arr::<2>(buf, cur).ok_or(TruncatedExtHeader)?;
                if nh == PROTO_ROUTING {
                    // Segments left is byte 3; the header is at least 8 bytes.
                    let left = byte(buf, cur + 3).ok_or(TruncatedExtHeader)?;
                    if left != 0 {
                        flags |= F_SOURCE_ROUTED;
                    }
                }
                nh = next;
                (usize::from(hlen) + 1) * 8
            }
            PROTO_FRAGMENT => {
                let [next, _, o0, o1] = arr::<4>(buf, cur).ok_or(TruncatedExtHeader)?;
                let fo = u16::from_be_bytes([o0, o1]);
                if fo & 0xfff8 != 0 {
                    frag = Fragment::NonFirst;
                } else if fo & 1 != 0 {
                    frag = Fragment::First;
                }
                nh = next;
                8
            }
            PROTO_AH => {
                let [next, hlen] = arr::<2>(buf, cur).ok_or(TruncatedExtHeader)?;
                flags |= F_AH;
                nh = next;
                (usize::from(hlen) + 2) * 4
            }
            // TCP, UDP, ESP, no-next-header, or anything else: the chain ends.
            _ => break,
        };
        seen += 1;
        if seen > MAX_EXT_HEADERS {
            return Err(TooManyExtHeaders);
        }
        cur += len;
        if cur > limit {
            return Err(TruncatedExtHeader);
        }
        if frag == Fragment::NonFirst {
            // What follows is the middle of someone else's payload.
            break;
        }
    }
    // At most 62 + 8 * 2 KiB of extension headers: fits the 16 bits.
    let l4_off = u16::try_from(cur).map_err(|_| TooManyExtHeaders)?;
    let at = l2.at(ip_end) | u64::from(l4_off);
    let info = ip_info(IpVersion::V6, nh, frag) | flags;
    if frag == Fragment::NonFirst {
        return Ok(Parsed::from_words(at, info));
    }
    let l4 = parse_l4(buf, cur, limit, nh)?;
    Ok(Parsed::from_words(at, info | l4.0))
}

/// TCP or UDP header at `off`, which must end by `limit` (the end of the
/// datagram or of the frame, whichever comes first).
#[inline(always)]
fn parse_l4(buf: &[u8], off: usize, limit: usize, proto: u8) -> Result<L4Info, ParseError> {
    use ParseError::*;

    match proto {
        PROTO_TCP => {
            if off + 20 > limit {
                return Err(TruncatedL4);
            }
            // One 4-byte and one 2-byte load, both in registers: a
            // destructured [u8; 14] went through the stack and cost a
            // store-forwarding stall on every packet.
            let ports = arr::<4>(buf, off)
                .map(u32::from_be_bytes)
                .ok_or(TruncatedL4)?;
            let [doff, flags] = arr::<2>(buf, off + 12).ok_or(TruncatedL4)?;
            let hlen = usize::from(doff >> 4) * 4;
            if hlen < 20 {
                return Err(BadTcpHeaderLen);
            }
            if off + hlen > limit {
                return Err(TruncatedL4);
            }
            Ok(L4Info::new(
                L4::Tcp,
                (ports >> 16) as u16,
                ports as u16,
                flags,
                doff >> 4,
            ))
        }
        PROTO_UDP => {
            if off + 8 > limit {
                return Err(TruncatedL4);
            }
            let ports = arr::<4>(buf, off)
                .map(u32::from_be_bytes)
                .ok_or(TruncatedL4)?;
            Ok(L4Info::new(
                L4::Udp,
                (ports >> 16) as u16,
                ports as u16,
                0,
                0,
            ))
        }
        _ => Ok(NO_L4),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::testutil::{self, Ext, Frag, Ip, Spec, V4, V6};

    fn v4(spec: &mut Spec) -> &mut V4 {
        match &mut spec.ip {
            Ip::V4(v) => v,
            Ip::V6(_) => panic!("not v4"),
        }
    }

    fn v6(spec: &mut Spec) -> &mut V6 {
        match &mut spec.ip {
            Ip::V6(v) => v,
            Ip::V4(_) => panic!("not v6"),
        }
    }

    #[test]
    fn every_header_combination_parses_to_the_right_offsets() {
        let vlan_stacks: [&[(u16, u16)]; 5] = [
            &[],
            &[(0x8100, 10)],
            &[(0x88a8, 100), (0x8100, 200)],
            &[(0x9100, 7), (0x8100, 4095)],
            &[(0x8100, 1), (0x8100, 2)],
        ];
        let l3s: [fn(&mut Spec); 4] = [
            |_| {},
            |s| v4(s).options = vec![148, 4, 0, 0, 1, 1, 1, 0],
            |s| s.ip = Spec::tcp6(0, vec![], 0).ip,
            |s| {
                s.ip = Spec::tcp6(0, vec![], 0).ip;
                v6(s).ext = vec![
                    Ext::HopByHop(0),
                    Ext::Routing {
                        len: 2,
                        segments_left: 0,
                    },
                    Ext::DestOpts(1),
                ];
            },
        ];
        for vlans in vlan_stacks {
            for (li, l3) in l3s.iter().enumerate() {
                for udp in [false, true] {
                    let mut s = if udp {
                        Spec::udp4(false, 5)
                    } else {
                        Spec::tcp4(TCP_SYN, testutil::mss_opt(1460), 5)
                    };
                    s.vlans = vlans.to_vec();
                    l3(&mut s);
                    let (f, lay) = s.build();
                    let p =
                        parse(&f).unwrap_or_else(|e| panic!("{vlans:?} l3#{li} udp={udp}: {e}"));
                    let what = format!("{vlans:?} l3#{li} udp={udp}");
                    assert_eq!(p.l3_offset(), 14 + 4 * vlans.len(), "{what}");
                    assert_eq!(p.l4_offset(), lay.l4, "{what}");
                    assert_eq!(p.ip_end(), lay.ip_end, "{what}");
                    assert_eq!(usize::from(p.vlan_count()), vlans.len(), "{what}");
                    assert_eq!(
                        p.version(),
                        if li < 2 { IpVersion::V4 } else { IpVersion::V6 }
                    );
                    assert_eq!(p.l4(), if udp { L4::Udp } else { L4::Tcp }, "{what}");
                    assert_eq!(p.proto(), if udp { PROTO_UDP } else { PROTO_TCP });
                    assert_eq!(p.src_port(), 40000);
                    assert_eq!(p.dst_port(), if udp { 53 } else { 80 });
                    assert_eq!(p.fragment(), Fragment::None);
                    assert_eq!(p.tcp_flags(), if udp { 0 } else { TCP_SYN });
                    assert_eq!(p.tcp_header_len(), if udp { 0 } else { 24 });
                    let ids = p.vlan_ids();
                    for (i, (_, vid)) in vlans.iter().enumerate() {
                        assert_eq!(ids[i], *vid, "{what}");
                    }
                }
            }
        }
    }

    #[test]
    fn parsed_is_small_and_copy() {
        fn is_copy<T: Copy>() {}
        is_copy::<Parsed>();
        assert_eq!(std::mem::size_of::<Parsed>(), 16);
        // The error hides in the niche: the result fits two registers.
        assert_eq!(std::mem::size_of::<Result<Parsed, ParseError>>(), 16);
    }

    #[test]
    fn flow_key_carries_the_tuple_vlans_and_direction() {
        let mut s = Spec::tcp4(TCP_SYN, vec![], 0);
        s.vlans = vec![(0x88a8, 0x123), (0x8100, 0x456)];
        let (f, _) = s.build();
        let p = parse(&f).unwrap();
        let k = p.flow_key(&f, Direction::Downstream).unwrap();
        assert_eq!(k.src_addr(), IpAddr::from([10, 0, 0, 1]));
        assert_eq!(k.dst_addr(), IpAddr::from([192, 0, 2, 80]));
        assert_eq!((k.src_port, k.dst_port, k.proto), (40000, 80, PROTO_TCP));
        assert_eq!(k.vlan, 2 << 24 | 0x123 << 12 | 0x456);
        assert_eq!(k.direction, Direction::Downstream);
        let same = FlowKey::new(
            (k.src_addr(), 40000),
            (k.dst_addr(), 80),
            PROTO_TCP,
            k.vlan,
            Direction::Downstream,
        );
        assert_eq!(same, Some(k));
        assert!(p.flow_key(&f[..20], Direction::Upstream).is_none());
    }

    #[test]
    fn ipv6_flow_key_holds_the_full_addresses() {
        let (f, _) = Spec::udp6(false, 0).build();
        let p = parse(&f).unwrap();
        let k = p.flow_key(&f, Direction::Upstream).unwrap();
        assert_eq!(k.version, IpVersion::V6);
        assert_eq!(k.dst_addr(), "2001:db8::80".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn ethernet_padding_is_not_part_of_the_datagram() {
        let mut s = Spec::tcp4(0, vec![], 0);
        s.eth_pad = 6;
        let (f, lay) = s.build();
        let p = parse(&f).unwrap();
        assert_eq!(p.ip_end(), lay.ip_end);
        assert_eq!(p.ip_end() + 6, f.len());
    }

    #[test]
    fn headers_in_the_first_segment_are_enough() {
        // A chained mbuf: the IP length covers bytes that are elsewhere.
        let (f, lay) = Spec::tcp4(0, vec![], 1000).build();
        let first = &f[..lay.l4 + 20];
        let p = parse(first).unwrap();
        assert_eq!(p.l4(), L4::Tcp);
        assert_eq!(p.ip_end(), f.len());
    }

    #[test]
    fn ipv4_fragments_are_classified() {
        for (frag, want, l4) in [
            (Frag::First, Fragment::First, L4::Tcp),
            (
                Frag::NonFirst {
                    offset: 185,
                    more: true,
                },
                Fragment::NonFirst,
                L4::None,
            ),
            (
                Frag::NonFirst {
                    offset: 1,
                    more: false,
                },
                Fragment::NonFirst,
                L4::None,
            ),
            (Frag::None, Fragment::None, L4::Tcp),
        ] {
            let mut s = Spec::tcp4(0, vec![], 16);
            v4(&mut s).frag = frag;
            let (f, _) = s.build();
            let p = parse(&f).unwrap();
            assert_eq!(
                (p.fragment(), p.l4(), p.proto()),
                (want, l4, PROTO_TCP),
                "{frag:?}"
            );
            if l4 == L4::None {
                assert_eq!((p.src_port(), p.dst_port()), (0, 0));
            }
        }
    }

    #[test]
    fn ipv6_fragments_are_classified_and_atomic_ones_are_whole() {
        for (frag, want, l4) in [
            (Frag::First, Fragment::First, L4::Udp),
            (
                Frag::NonFirst {
                    offset: 100,
                    more: true,
                },
                Fragment::NonFirst,
                L4::None,
            ),
            (Frag::Atomic, Fragment::None, L4::Udp),
        ] {
            let mut s = Spec::udp6(false, 16);
            v6(&mut s).ext = vec![Ext::HopByHop(0)];
            v6(&mut s).frag = frag;
            let (f, lay) = s.build();
            let p = parse(&f).unwrap();
            assert_eq!(
                (p.fragment(), p.l4(), p.proto()),
                (want, l4, PROTO_UDP),
                "{frag:?}"
            );
            assert_eq!(p.l4_offset(), lay.l4);
        }
    }

    #[test]
    fn esp_and_no_next_header_end_the_chain_without_l4() {
        for nh in [50u8, 59] {
            let mut s = Spec::tcp6(0, vec![], 0);
            s.l4 = testutil::L4::Other(nh);
            s.payload = vec![0; 24];
            v6(&mut s).ext = vec![Ext::DestOpts(0)];
            let (f, lay) = s.build();
            let p = parse(&f).unwrap();
            assert_eq!((p.l4(), p.proto(), p.l4_offset()), (L4::None, nh, lay.l4));
        }
    }

    #[test]
    fn ah_is_skipped_to_the_transport_header_and_flagged() {
        let mut s = Spec::tcp4(TCP_SYN, vec![], 4);
        v4(&mut s).ah = true;
        let (f, lay) = s.build();
        let p = parse(&f).unwrap();
        assert_eq!((p.l4(), p.l4_offset(), p.has_ah()), (L4::Tcp, lay.l4, true));

        let mut s = Spec::udp6(false, 4);
        v6(&mut s).ext = vec![Ext::HopByHop(0), Ext::Ah(3)];
        let (f, lay) = s.build();
        let p = parse(&f).unwrap();
        assert_eq!((p.l4(), p.l4_offset(), p.has_ah()), (L4::Udp, lay.l4, true));
    }

    #[test]
    fn source_routes_are_flagged() {
        let mut s = Spec::tcp4(0, vec![], 0);
        v4(&mut s).options = vec![1, 131, 7, 4, 192, 0, 2, 1];
        let (f, _) = s.build();
        assert!(parse(&f).unwrap().is_source_routed());

        let mut s = Spec::tcp4(0, vec![], 0);
        v4(&mut s).options = vec![148, 4, 0, 0];
        let (f, _) = s.build();
        assert!(!parse(&f).unwrap().is_source_routed());

        for (left, routed) in [(0, false), (1, true)] {
            let mut s = Spec::tcp6(0, vec![], 0);
            v6(&mut s).ext = vec![Ext::Routing {
                len: 2,
                segments_left: left,
            }];
            let (f, _) = s.build();
            assert_eq!(parse(&f).unwrap().is_source_routed(), routed);
        }
    }

    /// Builds a frame, lets `mutate` break it, and returns the parse error.
    fn err(spec: Spec, mutate: impl FnOnce(&mut Vec<u8>, usize, usize)) -> ParseError {
        let (mut f, lay) = spec.build();
        mutate(&mut f, lay.l3, lay.l4);
        parse(&f).expect_err("must not parse")
    }

    #[test]
    fn each_malformation_has_its_own_error() {
        use ParseError::*;
        let t4 = || Spec::tcp4(0, vec![], 0);
        let t6 = || Spec::tcp6(0, vec![], 0);
        let mut tagged = t4();
        tagged.vlans = vec![(0x8100, 5)];
        let mut three_tags = t4();
        three_tags.vlans = vec![(0x88a8, 1), (0x8100, 2), (0x8100, 3)];
        let mut bad_inner = t4();
        bad_inner.vlans = vec![(0x8100, 1), (0x88a8, 2)];
        let mut many_ext = t6();
        v6(&mut many_ext).ext = vec![Ext::DestOpts(0); MAX_EXT_HEADERS + 1];
        let mut max_ext = t6();
        v6(&mut max_ext).ext = vec![Ext::DestOpts(0); MAX_EXT_HEADERS];
        let mut with_ah = t4();
        v4(&mut with_ah).ah = true;
        let mut hbh = t6();
        v6(&mut hbh).ext = vec![Ext::HopByHop(0)];

        assert!(parse(&max_ext.build().0).is_ok());
        let cases: Vec<(ParseError, ParseError)> = vec![
            (err(t4(), |f, _, _| f.truncate(13)), TruncatedEthernet),
            (err(tagged, |f, _, _| f.truncate(17)), TruncatedEthernet),
            (err(three_tags, |_, _, _| {}), UnsupportedVlanStack),
            (err(bad_inner, |_, _, _| {}), UnsupportedVlanStack),
            (
                err(t4(), |f, _, _| f[12..14].copy_from_slice(&[8, 6])),
                NotIp,
            ),
            (err(t4(), |f, l3, _| f.truncate(l3 + 19)), TruncatedIp),
            (err(t6(), |f, l3, _| f.truncate(l3 + 39)), TruncatedIp),
            (
                err(t4(), |f, l3, _| {
                    f[l3] = 0x46;
                    f.truncate(l3 + 22)
                }),
                TruncatedIp,
            ),
            (err(t4(), |f, l3, _| f[l3] = 0x65), BadIpVersion),
            (err(t6(), |f, l3, _| f[l3] = 0x45), BadIpVersion),
            (err(t4(), |f, l3, _| f[l3] = 0x44), BadIpHeaderLen),
            (
                err(t4(), |f, l3, _| f[l3 + 2..l3 + 4].copy_from_slice(&[0, 19])),
                BadIpLength,
            ),
            (
                err(hbh.clone(), |f, l3, _| f[l3 + 41] = 200),
                TruncatedExtHeader,
            ),
            (
                err(hbh, |f, l3, _| f[l3 + 4..l3 + 6].copy_from_slice(&[0, 4])),
                TruncatedExtHeader,
            ),
            (
                err(with_ah, |f, l3, _| f[l3 + 21] = 100),
                TruncatedExtHeader,
            ),
            (err(many_ext, |_, _, _| {}), TooManyExtHeaders),
            (err(t4(), |f, _, l4| f.truncate(l4 + 19)), TruncatedL4),
            (
                err(Spec::udp4(false, 0), |f, _, l4| f.truncate(l4 + 7)),
                TruncatedL4,
            ),
            // The IP length ends inside the TCP header (a tiny fragment).
            (
                err(t4(), |f, l3, _| f[l3 + 2..l3 + 4].copy_from_slice(&[0, 36])),
                TruncatedL4,
            ),
            (
                err(Spec::tcp4(0, vec![1, 1, 1, 1], 0), |f, _, l4| {
                    f.truncate(l4 + 22)
                }),
                TruncatedL4,
            ),
            (err(t4(), |f, _, l4| f[l4 + 12] = 0x40), BadTcpHeaderLen),
        ];
        let mut seen = std::collections::HashSet::new();
        for (i, (got, want)) in cases.iter().enumerate() {
            assert_eq!(got, want, "case {i}");
            seen.insert(*want);
        }
        for e in ParseError::ALL {
            assert!(seen.contains(&e), "no test produces {e:?}");
        }
    }

    #[test]
    fn error_indices_and_names_are_a_counter_table() {
        let mut names = std::collections::HashSet::new();
        for (i, e) in ParseError::ALL.iter().enumerate() {
            assert_eq!(e.index(), i);
            assert!(names.insert(e.name()));
            assert_eq!(e.to_string(), e.name());
        }
    }

    #[test]
    fn non_first_fragment_payload_is_not_parsed_as_l4() {
        // Garbage where a TCP header would be must not matter.
        let mut s = Spec::tcp4(0, vec![], 0);
        v4(&mut s).frag = Frag::NonFirst {
            offset: 3,
            more: false,
        };
        s.payload = vec![0xff; 3];
        let (f, _) = s.build();
        let p = parse(&f).unwrap();
        assert_eq!(p.l4(), L4::None);
    }
}
