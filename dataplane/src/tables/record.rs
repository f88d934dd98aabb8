//! One binding record: eight `AtomicU64` words (one cache line) under a
//! sequence counter, and the packing of a [`Binding`] into those words.
//!
//! ```text
//! w0  seq:32 | meter+1:24 | level:3 | v6:1 | has_addr:1 | tier:1 | live:1 | 0:1
//! w1  key bits  0..64        w2  key bits 64..128
//! w3  remap addr  0..64      w4  remap addr 64..128   (tier index in w3 if tier)
//! w5  restrict net 0..64     w6  restrict net 64..128
//! w7  dscp+1:7 | port:16 | mss:16 | restrict len:8 (255 none) | restrict port:16 | 0:1
//! ```
//! Zero stands for "none" in the port, MSS and restriction-port fields
//! (the writer refuses zero values); the remap address and the restriction
//! prefix have the subscriber key's family.
//!
//! # Sequence protocol (one writer)
//! The writer makes `seq` odd (relaxed store, then a release fence),
//! stores w1..w7 (relaxed), then stores w0 with the new data and `seq + 2`
//! (release). A reader loads w0 (acquire), retries while `seq` is odd,
//! loads w1..w7 (relaxed), issues an acquire fence, and reloads w0: equal
//! to the first load means no write overlapped, so the eight words belong
//! to one version. Every word is an atomic, so a racing read is a retry,
//! never undefined behaviour. `seq / 2` is the record's generation: it
//! changes on every update and on removal.
use std::hint::spin_loop;
use std::sync::atomic::{fence, AtomicU64, Ordering};

use super::types::{
    check_actions, mask, Binding, Grant, Prefix, Restriction, TableError, MAX_BINDING_METER,
    MAX_LEVEL,
};
use crate::packet::parse::bits_addr;
use crate::packet::{ActionSet, Dscp, IpVersion};

pub(super) const WORDS: usize = 8;

const SEQ: u64 = 0xffff_ffff;
const METER_SHIFT: u32 = 32;
const METER_MASK: u64 = 0xff_ffff;
const LEVEL_SHIFT: u32 = 56;
const V6: u64 = 1 << 59;
const HAS_ADDR: u64 = 1 << 60;
const TIER: u64 = 1 << 61;
const LIVE: u64 = 1 << 62;
/// The bits of w0 that, with w1 and w2, identify the key.
const KEY_BITS: u64 = V6 | LIVE;

const PORT_SHIFT: u32 = 7;
const MSS_SHIFT: u32 = 23;
const RLEN_SHIFT: u32 = 39;
const RPORT_SHIFT: u32 = 47;
const NO_RLEN: u64 = 0xff;

/// Reader retries before giving up on a record that keeps changing (or
/// whose writer was descheduled mid-write): a few microseconds at most.
const SPINS: u32 = 256;

/// One record, a cache line to itself.
#[repr(align(64))]
#[derive(Default)]
pub(super) struct Record([AtomicU64; WORDS]);

/// The packed form of a key and its binding (w0 without `seq`).
pub(super) type Words = [u64; WORDS];

/// A key's bits as they appear in a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Key {
    pub version: IpVersion,
    pub addr: u128,
}

impl Key {
    #[inline]
    fn matches(&self, w: &Words) -> bool {
        let fam = if self.version == IpVersion::V6 { V6 } else { 0 };
        w[0] & KEY_BITS == fam | LIVE
            && w[1] == self.addr as u64
            && w[2] == (self.addr >> 64) as u64
    }
}

/// Why a read returned no words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Contended;

impl Record {
    /// A consistent copy of the record and its generation.
    #[inline]
    pub fn read(&self) -> Result<(Words, u32), Contended> {
        let r = &self.0;
        for _ in 0..SPINS {
            let w0 = r[0].load(Ordering::Acquire);
            if w0 & 1 == 1 {
                spin_loop();
                continue;
            }
            let w = [
                w0,
                r[1].load(Ordering::Relaxed),
                r[2].load(Ordering::Relaxed),
                r[3].load(Ordering::Relaxed),
                r[4].load(Ordering::Relaxed),
                r[5].load(Ordering::Relaxed),
                r[6].load(Ordering::Relaxed),
                r[7].load(Ordering::Relaxed),
            ];
            fence(Ordering::Acquire);
            if r[0].load(Ordering::Relaxed) == w0 {
                return Ok((w, (w0 & SEQ) as u32 >> 1));
            }
        }
        Err(Contended)
    }

