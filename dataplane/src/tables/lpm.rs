//! Longest-prefix match with an optional port, for immutable tables of a
//! few thousand prefixes (built by the writer, read by every worker).
//!
//! Prefixes either nest or are disjoint, so they cut each family's address
//! space into elementary intervals over which the set of covering prefixes
//! is constant. The table keeps the sorted interval starts and, for each
//! interval, its candidates, longest prefix first and, within one prefix,
//! port-specific entries before the any-port one. A lookup is a binary
//! search over the starts (about 12 steps for 4 000 prefixes, on data that
//! stays in cache) and a scan of a short candidate list for the first
//! whose port matches. So the answer is the longest prefix that matches
//! the address *and* the port; at equal length a port-specific entry beats
//! the any-port one.
use std::collections::BTreeMap;

use crate::packet::IpVersion;

/// An interval's candidate: an index into the table's values and the port
/// it requires (`None`: any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cand {
    port: Option<u16>,
    value: u32,
}

/// One family's intervals, the address type being `u32` or `u128`.
#[derive(Debug, Clone, Default)]
struct Intervals<A> {
    starts: Vec<A>,
    /// `cands[spans[i].0..spans[i].1]` covers `starts[i]..starts[i + 1]`.
    spans: Vec<(u32, u32)>,
    cands: Vec<Cand>,
}

impl<A: Copy + Ord> Intervals<A> {
    #[inline]
    fn lookup(&self, addr: A, port: u16) -> Option<u32> {
        let i = self.starts.partition_point(|&s| s <= addr).checked_sub(1)?;
        let &(a, b) = self.spans.get(i)?;
        self.cands
            .get(a as usize..b as usize)?
            .iter()
            .find(|c| c.port.is_none_or(|p| p == port))
            .map(|c| c.value)
    }

    fn bytes(&self) -> usize {
        self.starts.capacity() * std::mem::size_of::<A>()
            + self.spans.capacity() * 8
            + self.cands.capacity() * std::mem::size_of::<Cand>()
    }
}

/// One prefix with all its entries (one per port, plus any-port).
struct Node {
    lo: u128,
    hi: u128,
    cands: Vec<Cand>,
}

/// A prefix given to [`Lpm::build`] twice with the same port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Duplicate {
    /// Index of the second occurrence in the input.
    pub index: usize,
}

/// An immutable LPM table over both families, values of type `V`.
#[derive(Debug, Clone, Default)]
pub(super) struct Lpm<V> {
    v4: Intervals<u32>,
    v6: Intervals<u128>,
    values: Vec<V>,
}

/// One input entry: family, network bits (masked), length, port, value.
pub(super) type Entry<V> = (IpVersion, u128, u8, Option<u16>, V);

impl<V> Lpm<V> {
    /// Builds the table. Lengths must not exceed the family's width and
    /// networks must be masked (the callers check both).
    pub fn build(entries: Vec<Entry<V>>) -> Result<Lpm<V>, Duplicate> {
        let mut fams: [BTreeMap<(u128, u8), Vec<Cand>>; 2] = Default::default();
        let mut values = Vec::with_capacity(entries.len());
        for (index, (v, net, len, port, value)) in entries.into_iter().enumerate() {
            let node = fams[(v == IpVersion::V6) as usize]
                .entry((net, len))
                .or_default();
            if node.iter().any(|c| c.port == port) {
                return Err(Duplicate { index });
            }
            node.push(Cand {
                port,
                value: index as u32,
            });
            values.push(value);
        }
        let [f4, f6] = fams;
        Ok(Lpm {
            v4: intervals(f4, 32, |a| a as u32),
            v6: intervals(f6, 128, |a| a),
            values,
        })
    }

