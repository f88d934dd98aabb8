//! The exact-match binding map: subscriber address -> [`Binding`], fixed
//! capacity, one writer, any number of lock-free readers.
//!
//! Two preallocated arrays: the records (one [`Record`] per binding, a
//! cache line each, recycled through the writer's free list) and the
//! index, 64-byte buckets of eight `AtomicU64` entries
//! `signature:32 | record + 1:32` (0 = empty). A key lives in one entry of
//! one of its two candidate buckets ("two choices", the emptier one at
//! insert) from its insert to its removal: entries never move, so a reader
//! scanning both buckets cannot miss a key that stays present, and there
//! is no probe chain to keep intact (no tombstones). The index has at
//! least two entries per record (rounded up to a power of two of buckets).
//!
//! A reader takes every entry whose signature matches, reads that record
//! under its sequence counter and compares the full key, so an entry or a
//! record that changes under it (removed, recycled for another key) is a
//! mismatch, never a wrong answer.
use std::sync::atomic::{AtomicU64, Ordering};

use super::record::{self, Contended, Decoded, Key, Record, Words};
use super::types::{Binding, Table, TableError, Upserted};
use crate::packet::parse::bits_addr;

const SLOTS: usize = 8;

#[repr(align(64))]
#[derive(Default)]
struct Bucket([AtomicU64; SLOTS]);

/// A key's hash, computed once per classification and shared by the
/// three maps (they all key on the subscriber address).
#[derive(Debug, Clone, Copy)]
pub(super) struct KeyHash {
    pub key: Key,
    h1: u64,
    h2: u64,
}

impl KeyHash {
    #[inline]
    pub fn new(key: Key, seed: u64) -> KeyHash {
        const M1: u64 = 0x9e37_79b9_7f4a_7c15;
        const M2: u64 = 0xd6e8_feb8_6659_fd93;
        let mut h = seed ^ (key.version as u64);
        for w in [key.addr as u64, (key.addr >> 64) as u64] {
            h = (h ^ w).wrapping_mul(M1);
            h ^= h >> 29;
        }
        h = h.wrapping_mul(M2);
        let h1 = h ^ (h >> 32);
        let mut h2 = (h1 ^ M1).wrapping_mul(M2);
        h2 ^= h2 >> 31;
        KeyHash { key, h1, h2 }
    }

    #[inline]
    fn sig(&self) -> u64 {
        self.h1 >> 32
    }

    /// 32 bits for the validity-line index, independent of the buckets'.
    #[inline]
    pub fn line_bits(&self) -> u32 {
        (self.h2 >> 32) as u32
    }
}

/// A key's two candidate buckets as loaded by a reader.
#[derive(Debug, Clone, Copy)]
pub(super) struct Probe([u64; 2 * SLOTS]);

/// What a reader found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Found {
    Hit {
        decoded: Decoded,
        generation: u32,
    },
    Miss,
    /// A candidate record kept changing; the answer is unknown.
    Contended,
}

/// The shared half of a map: what readers touch.
pub(super) struct BindingMap {
    table: Table,
    /// Several records per key, told apart by their restriction (the
    /// coupon map: a subscriber may hold coupons for different
    /// destinations).
    multi: bool,
    buckets: Box<[Bucket]>,
    records: Box<[Record]>,
    mask: u64,
}

/// The writer's private half: the free list. Not shared, so the writer
/// allocates and frees records without atomics.
pub(super) struct MapWriter {
    free: Vec<u32>,
}

impl BindingMap {
    /// A map of `capacity` records (at least 1, validated by the caller);
    /// `multi`: several records per key (see [`BindingMap::resolve`]).
    pub fn new(table: Table, capacity: u32, multi: bool) -> (BindingMap, MapWriter) {
        let nbuckets = (capacity as usize * 2)
            .div_ceil(SLOTS)
            .next_power_of_two()
            .max(2);
        let buckets = (0..nbuckets).map(|_| Bucket::default()).collect();
        let records = (0..capacity).map(|_| Record::default()).collect();
        let map = BindingMap {
            table,
            multi,
            buckets,
            records,
            mask: nbuckets as u64 - 1,
        };
        let free = (0..capacity).rev().collect();
        (map, MapWriter { free })
    }

    pub fn capacity(&self) -> u32 {
        self.records.len() as u32
    }