    /// The record if it holds `key`: `Ok(None)` if it holds another key or
    /// none.
    #[inline]
    pub fn read_if(&self, key: &Key) -> Result<Option<(Words, u32)>, Contended> {
        let (w, g) = self.read()?;
        Ok(key.matches(&w).then_some((w, g)))
    }

    /// The writer's view: no other thread writes, so plain loads suffice.
    pub fn load_writer(&self) -> Words {
        std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed))
    }

    /// Writes a new version (the single writer only).
    pub fn write(&self, new: &Words) {
        let r = &self.0;
        let w0 = r[0].load(Ordering::Relaxed);
        let seq = w0 & SEQ;
        r[0].store((w0 & !SEQ) | ((seq + 1) & SEQ), Ordering::Relaxed);
        fence(Ordering::Release);
        for (slot, w) in r.iter().zip(new.iter()).skip(1) {
            slot.store(*w, Ordering::Relaxed);
        }
        r[0].store((new[0] & !SEQ) | ((seq + 2) & SEQ), Ordering::Release);
    }

    /// Empties the record (a new generation, no key).
    pub fn clear(&self) {
        self.write(&[0; WORDS]);
    }

    /// The record's generation as the writer sees it.
    #[cfg(test)]
    pub fn generation(&self) -> u32 {
        (self.0[0].load(Ordering::Relaxed) & SEQ) as u32 >> 1
    }
}

/// Whether a record's words hold `key` (the writer's check).
pub(super) fn holds(w: &Words, key: &Key) -> bool {
    key.matches(w)
}

/// The bits of w7 that hold the restriction (prefix length and port).
const RESTRICT_BITS: u64 = (NO_RLEN << RLEN_SHIFT) | (0xffff << RPORT_SHIFT);

/// Whether `stored` (a live record) is the record `new` replaces: the same
/// key and, in a map with several records per key, the same restriction.
pub(super) fn same_identity(stored: &Words, new: &Words, by_restriction: bool) -> bool {
    stored[0] & KEY_BITS == new[0] & KEY_BITS
        && stored[0] & LIVE != 0
        && stored[1] == new[1]
        && stored[2] == new[2]
        && (!by_restriction
            || (stored[5] == new[5]
                && stored[6] == new[6]
                && stored[7] & RESTRICT_BITS == new[7] & RESTRICT_BITS))
}

/// How specific a record's restriction is, for picking among several
/// records of one key: a port beats no port, then the longer prefix, then
/// a prefix beats none (the control plane's coupon rank).
#[inline]
pub(super) fn specificity(w: &Words) -> (bool, i16) {
    let rlen = (w[7] >> RLEN_SHIFT) & 0xff;
    let rport = (w[7] >> RPORT_SHIFT) & 0xffff;
    (rport != 0, if rlen == NO_RLEN { -1 } else { rlen as i16 })
}

/// Packs `key -> b`, checking everything the packing and the fast path
/// rely on.
pub(super) fn encode(key: &Key, b: &Binding) -> Result<Words, TableError> {
    let v6 = key.version == IpVersion::V6;
    let of = bits_addr(key.version, key.addr);
    let mut w = [0u64; WORDS];
    w[0] = LIVE | if v6 { V6 } else { 0 };
    w[1] = key.addr as u64;
    w[2] = (key.addr >> 64) as u64;
    match b.grant {
        Grant::Level { level, actions } => {
            if level > MAX_LEVEL {
                return Err(TableError::Level(level));
            }
            check_actions(&actions, Some(of))?;
            w[0] |= u64::from(level) << LEVEL_SHIFT;
            if let Some(a) = actions.dst_addr {
                let (_, bits) = crate::packet::parse::addr_bits(a);
                w[0] |= HAS_ADDR;
                w[3] = bits as u64;
                w[4] = (bits >> 64) as u64;
            }
            w[7] |= actions.dscp.map_or(0, |d| u64::from(d.value()) + 1);
            w[7] |= u64::from(actions.dst_port.unwrap_or(0)) << PORT_SHIFT;
            w[7] |= u64::from(actions.mss_clamp.unwrap_or(0)) << MSS_SHIFT;
        }
        Grant::Tier(t) => {
            w[0] |= TIER;
            w[3] = u64::from(t);
        }
    }
    if let Some(m) = b.meter {
        if m > MAX_BINDING_METER {
            return Err(TableError::Meter(m));
        }
        w[0] |= (u64::from(m) + 1) << METER_SHIFT;
    }
    let r = b.only_to.unwrap_or_default();
    let mut rlen = NO_RLEN;
    if let Some(p) = r.prefix {
        let (pv, net, len) = p.bits()?;
        if pv != key.version {
            return Err(TableError::Family {
                what: "restriction prefix",
                addr: p.addr,
                of,
            });
        }
        w[5] = net as u64;
        w[6] = (net >> 64) as u64;
        rlen = u64::from(len);
    }
    if r.port == Some(0) {
        return Err(TableError::Zero("restriction port"));
    }
    w[7] |= rlen << RLEN_SHIFT;
    w[7] |= u64::from(r.port.unwrap_or(0)) << RPORT_SHIFT;
    Ok(w)
}