    /// The value of the longest prefix of `version` containing `addr` (an
    /// address's bits as in `FlowKey`) whose port is any or `port`.
    #[inline]
    pub fn lookup(&self, version: IpVersion, addr: u128, port: u16) -> Option<&V> {
        let i = match version {
            IpVersion::V4 => self.v4.lookup(addr as u32, port),
            IpVersion::V6 => self.v6.lookup(addr, port),
        }?;
        self.values.get(i as usize)
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Heap bytes, roughly (values counted at their inline size).
    pub fn bytes(&self) -> usize {
        self.v4.bytes() + self.v6.bytes() + self.values.capacity() * std::mem::size_of::<V>()
    }
}

/// Sweeps one family's prefixes, sorted by (network, length) so a prefix
/// comes before the prefixes it contains, keeping the chain of open
/// prefixes on a stack; each point where the chain changes starts an
/// interval whose candidates are the chain, innermost first.
fn intervals<A: Copy + Ord>(
    nodes: BTreeMap<(u128, u8), Vec<Cand>>,
    width: u32,
    conv: impl Fn(u128) -> A,
) -> Intervals<A> {
    let out = Intervals {
        starts: Vec::new(),
        spans: Vec::new(),
        cands: Vec::new(),
    };
    if nodes.is_empty() {
        return out;
    }
    let top = if width == 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    };
    let nodes: Vec<Node> = nodes
        .into_iter()
        .map(|((lo, len), mut cands)| {
            cands.sort_by_key(|c| c.port.is_none());
            let host = width - u32::from(len);
            let span = if host == 128 {
                u128::MAX
            } else {
                (1u128 << host) - 1
            };
            Node {
                lo,
                hi: lo | span,
                cands,
            }
        })
        .collect();

    let mut sweep = Sweep {
        nodes: &nodes,
        stack: Vec::new(),
        pos: Some(0),
        out,
        conv,
    };
    for (i, n) in nodes.iter().enumerate() {
        sweep.close_before(Some(n.lo));
        if let Some(p) = sweep.pos {
            if p < n.lo {
                sweep.emit(p);
            }
        }
        sweep.pos = Some(n.lo);
        sweep.stack.push(i);
    }
    sweep.close_before(None);
    if let Some(p) = sweep.pos {
        if p <= top {
            sweep.stack.clear();
            sweep.emit(p);
        }
    }
    sweep.out
}

/// The state of [`intervals`]' sweep.
struct Sweep<'a, A, F> {
    nodes: &'a [Node],
    /// The open prefixes, outermost first.
    stack: Vec<usize>,
    /// Start of the next interval; None once the whole space is covered.
    pos: Option<u128>,
    out: Intervals<A>,
    conv: F,
}