    /// Bytes of the map's preallocated arrays (and the writer's free list).
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.buckets)
            + std::mem::size_of_val(&*self.records)
            + self.records.len() * std::mem::size_of::<u32>()
    }

    #[inline]
    fn candidates(&self, h: &KeyHash) -> [&Bucket; 2] {
        let b1 = (h.h1 & self.mask) as usize;
        let b2 = (h.h2 & self.mask) as usize;
        // Both indices are masked to the bucket count, a power of two.
        [&self.buckets[b1], &self.buckets[b2]]
    }

    /// Prefetches `h.key`'s two candidate buckets (the writer, some keys
    /// ahead of the one it works on: see [`super::TablesWriter::prefetch`]).
    #[inline]
    pub fn prefetch(&self, h: &KeyHash) {
        let [b1, b2] = self.candidates(h);
        crate::dpdk::prefetch(b1);
        crate::dpdk::prefetch(b2);
    }

    /// Loads `h.key`'s two candidate buckets (any thread). Loading every
    /// map's buckets before resolving any lets their cache misses overlap;
    /// see [`BindingMap::resolve`].
    #[inline]
    pub fn probe(&self, h: &KeyHash) -> Probe {
        let [b1, b2] = self.candidates(h);
        Probe(std::array::from_fn(|i| {
            let b = if i < SLOTS { b1 } else { b2 };
            b.0[i % SLOTS].load(Ordering::Acquire)
        }))
    }

    /// Finds `h.key` among the entries of `p` (from [`BindingMap::probe`]
    /// on this map): reads each candidate record under its sequence counter
    /// and compares the key. An entry removed or a record recycled since
    /// the probe reads as another key or none: a miss. Of the key's records
    /// that `accept` takes, the most specific ([`record::specificity`])
    /// wins; a map with one record per key stops at the key's record.
    /// `Contended` if a candidate could not be read (it might have been
    /// the answer).
    #[inline]
    pub fn resolve(&self, h: &KeyHash, p: &Probe, accept: impl Fn(&Decoded) -> bool) -> Found {
        let sig = h.sig();
        let mut contended = false;
        let mut best: Option<((bool, i16), Decoded, u32)> = None;
        for &e in &p.0 {
            if e >> 32 != sig || e as u32 == 0 {
                continue;
            }
            let Some(r) = self.records.get((e as u32 - 1) as usize) else {
                continue;
            };
            match r.read_if(&h.key) {
                Ok(Some((w, generation))) => {
                    let decoded = record::decode(&w);
                    if accept(&decoded) {
                        let rank = record::specificity(&w);
                        if best.as_ref().is_none_or(|(b, _, _)| rank > *b) {
                            best = Some((rank, decoded, generation));
                        }
                    }
                    if !self.multi {
                        break;
                    }
                }
                Ok(None) => {}
                Err(Contended) => contended = true,
            }
        }
        match best {
            _ if contended => Found::Contended,
            Some((_, decoded, generation)) => Found::Hit {
                decoded,
                generation,
            },
            None => Found::Miss,
        }
    }

    /// Looks `h.key` up (any thread): its most specific record.
    #[inline]
    pub fn lookup(&self, h: &KeyHash) -> Found {
        self.resolve(h, &self.probe(h), |_| true)
    }

    /// The writer's lookup: the index entries and records of `h.key` whose
    /// words satisfy `pick`.
    fn find_writer<'a>(
        &'a self,
        h: &'a KeyHash,
        pick: impl Fn(&Words) -> bool + 'a,
    ) -> impl Iterator<Item = (&'a AtomicU64, u32, Words)> + 'a {
        let sig = h.sig();
        let [b1, b2] = self.candidates(h);
        // The two candidates may be one bucket: visit it once.
        let second = (!std::ptr::eq(b1, b2)).then_some(b2);
        std::iter::once(b1)
            .chain(second)
            .flat_map(|b| b.0.iter())
            .filter_map(move |e| {
                let v = e.load(Ordering::Relaxed);
                if v >> 32 != sig || v as u32 == 0 {
                    return None;
                }
                let slot = v as u32 - 1;
                let w = self.records.get(slot as usize)?.load_writer();
                (record::holds(&w, &h.key) && pick(&w)).then_some((e, slot, w))
            })
    }

    /// The record `words` would replace: same key (and restriction, in a
    /// map with several records per key).
    fn find_same<'a>(
        &'a self,
        h: &'a KeyHash,
        words: &'a Words,
    ) -> Option<(&'a AtomicU64, u32, Words)> {
        let multi = self.multi;
        self.find_writer(h, move |w| record::same_identity(w, words, multi))
            .next()
    }

    /// The bindings the writer last stored for `h.key`, most specific
    /// first.
    pub fn get(&self, h: &KeyHash) -> Vec<Binding> {
        let mut all: Vec<Words> = self.find_writer(h, |_| true).map(|(_, _, w)| w).collect();
        all.sort_by_key(|w| std::cmp::Reverse(record::specificity(w)));
        all.iter().map(|w| record::decode(w).binding).collect()
    }

    /// The packed record that `words` would replace (for undo).
    pub fn get_words(&self, h: &KeyHash, words: &Words) -> Option<Words> {
        self.find_same(h, words).map(|(_, _, w)| w)
    }

    /// Every packed record of `h.key` (for undo).
    pub fn all_words(&self, h: &KeyHash) -> Vec<Words> {
        self.find_writer(h, |_| true).map(|(_, _, w)| w).collect()
    }

    /// Inserts or replaces (the single writer only): the record with the
    /// same identity ([`record::same_identity`]) is replaced in place.
    pub fn upsert(
        &self,
        w: &mut MapWriter,
        h: &KeyHash,
        words: &Words,
    ) -> Result<Upserted, TableError> {
        if let Some((_, slot, old)) = self.find_same(h, words) {
            let Some(r) = self.records.get(slot as usize) else {
                return Err(self.full());
            };
            if strip_seq(old) == strip_seq(*words) {
                return Ok(Upserted::Unchanged);
            }
            r.write(words);
            return Ok(Upserted::Updated);
        }
        let Some(slot) = w.free.pop() else {
            return Err(self.full());
        };
        // The emptier of the two buckets, then its first empty entry.
        let [b1, b2] = self.candidates(h);
        let empties = |b: &Bucket| {
            b.0.iter()
                .filter(|e| e.load(Ordering::Relaxed) == 0)
                .count()
        };
        let b = if empties(b2) > empties(b1) { b2 } else { b1 };
        let Some(entry) = b.0.iter().find(|e| e.load(Ordering::Relaxed) == 0) else {
            w.free.push(slot);
            return Err(TableError::BucketsFull {
                table: self.table,
                subscriber: bits_addr(h.key.version, h.key.addr),
            });
        };
        let Some(r) = self.records.get(slot as usize) else {
            w.free.push(slot);
            return Err(self.full());
        };
        // The record first, then the entry that makes it reachable.
        r.write(words);
        entry.store((h.sig() << 32) | u64::from(slot + 1), Ordering::Release);
        Ok(Upserted::Inserted)
    }

    /// Removes the record that `words` identifies; false if absent (the
    /// single writer only).
    pub fn remove_one(&self, w: &mut MapWriter, h: &KeyHash, words: &Words) -> bool {
        let Some((entry, slot, _)) = self.find_same(h, words) else {
            return false;
        };
        self.release(w, entry, slot);
        true
    }

    /// Removes every record of `h.key`; how many (the single writer only).
    pub fn remove(&self, w: &mut MapWriter, h: &KeyHash) -> usize {
        let found: Vec<(&AtomicU64, u32)> = self
            .find_writer(h, |_| true)
            .map(|(e, s, _)| (e, s))
            .collect();
        for &(entry, slot) in &found {
            self.release(w, entry, slot);
        }
        found.len()
    }

    fn release(&self, w: &mut MapWriter, entry: &AtomicU64, slot: u32) {
        entry.store(0, Ordering::Release);
        if let Some(r) = self.records.get(slot as usize) {
            // A reader still holding the old entry now sees a new
            // generation with no key: a miss.
            r.clear();
        }
        w.free.push(slot);
    }

    pub fn len(&self, w: &MapWriter) -> u32 {
        self.capacity() - w.free.len() as u32
    }

    fn full(&self) -> TableError {
        TableError::Full {
            table: self.table,
            capacity: self.capacity(),
        }
    }

    /// The record generation of `h.key` (tests).
    #[cfg(test)]
    pub fn generation_of(&self, h: &KeyHash) -> Option<u32> {
        match self.lookup(h) {
            Found::Hit { generation, .. } => Some(generation),
            _ => None,
        }
    }

    /// The record slot of `h.key` (tests).
    #[cfg(test)]
    pub fn slot_of(&self, h: &KeyHash) -> Option<u32> {
        self.find_writer(h, |_| true).next().map(|(_, s, _)| s)
    }

    /// Index entries in use (tests: must equal the binding count).
    #[cfg(test)]
    pub fn entries_in_use(&self) -> usize {
        self.buckets
            .iter()
            .flat_map(|b| b.0.iter())
            .filter(|e| e.load(Ordering::Relaxed) != 0)
            .count()
    }
}

