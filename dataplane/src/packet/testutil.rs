//! Test-only frame builder. It computes every checksum in full (RFC 1071),
//! so it is the oracle the incremental updates are checked against: a
//! rewrite must give exactly the bytes of the frame built with the new
//! field values.

/// One VLAN tag: (TPID, VID).
pub type Vlan = (u16, u16);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frag {
    None,
    First,
    /// Offset in 8-byte units (> 0) and the MF / M flag.
    NonFirst {
        offset: u16,
        more: bool,
    },
    /// IPv6 only: a fragment header with offset 0 and M = 0 (RFC 6946).
    Atomic,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ext {
    /// Hop-by-hop options, `(len + 1) * 8` bytes.
    HopByHop(u8),
    DestOpts(u8),
    Routing {
        len: u8,
        segments_left: u8,
    },
    /// AH with `extra` 4-byte ICV words beyond the first 12 bytes.
    Ah(u8),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub tos: u8,
    pub id: u16,
    /// Raw option bytes; padded with EOL to a multiple of 4.
    pub options: Vec<u8>,
    pub frag: Frag,
    pub ah: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V6 {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub tclass: u8,
    pub flow: u32,
    pub ext: Vec<Ext>,
    /// A fragment header, if any, comes last in the chain.
    pub frag: Frag,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ip {
    V4(V4),
    V6(V6),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tcp {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub flags: u8,
    /// Raw option bytes; padded with EOL to a multiple of 4.
    pub options: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Udp {
    pub sport: u16,
    pub dport: u16,
    /// Send checksum 0 ("none"; valid on IPv4 only).
    pub zero_csum: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L4 {
    Tcp(Tcp),
    Udp(Udp),
    /// Another protocol number; the payload follows the IP headers.
    Other(u8),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub vlans: Vec<Vlan>,
    pub ip: Ip,
    pub l4: L4,
    pub payload: Vec<u8>,
    /// Ethernet padding after the IP datagram.
    pub eth_pad: usize,
}

/// Where the builder put things.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub l3: usize,
    pub l4: usize,
    pub ip_end: usize,
}

pub fn sum(data: &[u8]) -> u64 {
    data.chunks(2)
        .map(|c| (u64::from(c[0]) << 8) | c.get(1).map_or(0, |&b| u64::from(b)))
        .sum()
}

/// The full RFC 1071 checksum of some byte strings laid end to end (each
/// of even length but the last).
pub fn full_checksum(parts: &[&[u8]]) -> u16 {
    let mut s: u64 = parts.iter().map(|p| sum(p)).sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn pad4(mut v: Vec<u8>) -> Vec<u8> {
    while v.len() & 3 != 0 {
        v.push(0);
    }
    v
}

impl Spec {
    /// A plain TCP/IPv4 frame, the common case.
    pub fn tcp4(flags: u8, options: Vec<u8>, payload: usize) -> Spec {
        Spec {
            vlans: vec![],
            ip: Ip::V4(V4 {
                src: [10, 0, 0, 1],
                dst: [192, 0, 2, 80],
                tos: 0,
                id: 0x1234,
                options: vec![],
                frag: Frag::None,
                ah: false,
            }),
            l4: L4::Tcp(Tcp {
                sport: 40000,
                dport: 80,
                seq: 1,
                flags,
                options,
            }),
            payload: vec![0xab; payload],
            eth_pad: 0,
        }
    }

    pub fn udp4(zero_csum: bool, payload: usize) -> Spec {
        let mut s = Spec::tcp4(0, vec![], payload);
        s.l4 = L4::Udp(Udp {
            sport: 40000,
            dport: 53,
            zero_csum,
        });
        s
    }

    pub fn tcp6(flags: u8, options: Vec<u8>, payload: usize) -> Spec {
        let mut s = Spec::tcp4(flags, options, payload);
        s.ip = Ip::V6(V6 {
            src: [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            dst: [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80],
            tclass: 0,
            flow: 0x12345,
            ext: vec![],
            frag: Frag::None,
        });
        s
    }

    pub fn udp6(zero_csum: bool, payload: usize) -> Spec {
        let mut s = Spec::tcp6(0, vec![], payload);
        s.l4 = L4::Udp(Udp {
            sport: 40000,
            dport: 53,
            zero_csum,
        });
        s
    }

    pub fn frag(&self) -> Frag {
        match &self.ip {
            Ip::V4(v) => v.frag,
            Ip::V6(v) => v.frag,
        }
    }

    fn proto(&self) -> u8 {
        match &self.l4 {
            L4::Tcp(_) => 6,
            L4::Udp(_) => 17,
            L4::Other(p) => *p,
        }
    }

    /// The L4 bytes (header + payload) with a full checksum over the
    /// given pseudo-header.
    fn l4_bytes(&self, pseudo: &[u8]) -> Vec<u8> {
        if matches!(self.frag(), Frag::NonFirst { .. }) {
            return self.payload.clone();
        }
        match &self.l4 {
            L4::Tcp(t) => {
                let opts = pad4(t.options.clone());
                let mut h = Vec::new();
                h.extend(t.sport.to_be_bytes());
                h.extend(t.dport.to_be_bytes());
                h.extend(t.seq.to_be_bytes());
                h.extend(0x0102_0304u32.to_be_bytes());
                h.push((((20 + opts.len()) / 4) as u8) << 4);
                h.push(t.flags);
                h.extend(0xfaf0u16.to_be_bytes());
                h.extend([0, 0, 0, 0]);
                h.extend(&opts);
                h.extend(&self.payload);
                let c = full_checksum(&[pseudo, &l4_len_word(h.len()), &h]);
                h[16..18].copy_from_slice(&c.to_be_bytes());
                h
            }
            L4::Udp(u) => {
                let mut h = Vec::new();
                h.extend(u.sport.to_be_bytes());
                h.extend(u.dport.to_be_bytes());
                h.extend(((8 + self.payload.len()) as u16).to_be_bytes());
                h.extend([0, 0]);
                h.extend(&self.payload);
                if !u.zero_csum {
                    let c = match full_checksum(&[pseudo, &l4_len_word(h.len()), &h]) {
                        0 => 0xffff,
                        c => c,
                    };
                    h[6..8].copy_from_slice(&c.to_be_bytes());
                }
                h
            }
            L4::Other(_) => self.payload.clone(),
        }
    }

    pub fn build(&self) -> (Vec<u8>, Layout) {
        let mut f = vec![0x02, 0, 0, 0, 0, 0xbb, 0x02, 0, 0, 0, 0, 0xaa];
        for (tpid, vid) in &self.vlans {
            f.extend(tpid.to_be_bytes());
            f.extend((0x2000 | vid).to_be_bytes());
        }
        let l3 = f.len() + 2;
        let proto = self.proto();
        let l4_off;
        match &self.ip {
            Ip::V4(v) => {
                f.extend(0x0800u16.to_be_bytes());
                let opts = pad4(v.options.clone());
                let ihl = 20 + opts.len();
                let mut pseudo = Vec::new();
                pseudo.extend(v.src);
                pseudo.extend(v.dst);
                pseudo.extend([0, proto]);
                let l4 = self.l4_bytes(&pseudo);
                let ah = if v.ah { ah_bytes(proto, 0) } else { vec![] };
                let total = ihl + ah.len() + l4.len();
                let frag: u16 = match v.frag {
                    Frag::None | Frag::Atomic => 0x4000,
                    Frag::First => 0x2000,
                    Frag::NonFirst { offset, more } => offset | if more { 0x2000 } else { 0 },
                };
                let mut h = vec![0x40 | (ihl / 4) as u8, v.tos];
                h.extend((total as u16).to_be_bytes());
                h.extend(v.id.to_be_bytes());
                h.extend(frag.to_be_bytes());
                h.push(64);
                h.push(if v.ah { 51 } else { proto });
                h.extend([0, 0]);
                h.extend(v.src);
                h.extend(v.dst);
                h.extend(&opts);
                let c = full_checksum(&[&h]);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend(&h);
                f.extend(&ah);
                l4_off = f.len();
                f.extend(&l4);
            }
            Ip::V6(v) => {
                f.extend(0x86ddu16.to_be_bytes());
                let mut chain: Vec<u8> = Vec::new();
                let mut kinds: Vec<(u8, Vec<u8>)> = Vec::new();
                for e in &v.ext {
                    kinds.push(match e {
                        Ext::HopByHop(n) => (0, opts_hdr(*n)),
                        Ext::DestOpts(n) => (60, opts_hdr(*n)),
                        Ext::Routing { len, segments_left } => {
                            let mut b = opts_hdr(*len);
                            b[2] = 4;
                            b[3] = *segments_left;
                            (43, b)
                        }
                        Ext::Ah(extra) => (51, ah_bytes(0, *extra)),
                    });
                }
                let fo: Option<u16> = match v.frag {
                    Frag::None => None,
                    Frag::Atomic => Some(0),
                    Frag::First => Some(1),
                    Frag::NonFirst { offset, more } => Some(offset << 3 | u16::from(more)),
                };
                if let Some(fo) = fo {
                    let mut b = vec![0, 0];
                    b.extend(fo.to_be_bytes());
                    b.extend(0xdead_beefu32.to_be_bytes());
                    kinds.push((44, b));
                }
                // Each header's first byte names the next one.
                let first_nh = kinds.first().map_or(proto, |k| k.0);
                for i in 0..kinds.len() {
                    let next = kinds.get(i + 1).map_or(proto, |k| k.0);
                    kinds[i].1[0] = next;
                    chain.extend(&kinds[i].1);
                }
                let mut pseudo = Vec::new();
                pseudo.extend(v.src);
                pseudo.extend(v.dst);
                pseudo.extend([0, proto]);
                let l4 = self.l4_bytes(&pseudo);
                let plen = chain.len() + l4.len();
                let w0 = (6u32 << 28) | (u32::from(v.tclass) << 20) | (v.flow & 0xfffff);
                f.extend(w0.to_be_bytes());
                f.extend((plen as u16).to_be_bytes());
                f.push(first_nh);
                f.push(64);
                f.extend(v.src);
                f.extend(v.dst);
                f.extend(&chain);
                l4_off = f.len();
                f.extend(&l4);
            }
        }
        let ip_end = f.len();
        f.resize(f.len() + self.eth_pad, 0);
        (
            f,
            Layout {
                l3,
                l4: l4_off,
                ip_end,
            },
        )
    }
}

/// The pseudo-header's length field. The v4 pseudo-header built above
/// ends with (zero, proto) and the v6 one is laid out so that the same
/// 16-bit sum results: one's-complement sums do not care about word order.
fn l4_len_word(len: usize) -> [u8; 4] {
    (len as u32).to_be_bytes()
}

fn opts_hdr(len: u8) -> Vec<u8> {
    let mut b = vec![0u8; (usize::from(len) + 1) * 8];
    b[1] = len;
    // PadN over the rest, so a real stack would accept it too.
    b[2] = 1;
    b[3] = (b.len() - 4) as u8;
    b
}

fn ah_bytes(next: u8, extra: u8) -> Vec<u8> {
    let total = 12 + 4 * usize::from(extra);
    let mut b = vec![0u8; total];
    b[0] = next;
    b[1] = (total / 4 - 2) as u8;
    b[4..8].copy_from_slice(&0x1000u32.to_be_bytes());
    b
}

/// A TCP MSS option.
pub fn mss_opt(mss: u16) -> Vec<u8> {
    let [a, b] = mss.to_be_bytes();
    vec![2, 4, a, b]
}