impl<A, F: Fn(u128) -> A> Sweep<'_, A, F> {
    /// Starts an interval at `start` whose candidates are the open
    /// prefixes, innermost first.
    fn emit(&mut self, start: u128) {
        let a = self.out.cands.len() as u32;
        for &n in self.stack.iter().rev() {
            self.out.cands.extend_from_slice(&self.nodes[n].cands);
        }
        self.out.starts.push((self.conv)(start));
        self.out.spans.push((a, self.out.cands.len() as u32));
    }

    /// Closes every open prefix that ends before `bound` (all if None),
    /// emitting the interval each one's end closes.
    fn close_before(&mut self, bound: Option<u128>) {
        while let Some(&t) = self.stack.last() {
            let hi = self.nodes[t].hi;
            if bound.is_some_and(|b| hi >= b) {
                break;
            }
            if let Some(p) = self.pos {
                if p <= hi {
                    self.emit(p);
                }
            }
            self.pos = hi.checked_add(1);
            self.stack.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::parse::addr_bits;
    use crate::tables::types::{mask, Prefix};
    use proptest::prelude::*;

    fn entry(p: &str, port: Option<u16>, v: u32) -> Entry<u32> {
        let (a, l) = p.split_once('/').unwrap();
        let (ver, net, len) = Prefix::new(a.parse().unwrap(), l.parse().unwrap())
            .bits()
            .unwrap();
        (ver, net, len, port, v)
    }

    fn look(t: &Lpm<u32>, a: &str, port: u16) -> Option<u32> {
        let (v, bits) = addr_bits(a.parse().unwrap());
        t.lookup(v, bits, port).copied()
    }

    #[test]
    fn the_longest_matching_prefix_wins() {
        let t = Lpm::build(vec![
            entry("10.0.0.0/8", None, 1),
            entry("10.1.0.0/16", None, 2),
            entry("10.1.2.0/24", None, 3),
            entry("0.0.0.0/0", None, 0),
            entry("2001:db8::/32", None, 6),
            entry("2001:db8:1::/48", None, 7),
        ])
        .unwrap();
        assert_eq!(look(&t, "10.1.2.3", 0), Some(3));
        assert_eq!(look(&t, "10.1.3.3", 0), Some(2));
        assert_eq!(look(&t, "10.2.0.0", 0), Some(1));
        assert_eq!(look(&t, "10.255.255.255", 0), Some(1));
        assert_eq!(look(&t, "11.0.0.0", 0), Some(0));
        assert_eq!(look(&t, "255.255.255.255", 0), Some(0));
        assert_eq!(look(&t, "2001:db8:1::5", 0), Some(7));
        assert_eq!(look(&t, "2001:db8:2::5", 0), Some(6));
        assert_eq!(look(&t, "2001:db9::", 0), None);
        assert_eq!(look(&t, "::", 0), None);
    }

    #[test]
    fn a_port_entry_matches_only_its_port_and_beats_any_port_at_equal_length() {
        let t = Lpm::build(vec![
            entry("198.18.0.0/16", None, 1),
            entry("198.18.0.0/24", Some(443), 2),
            entry("198.18.0.0/24", None, 3),
            entry("198.18.0.0/25", Some(80), 4),
        ])
        .unwrap();
        assert_eq!(look(&t, "198.18.0.1", 80), Some(4));
        assert_eq!(look(&t, "198.18.0.1", 443), Some(2));
        assert_eq!(look(&t, "198.18.0.1", 22), Some(3));
        assert_eq!(look(&t, "198.18.0.200", 80), Some(3));
        assert_eq!(look(&t, "198.18.1.1", 443), Some(1));
    }

    #[test]
    fn full_length_prefixes_and_the_top_of_the_space() {
        let t = Lpm::build(vec![
            entry("255.255.255.255/32", None, 1),
            entry("::/0", None, 2),
            entry("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128", None, 3),
        ])
        .unwrap();
        assert_eq!(look(&t, "255.255.255.255", 0), Some(1));
        assert_eq!(look(&t, "255.255.255.254", 0), None);
        assert_eq!(
            look(&t, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 0),
            Some(3)
        );
        assert_eq!(
            look(&t, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", 0),
            Some(2)
        );
    }

    #[test]
    fn duplicates_are_refused_and_an_empty_table_matches_nothing() {
        assert_eq!(
            Lpm::build(vec![
                entry("10.0.0.0/8", Some(1), 0),
                entry("10.0.0.0/8", Some(1), 1)
            ])
            .unwrap_err(),
            Duplicate { index: 1 }
        );
        let t: Lpm<u32> = Lpm::build(vec![]).unwrap();
        assert_eq!(look(&t, "10.0.0.1", 0), None);
    }

    /// Entries crowded into a small part of the v4 space (so they nest and
    /// collide) and queries near them.
    fn arb_entries() -> impl Strategy<Value = Vec<(u32, u8, Option<u16>)>> {
        proptest::collection::vec(
            (
                any::<u32>().prop_map(|a| a & 0xf0f0_00ff),
                0u8..=32,
                proptest::option::of(1u16..4),
            ),
            0..40,
        )
    }

    proptest! {
        #[test]
        fn lpm_equals_a_linear_scan(entries in arb_entries(), queries in proptest::collection::vec((any::<u32>().prop_map(|a| a & 0xf0f0_00ff), 0u16..5), 1..40)) {
            let mut seen = std::collections::HashSet::new();
            let list: Vec<Entry<usize>> = entries
                .iter()
                .map(|&(a, len, port)| (IpVersion::V4, u128::from(a) & mask(IpVersion::V4, len), len, port))
                .filter(|e| seen.insert(*e))
                .enumerate()
                .map(|(i, (v, n, l, p))| (v, n, l, p, i))
                .collect();
            let t = Lpm::build(list.clone()).unwrap();
            for (q, port) in queries {
                let q = u128::from(q);
                let want = list
                    .iter()
                    .filter(|e| q & mask(IpVersion::V4, e.2) == e.1 && e.3.is_none_or(|p| p == port))
                    .max_by_key(|e| (e.2, e.3.is_some()))
                    .map(|e| e.4);
                prop_assert_eq!(t.lookup(IpVersion::V4, q, port).copied(), want);
            }
        }
    }
}