/// The words without w0's sequence bits.
fn strip_seq(mut w: Words) -> Words {
    w[0] &= !0xffff_ffff;
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::parse::addr_bits;
    use crate::packet::{ActionSet, IpVersion};
    use crate::tables::record::encode;
    use crate::tables::types::{Grant, Restriction};
    use std::net::IpAddr;

    fn kh(a: &str) -> KeyHash {
        let (version, addr) = addr_bits(a.parse::<IpAddr>().unwrap());
        KeyHash::new(Key { version, addr }, 42)
    }

    fn level(l: u8) -> Binding {
        Binding {
            grant: Grant::Level {
                level: l,
                actions: ActionSet::default(),
            },
            ..Default::default()
        }
    }

    fn put(
        m: &BindingMap,
        w: &mut MapWriter,
        a: &str,
        b: &Binding,
    ) -> Result<Upserted, TableError> {
        let h = kh(a);
        m.upsert(w, &h, &encode(&h.key, b).unwrap())
    }

    fn get(m: &BindingMap, a: &str) -> Option<Binding> {
        match m.lookup(&kh(a)) {
            Found::Hit { decoded, .. } => Some(decoded.binding),
            Found::Miss => None,
            Found::Contended => panic!("no writer is running"),
        }
    }

    #[test]
    fn insert_update_remove_lookup() {
        let (m, mut w) = BindingMap::new(Table::Coupon, 8, false);
        assert_eq!(
            put(&m, &mut w, "10.0.0.1", &level(3)),
            Ok(Upserted::Inserted)
        );
        assert_eq!(get(&m, "10.0.0.1"), Some(level(3)));
        assert_eq!(get(&m, "10.0.0.2"), None);
        let g = m.generation_of(&kh("10.0.0.1")).unwrap();
        assert_eq!(
            put(&m, &mut w, "10.0.0.1", &level(5)),
            Ok(Upserted::Updated)
        );
        assert_eq!(
            put(&m, &mut w, "10.0.0.1", &level(5)),
            Ok(Upserted::Unchanged)
        );
        assert_eq!(get(&m, "10.0.0.1"), Some(level(5)));
        assert_eq!(m.generation_of(&kh("10.0.0.1")), Some(g + 1));
        assert_eq!(m.len(&w), 1);
        assert_eq!(m.remove(&mut w, &kh("10.0.0.1")), 1);
        assert_eq!(m.remove(&mut w, &kh("10.0.0.1")), 0);
        assert_eq!(get(&m, "10.0.0.1"), None);
        assert_eq!(m.len(&w), 0);
        assert_eq!(m.entries_in_use(), 0);
    }

    #[test]
    fn v4_and_v6_keys_with_equal_bits_are_distinct() {
        let (m, mut w) = BindingMap::new(Table::Login, 8, false);
        put(&m, &mut w, "0.0.0.7", &level(1)).unwrap();
        put(&m, &mut w, "::7", &level(2)).unwrap();
        put(&m, &mut w, "2001:db8::1", &level(4)).unwrap();
        assert_eq!(get(&m, "0.0.0.7"), Some(level(1)));
        assert_eq!(get(&m, "::7"), Some(level(2)));
        assert_eq!(get(&m, "2001:db8::1"), Some(level(4)));
        assert_eq!(get(&m, "2001:db8::2"), None);
    }

    #[test]
    fn a_full_table_refuses_inserts_with_an_error_but_still_updates() {
        let (m, mut w) = BindingMap::new(Table::Coupon, 3, false);
        for i in 1..=3 {
            put(&m, &mut w, &format!("10.0.0.{i}"), &level(1)).unwrap();
        }
        assert_eq!(
            put(&m, &mut w, "10.0.0.4", &level(1)),
            Err(TableError::Full {
                table: Table::Coupon,
                capacity: 3
            })
        );
        assert_eq!(
            put(&m, &mut w, "10.0.0.2", &level(2)),
            Ok(Upserted::Updated)
        );
        assert_eq!(m.remove(&mut w, &kh("10.0.0.1")), 1);
        assert_eq!(
            put(&m, &mut w, "10.0.0.4", &level(1)),
            Ok(Upserted::Inserted)
        );
        assert_eq!(m.len(&w), 3);
    }

    #[test]
    fn a_recycled_record_has_a_new_generation_and_another_key() {
        let (m, mut w) = BindingMap::new(Table::Coupon, 1, false);
        put(&m, &mut w, "10.0.0.1", &level(1)).unwrap();
        let (slot, g) = (
            m.slot_of(&kh("10.0.0.1")).unwrap(),
            m.generation_of(&kh("10.0.0.1")).unwrap(),
        );
        m.remove(&mut w, &kh("10.0.0.1"));
        put(&m, &mut w, "10.0.0.2", &level(1)).unwrap();
        assert_eq!(m.slot_of(&kh("10.0.0.2")), Some(slot));
        assert!(m.generation_of(&kh("10.0.0.2")).unwrap() > g);
        assert_eq!(get(&m, "10.0.0.1"), None);
    }

    #[test]
    fn memory_is_fixed_at_construction() {
        let (m, mut w) = BindingMap::new(Table::Coupon, 1000, false);
        let before = m.memory_bytes();
        for i in 0..1000u32 {
            let a = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            put(&m, &mut w, &a.to_string(), &level(1)).unwrap();
        }
        assert_eq!(m.memory_bytes(), before);
        // 1000 records of 64 B, 256 buckets of 64 B, a 4 B free-list slot.
        assert_eq!(before, 1000 * 64 + 256 * 64 + 1000 * 4);
        assert_eq!(m.entries_in_use(), 1000);
        assert_eq!(IpVersion::V4, kh("10.0.0.1").key.version);
    }

    #[test]
    fn a_multi_map_keeps_one_record_per_restriction_and_picks_the_most_specific() {
        let (m, mut w) = BindingMap::new(Table::Coupon, 8, true);
        let only = |prefix: Option<(&str, u8)>, port: Option<u16>| Restriction {
            prefix: prefix.map(|(a, l)| super::super::types::Prefix::new(a.parse().unwrap(), l)),
            port,
        };
        let with = |lvl: u8, r: Restriction| Binding {
            only_to: Some(r),
            ..level(lvl)
        };
        let any = level(6);
        let net8 = with(4, only(Some(("192.0.0.0", 8)), None));
        let net24 = with(3, only(Some(("192.0.2.0", 24)), None));
        let port = with(2, only(None, Some(443)));
        for b in [&any, &net8, &net24, &port] {
            assert_eq!(put(&m, &mut w, "10.0.0.1", b), Ok(Upserted::Inserted));
        }
        // The same restriction again replaces in place.
        let net24b = with(1, only(Some(("192.0.2.0", 24)), None));
        assert_eq!(put(&m, &mut w, "10.0.0.1", &net24b), Ok(Upserted::Updated));
        assert_eq!(m.len(&w), 4);
        let h = kh("10.0.0.1");
        let best = |dst: &str, p: u16| {
            let (_, bits) = crate::packet::parse::addr_bits(dst.parse().unwrap());
            let accept = |d: &Decoded| {
                d.restrict_net.is_none_or(|(n, mk)| bits & mk == n)
                    && d.binding
                        .only_to
                        .and_then(|r| r.port)
                        .is_none_or(|q| q == p)
            };
            match m.resolve(&h, &m.probe(&h), accept) {
                Found::Hit { decoded, .. } => Some(decoded.binding),
                _ => None,
            }
        };
        assert_eq!(best("192.0.2.9", 443), Some(port));
        assert_eq!(best("192.0.2.9", 80), Some(net24b));
        assert_eq!(best("192.9.9.9", 80), Some(net8));
        assert_eq!(best("198.51.100.1", 80), Some(any));
        // Removing one leaves the others; removing the key removes all.
        let id = encode(&h.key, &port).unwrap();
        assert!(m.remove_one(&mut w, &h, &id));
        assert!(!m.remove_one(&mut w, &h, &id));
        assert_eq!(best("192.0.2.9", 443), Some(net24b));
        assert_eq!(m.get(&h).len(), 3);
        assert_eq!(m.remove(&mut w, &h), 3);
        assert_eq!((m.len(&w), m.entries_in_use()), (0, 0));
    }
}