/// The binding a live record holds, already in the form the classifier
/// tests against (the restriction as masked bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Decoded {
    pub binding: Binding,
    /// Masked restriction network and its mask, if a prefix is set.
    pub restrict_net: Option<(u128, u128)>,
}

/// Unpacks a record written by [`encode`].
#[inline]
pub(super) fn decode(w: &Words) -> Decoded {
    let version = if w[0] & V6 != 0 {
        IpVersion::V6
    } else {
        IpVersion::V4
    };
    let meter = match (w[0] >> METER_SHIFT) & METER_MASK {
        0 => None,
        m => Some(m as u32 - 1),
    };
    let grant = if w[0] & TIER != 0 {
        Grant::Tier(w[3] as u16)
    } else {
        let d = w[7] & 0x7f;
        let nz16 = |v: u64| match v as u16 {
            0 => None,
            v => Some(v),
        };
        Grant::Level {
            level: ((w[0] >> LEVEL_SHIFT) & 7) as u8,
            actions: ActionSet {
                dscp: if d == 0 { None } else { Dscp::new(d as u8 - 1) },
                dst_port: nz16(w[7] >> PORT_SHIFT),
                dst_addr: (w[0] & HAS_ADDR != 0)
                    .then(|| bits_addr(version, u128::from(w[3]) | (u128::from(w[4]) << 64))),
                mss_clamp: nz16(w[7] >> MSS_SHIFT),
            },
        }
    };
    let rlen = (w[7] >> RLEN_SHIFT) & 0xff;
    let rport = ((w[7] >> RPORT_SHIFT) & 0xffff) as u16;
    let net = u128::from(w[5]) | (u128::from(w[6]) << 64);
    let restrict_net = (rlen != NO_RLEN).then(|| (net, mask(version, rlen as u8)));
    let only_to = (rlen != NO_RLEN || rport != 0).then(|| Restriction {
        prefix: (rlen != NO_RLEN).then(|| Prefix::new(bits_addr(version, net), rlen as u8)),
        port: (rport != 0).then_some(rport),
    });
    Decoded {
        binding: Binding {
            grant,
            meter,
            only_to,
        },
        restrict_net,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::packet::parse::addr_bits;
    use proptest::prelude::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    fn key(a: &str) -> Key {
        let (version, addr) = addr_bits(a.parse().unwrap());
        Key { version, addr }
    }

    #[test]
    fn a_record_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Record>(), 64);
        assert_eq!(std::mem::align_of::<Record>(), 64);
    }

    #[test]
    fn writes_bump_the_generation_and_reads_see_the_last_write() {
        let r = Record::default();
        let k = key("10.0.0.1");
        let b = Binding {
            meter: Some(7),
            ..Default::default()
        };
        let w = encode(&k, &b).unwrap();
        r.write(&w);
        let (got, g1) = r.read_if(&k).unwrap().unwrap();
        assert_eq!(decode(&got).binding, b);
        r.clear();
        assert_eq!(r.read_if(&k), Ok(None));
        assert_eq!(r.generation(), g1 + 1);
    }

    #[test]
    fn the_family_is_part_of_the_key() {
        let r = Record::default();
        r.write(&encode(&key("0.0.0.1"), &Binding::default()).unwrap());
        assert_eq!(r.read_if(&key("::1")), Ok(None));
        assert!(r.read_if(&key("0.0.0.1")).unwrap().is_some());
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let k = key("10.0.0.1");
        let lvl = |level, actions| Binding {
            grant: Grant::Level { level, actions },
            ..Default::default()
        };
        assert_eq!(
            encode(&k, &lvl(8, ActionSet::default())),
            Err(TableError::Level(8))
        );
        let zero_port = ActionSet {
            dst_port: Some(0),
            ..Default::default()
        };
        assert!(matches!(
            encode(&k, &lvl(1, zero_port)),
            Err(TableError::Zero(_))
        ));
        let v6_remap = ActionSet {
            dst_addr: Some("::1".parse().unwrap()),
            ..Default::default()
        };
        assert!(matches!(
            encode(&k, &lvl(1, v6_remap)),
            Err(TableError::Family { .. })
        ));
        let big_meter = Binding {
            meter: Some(MAX_BINDING_METER + 1),
            ..Default::default()
        };
        assert!(matches!(encode(&k, &big_meter), Err(TableError::Meter(_))));
        let v6_restrict = Binding {
            only_to: Some(Restriction {
                prefix: Some(Prefix::new("::".parse().unwrap(), 0)),
                port: None,
            }),
            ..Default::default()
        };
        assert!(matches!(
            encode(&k, &v6_restrict),
            Err(TableError::Family { .. })
        ));
    }

    pub(crate) fn arb_actions(v6: bool) -> impl Strategy<Value = ActionSet> {
        (
            proptest::option::of(0u8..64),
            proptest::option::of(1u16..),
            proptest::option::of(any::<u128>()),
            proptest::option::of(1u16..),
        )
            .prop_map(move |(d, p, a, m)| ActionSet {
                dscp: d.and_then(Dscp::new),
                dst_port: p,
                dst_addr: a.map(|a| {
                    if v6 {
                        IpAddr::V6(Ipv6Addr::from(a))
                    } else {
                        IpAddr::V4(Ipv4Addr::from(a as u32))
                    }
                }),
                mss_clamp: m,
            })
    }

    /// Valid bindings for a key of family `v6`, restriction prefixes
    /// already masked (so they round-trip exactly).
    pub(crate) fn arb_binding(v6: bool) -> impl Strategy<Value = Binding> {
        let grant = prop_oneof![
            (0u8..=MAX_LEVEL, arb_actions(v6))
                .prop_map(|(level, actions)| Grant::Level { level, actions }),
            any::<u16>().prop_map(Grant::Tier),
        ];
        let width = if v6 { 128u8 } else { 32 };
        let restriction = proptest::option::of(
            (
                proptest::option::of((any::<u128>(), 0..=width)),
                proptest::option::of(1u16..),
            )
                .prop_map(move |(p, port)| Restriction {
                    prefix: p.map(|(a, len)| {
                        let v = if v6 { IpVersion::V6 } else { IpVersion::V4 };
                        Prefix::new(bits_addr(v, a & mask(v, len)), len)
                    }),
                    port,
                }),
        );
        (
            grant,
            proptest::option::of(0..=MAX_BINDING_METER),
            restriction,
        )
            .prop_map(|(grant, meter, only_to)| Binding {
                grant,
                meter,
                only_to: only_to.filter(|r| r.prefix.is_some() || r.port.is_some()),
            })
    }

    proptest! {
        #[test]
        fn valid_bindings_round_trip(v6 in any::<bool>(), a in any::<u128>(), b in any::<bool>().prop_flat_map(arb_binding)) {
            // The strategy's family and the key's may differ: only matching
            // ones are valid, the rest must be refused, never mangled.
            let key = if v6 {
                Key { version: IpVersion::V6, addr: a }
            } else {
                Key { version: IpVersion::V4, addr: u128::from(a as u32) }
            };
            match encode(&key, &b) {
                Ok(w) => {
                    prop_assert!(holds(&w, &key));
                    prop_assert_eq!(decode(&w).binding, b);
                }
                Err(e) => prop_assert!(matches!(e, TableError::Family { .. }), "{e}"),
            }
        }
    }
}
