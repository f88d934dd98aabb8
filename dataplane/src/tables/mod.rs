//! The policy tables the workers classify new flows against, written by
//! one control thread while the workers read them, with no lock, no
//! allocation and no blocking on the read side.
//!
//! # What is in them
//! - Three **exact-match binding maps** keyed by the subscriber address
//!   (IPv4 or IPv6; the family is part of the key): service-provider
//!   allocations for one address ([`Table::SpAddress`]), coupon bindings and
//!   login bindings. Fixed capacity each, chosen at construction
//!   ([`TablesConfig`]); nothing grows after that. Changed one key at a time
//!   ([`TablesWriter::apply`]), up to millions of keys.
//! - One **prefix snapshot** ([`Snapshot`], built from a [`PrefixPolicy`]):
//!   service-provider prefixes (longest match on the remote address, with an
//!   optional port), eligibility prefixes, tiers and the default. Rarely
//!   changed, thousands of entries, replaced whole
//!   ([`TablesWriter::publish`]).
//!
//! # Precedence ([`TablesReader::classify`])
//! Only flows that start on the subscriber side ([`Direction::Upstream`])
//! are looked up; the subscriber is the source address, the remote end the
//! destination. Flows that start on the upstream side get the default.
//! The first step that matches decides:
//! 1. **SP address**: a service-provider allocation for the subscriber's
//!    address (its restriction, if any, must match the destination).
//! 2. **SP prefix**: the longest service-provider prefix containing the
//!    destination, with a port-specific entry beating an any-port one of
//!    the same length.
//! 3. **Coupon**: the subscriber's coupon binding, if its restriction
//!    (destination prefix and/or port) matches, *and the destination is
//!    eligible* (longest eligibility rule; else `default_eligible`).
//! 4. **Login**: the subscriber's login binding (usually a
//!    [`Grant::Tier`]), if the destination is eligible.
//! 5. **Default**.
//!
//! A binding that names a tier the current snapshot lacks does not match.
//! Remaps apply to TCP and UDP only and MSS clamping to TCP only, as in
//! [`crate::classify`]; a remap address of the other family is dropped.
//!
//! # Binding maps: structure and sequence rules
//! `exact.rs` and `record.rs` give the layout; in short:
//! - **Records**: one 64-byte record (eight `AtomicU64`) per binding, in a
//!   preallocated array, recycled through the writer's private free list.
//!   Each record is guarded by a 32-bit sequence counter in its first word
//!   (a seqlock over atomics: odd while written; a reader retries while odd
//!   or if the counter changed during its read). `seq / 2` is the record's
//!   generation: it changes on every update and on removal, so a reader
//!   holding a recycled record sees a new generation and, since the key is
//!   inside the record and always compared, another key or none.
//! - **Index**: 64-byte buckets of eight `AtomicU64` entries
//!   `signature | record + 1`, two candidate buckets per key. An entry is
//!   written (release) after its record, and cleared before its record is
//!   emptied and freed. Entries never move, so a reader scanning both
//!   buckets cannot miss a key that stays present and cannot be misled by
//!   one that goes: no tombstones, no bucket versions needed.
//! - **Bounded reads**: a reader gives up on a record after 256 tries (only
//!   possible if the writer is descheduled mid-write); the flow then gets
//!   the default with [`Source::Contended`] and a stamp that is already
//!   stale, so its next packet classifies again. A read never waits for
//!   the writer longer than those bounded retries.
//! - **Capacity**: an insert into a full map, or (practically never: the
//!   index has twice as many entries as records) into a key whose two
//!   buckets are full, fails with [`TableError`], leaving the map as it was.
//!
//! # Prefix snapshot: publication and reclamation
//! The writer compiles a [`PrefixPolicy`] into a new [`Snapshot`] with
//! `generation = previous + 1` and swaps it into an
//! [`arc_swap::ArcSwap`]. Each worker's [`TablesReader`] caches an `Arc`
//! of the current snapshot and checks it before each burst it handles
//! ([`TablesReader::refresh`], one relaxed pointer load when nothing
//! changed). **The grace period is the reference count**: an old snapshot
//! is freed when the writer has swapped it out and the last reader has
//! refreshed past it, i.e. after every worker passed a quiescent point (the
//! top of its poll loop). A reader that stops refreshing keeps one old
//! snapshot alive, never more; a dropped reader releases its reference.
//! The binding maps need no reclamation: their memory is preallocated and
//! reused in place, the sequence counters make reuse safe.
//!
//! # Flow-cache invalidation
//! A flow keeps its [`Classified`] (decision plus [`Stamp`]) in the flow
//! table and calls [`TablesReader::revalidate`] on every hit; on
//! [`Validity::Stale`] it classifies again. A stamp is (validity line, line
//! version, epoch):
//! - The **epoch** is one counter, on a cache line of its own, that the
//!   writer bumps (release) after every change of any map and every
//!   publication, or once after a batch of changes
//!   ([`TablesWriter::defer_epoch`], [`TablesWriter::announce`]: the
//!   mirror's batches); a reader loads it (acquire) once per
//!   [`TablesReader::refresh`]. A stamp taken at the reader's current epoch
//!   is current without anything else being read: nothing at all changed
//!   since. So a quiet appliance's flow hit reads no validity line. Changes
//!   become visible to `revalidate` at the worker's next refresh (before
//!   its next burst).
//! - Otherwise, the **validity lines** decide: an array of `AtomicU32`
//!   counters ([`TablesConfig::validity_lines`], default 1 Mi = 4 MiB: the
//!   worker prefetches the line of a flow whose stamp is behind the epoch
//!   once it has the flow's entry, a burst ahead of the lookups
//!   ([`TablesReader::prefetch_stamp`]), so the array need not fit a
//!   cache, and with 2M bindings a line is shared by ~2 subscribers
//!   instead of 32: an update storm on other subscribers re-classified
//!   enough of the benchmark's flows with 64 Ki lines to cost ~1 % of
//!   forwarding), shared by the three maps and indexed by a hash of the
//!   subscriber address. The writer bumps the key's line (release) *after*
//!   every insert, update or removal of that key in any map, then the
//!   epoch; the classifier loads the line (acquire) *before* its lookups.
//!   So a stamp is current only if no change to the subscriber's bindings
//!   was announced (its epoch moved) since the lookups began, which covers what a per-record
//!   generation cannot: a binding *inserted* for a subscriber whose flows
//!   were classified without one. Other subscribers sharing the line cost a
//!   needless reclassification, nothing more (at W writes/s a flow is
//!   re-classified W / lines times a second). A stamp whose line did not
//!   move is [`Validity::Restamped`]: the caller stores
//!   [`TablesReader::restamp`] back, so its next check is the cheap one.
//! - **Publication**: a snapshot carries the epoch it was published at (set
//!   before the swap, the shared epoch stored after); a stamp older than
//!   the reader's snapshot is stale, so publishing re-classifies every flow
//!   once. A reader that loads the epoch before the store but the snapshot
//!   after takes the snapshot's epoch, so no stamp of the previous snapshot
//!   passes as current in between.
//!
//! Epochs and versions are 32-bit. A stamp could be misjudged only after
//! 2^31 epochs (the snapshot check is a signed wrapping difference) with no
//! packet of its flow in between: with the mirror's one epoch per batch,
//! years; with one per row at 1M rows/s, 36 minutes, still far beyond the
//! flow's idle timeout.
//!
//! # Memory and cost (measured: `tables::stress`, release, this 2-core VM)
//! - 84 bytes per binding at 1 Mi capacity: a 64-byte record, 16 bytes of
//!   index (two entries), 4 bytes of free list; at most 100 bytes when the
//!   bucket count rounds up. Fixed at construction
//!   ([`TablesWriter::memory_bytes`]); 176 MB for the default 64 Ki + 1 Mi +
//!   1 Mi, plus 4 MiB of validity lines (2 bytes per binding at 2 Mi).
//! - Inserts: about 2.9 M/s on one writer thread.
//! - `classify` with 1 Mi + 1 Mi bindings and random subscribers: about
//!   1 200-1 500 TSC cycles when the coupon hits, 650-800 with no binding
//!   (bucket and record cache misses, plus TLB misses on 4 KiB pages);
//!   500-850 and 200-350 when the tables fit in the L3. Paid once per flow.
//! - `revalidate`: one compare while the epoch stands; 3-6 cycles per check
//!   in bulk while it moves (one relaxed load of a prefetched line).
//!
//! # Use
//! ```
//! use sluice_dataplane::packet::{ActionSet, Dscp, FlowKey, PROTO_TCP};
//! use sluice_dataplane::stats::Direction;
//! use sluice_dataplane::tables::*;
//!
//! // Control thread: build once, hand a reader to each worker.
//! let mut w = TablesWriter::new(TablesConfig {
//!     sp_address_capacity: 64,
//!     coupon_capacity: 1024,
//!     login_capacity: 1024,
//!     ..Default::default()
//! })?;
//! let mut reader = w.reader();
//! let sub: std::net::IpAddr = "10.0.0.1".parse().unwrap();
//! w.apply(&[Op::Upsert {
//!     table: Table::Coupon,
//!     subscriber: sub,
//!     binding: Binding {
//!         grant: Grant::Level {
//!             level: 5,
//!             actions: ActionSet { dscp: Dscp::new(46), ..Default::default() },
//!         },
//!         meter: Some(17),
//!         only_to: None,
//!     },
//! }])?;
//!
//! // Worker: before each burst, then per packet.
//! reader.refresh();
//! let key = FlowKey::new((sub, 40000), ("192.0.2.1".parse().unwrap(), 443), PROTO_TCP, 0,
//!     Direction::Upstream).unwrap();
//! let mut cached: Classified = reader.classify(&key); // on a flow miss; stored in the flow
//! assert_eq!((cached.source, cached.decision.level), (Source::Coupon, 5));
//! // On every flow hit:
//! if !reader.is_current(cached.stamp) {
//!     cached = reader.classify(&key); // and FlowTable::set_decision
//! }
//! # w.remove(Table::Coupon, sub);
//! # reader.refresh();
//! # assert!(!reader.is_current(cached.stamp));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Writer
//! One [`TablesWriter`] (not `Clone`, every write takes `&mut self`) is the
//! single writer. A batch ([`TablesWriter::apply`]) is applied op by op;
//! if one fails the ones before it are undone in reverse order and the
//! error names the op, so a refused batch leaves the bindings as they were
//! (readers may have seen the intermediate states; the line bumps of the
//! undo invalidate any flow classified meanwhile). Each op is atomic to
//! readers; a batch is not.
//!
//! # Layout
//! - [`types`]: the API's plain types (decisions, bindings, ops, errors).
//! - `record`: a binding record's words and its sequence protocol.
//! - `exact`: the exact-match map (index and records).
//! - `lpm`: longest-prefix match over sorted intervals.
//! - [`snapshot`]: the prefix policy and its compiled snapshot.
//! - `tests`, `stress`: unit tests; the concurrency, oracle, scale tests and
//!   the cost measurements.
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::cache::Cache;
use arc_swap::ArcSwap;
use crossbeam_utils::CachePadded;

use crate::packet::parse::addr_bits;
use crate::packet::{ActionSet, FlowKey, PROTO_TCP, PROTO_UDP};
use crate::stats::Direction;

mod exact;
mod lpm;
mod record;
pub mod snapshot;
pub mod types;

#[cfg(test)]
mod stress;

use exact::{BindingMap, Found, KeyHash, MapWriter, Probe};
use record::{Decoded, Key, Words};
pub use snapshot::{EligibilityRule, PrefixPolicy, Snapshot, SpPrefix};
pub use types::{
    BatchError, Binding, FastDecision, Grant, Op, Prefix, Restriction, Source, Table, TableError,
    Upserted, BEST_EFFORT, MAX_BINDING_METER, MAX_LEVEL,
};

/// The largest capacity of one binding map.
pub const MAX_CAPACITY: u32 = 1 << 24;

/// Sizes, fixed at construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TablesConfig {
    pub sp_address_capacity: u32,
    pub coupon_capacity: u32,
    pub login_capacity: u32,
    /// Validity counters (a power of two); see the module doc.
    pub validity_lines: u32,
    /// Hash seed; give each appliance a random one.
    pub seed: u64,
}

impl Default for TablesConfig {
    /// 64 Ki SP addresses, 1 Mi coupons, 1 Mi logins (about 176 MB),
    /// 1 Mi validity lines (4 MiB).
    fn default() -> Self {
        TablesConfig {
            sp_address_capacity: 1 << 16,
            coupon_capacity: 1 << 20,
            login_capacity: 1 << 20,
            validity_lines: 1 << 20,
            seed: 0x5107_ce7a_b1e5_0f00,
        }
    }
}

impl TablesConfig {
    fn capacity(&self, t: Table) -> u32 {
        match t {
            Table::SpAddress => self.sp_address_capacity,
            Table::Coupon => self.coupon_capacity,
            Table::Login => self.login_capacity,
        }
    }

    pub fn validate(&self) -> Result<(), TableError> {
        for t in Table::ALL {
            let c = self.capacity(t);
            if c == 0 || c > MAX_CAPACITY {
                return Err(TableError::Config {
                    what: "binding table capacity",
                    value: u64::from(c),
                    expected: "1..=16777216",
                });
            }
        }
        let l = self.validity_lines;
        if !l.is_power_of_two() || l > MAX_CAPACITY {
            return Err(TableError::Config {
                what: "validity lines",
                value: u64::from(l),
                expected: "a power of two up to 16777216",
            });
        }
        Ok(())
    }
}

/// What a classified flow depends on; see the module doc. The default
/// stamp is never current.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Stamp {
    line: u32,
    version: u32,
    /// The reader's epoch when the flow was classified or last
    /// revalidated.
    epoch: u32,
}

/// What [`TablesReader::revalidate`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// Nothing changed since the stamp: no validity line was read.
    Current,
    /// Something changed, but not for this flow: the stamp was moved to the
    /// current epoch (store it back so that the next check is the cheap one).
    Restamped,
    /// Classify again.
    Stale,
}

/// A classification: what the flow gets, which step decided, and the stamp
/// to check on later packets. `Copy` and 56 bytes: the flow table's
/// payload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Classified {
    pub decision: FastDecision,
    pub source: Source,
    pub stamp: Stamp,
}

/// What readers and the writer share.
struct Shared {
    maps: [BindingMap; 3],
    /// Bindings in all maps (written by the writer after each change).
    bindings: AtomicUsize,
    lines: Box<[AtomicU32]>,
    line_mask: u32,
    seed: u64,
    /// Bumped (release) after every change of any map and every snapshot
    /// publication; a reader loads it once per refresh. On a line of its
    /// own: the writer stores to it at every change.
    epoch: CachePadded<AtomicU32>,
}

impl Shared {
    #[inline]
    fn hash(&self, version: crate::packet::IpVersion, addr: u128) -> KeyHash {
        KeyHash::new(Key { version, addr }, self.seed)
    }

    #[inline]
    fn line(&self, h: &KeyHash) -> &AtomicU32 {
        // The mask keeps the index in bounds (the length is a power of two).
        &self.lines[(h.line_bits() & self.line_mask) as usize]
    }

    fn map(&self, t: Table) -> &BindingMap {
        &self.maps[t as usize]
    }
}

/// The single writer: the control thread's handle. Not `Clone`.
pub struct TablesWriter {
    shared: Arc<Shared>,
    writers: [MapWriter; 3],
    swap: Arc<ArcSwap<Snapshot>>,
    generation: u64,
    live: Arc<AtomicUsize>,
    /// Between [`TablesWriter::defer_epoch`] and [`TablesWriter::announce`]:
    /// changes bump their lines but not the epoch.
    deferred: bool,
    /// A change was made while deferred.
    pending: bool,
}

/// One worker's handle: cheap to clone (one per worker), `Send`.
#[derive(Clone)]
pub struct TablesReader {
    shared: Arc<Shared>,
    cache: Cache<Arc<ArcSwap<Snapshot>>, Arc<Snapshot>>,
    snap: Arc<Snapshot>,
    /// The epoch as of the last refresh (see [`TablesReader::refresh`]).
    epoch: u32,
}

/// An undo step of a batch.
enum Undo {
    /// Remove the record these words identify.
    Remove(Table, KeyHash, Words),
    Restore(Table, KeyHash, Words),
}

impl TablesWriter {
    /// Allocates every table (and touches its memory, so the fast path
    /// takes no page faults) and publishes generation 1 of an empty
    /// [`PrefixPolicy`].
    pub fn new(cfg: TablesConfig) -> Result<TablesWriter, TableError> {
        cfg.validate()?;
        let [(m0, w0), (m1, w1), (m2, w2)] =
            Table::ALL.map(|t| BindingMap::new(t, cfg.capacity(t), t == Table::Coupon));
        let shared = Arc::new(Shared {
            maps: [m0, m1, m2],
            bindings: AtomicUsize::new(0),
            lines: (0..cfg.validity_lines).map(|_| AtomicU32::new(0)).collect(),
            line_mask: cfg.validity_lines - 1,
            seed: cfg.seed,
            epoch: CachePadded::new(AtomicU32::new(1)),
        });
        let live = Arc::new(AtomicUsize::new(0));
        let mut first = Snapshot::compile(&PrefixPolicy::default(), 1, &live)?;
        first.epoch = 1;
        Ok(TablesWriter {
            shared,
            writers: [w0, w1, w2],
            swap: Arc::new(ArcSwap::from_pointee(first)),
            generation: 1,
            live,
            deferred: false,
            pending: false,
        })
    }

    /// A handle for one worker.
    pub fn reader(&self) -> TablesReader {
        let cache = Cache::new(Arc::clone(&self.swap));
        let snap = self.swap.load_full();
        let mut reader = TablesReader {
            shared: Arc::clone(&self.shared),
            cache,
            snap,
            epoch: 0,
        };
        reader.refresh();
        reader
    }

    /// Inserts or replaces `subscriber`'s binding in `table`.
    pub fn upsert(
        &mut self,
        table: Table,
        subscriber: IpAddr,
        binding: &Binding,
    ) -> Result<Upserted, TableError> {
        let h = self.hash(subscriber);
        let words = record::encode(&h.key, binding)?;
        self.upsert_words(table, &h, &words)
    }

    /// Removes `subscriber`'s bindings from `table` (in the coupon table,
    /// all of them); false if there was none.
    pub fn remove(&mut self, table: Table, subscriber: IpAddr) -> bool {
        let h = self.hash(subscriber);
        self.remove_hashed(table, &h)
    }

    /// Removes the one binding of `subscriber` in `table` with this
    /// restriction (the coupon table keeps one per restriction; the other
    /// tables one per subscriber, whatever the restriction); false if there
    /// was none.
    pub fn remove_one(
        &mut self,
        table: Table,
        subscriber: IpAddr,
        only_to: Option<Restriction>,
    ) -> Result<bool, TableError> {
        let h = self.hash(subscriber);
        let words = identity(&h, only_to)?;
        Ok(self.remove_one_hashed(table, &h, &words))
    }

    /// Applies a batch, all or nothing (see the module doc).
    pub fn apply(&mut self, ops: &[Op]) -> Result<(), BatchError> {
        let mut undo = Vec::new();
        for (index, op) in ops.iter().enumerate() {
            if let Err(error) = self.apply_one(op, &mut undo) {
                for u in undo.into_iter().rev() {
                    // Undoing in reverse order returns each map to a state
                    // it was in, where the restored key fitted: these
                    // cannot fail (and are ignored if they somehow did).
                    match u {
                        Undo::Remove(t, h, w) => {
                            self.remove_one_hashed(t, &h, &w);
                        }
                        Undo::Restore(t, h, w) => {
                            let _ = self.upsert_words(t, &h, &w);
                        }
                    }
                }
                return Err(BatchError { index, error });
            }
        }
        Ok(())
    }

    fn apply_one(&mut self, op: &Op, undo: &mut Vec<Undo>) -> Result<(), TableError> {
        match *op {
            Op::Upsert {
                table,
                subscriber,
                ref binding,
            } => {
                let h = self.hash(subscriber);
                let words = record::encode(&h.key, binding)?;
                let old = self.shared.map(table).get_words(&h, &words);
                match (self.upsert_words(table, &h, &words)?, old) {
                    (Upserted::Inserted, _) => undo.push(Undo::Remove(table, h, words)),
                    (Upserted::Updated, Some(old)) => undo.push(Undo::Restore(table, h, old)),
                    _ => {}
                }
            }
            Op::Remove { table, subscriber } => {
                let h = self.hash(subscriber);
                for old in self.shared.map(table).all_words(&h) {
                    self.remove_one_hashed(table, &h, &old);
                    undo.push(Undo::Restore(table, h, old));
                }
            }
            Op::RemoveOne {
                table,
                subscriber,
                only_to,
            } => {
                let h = self.hash(subscriber);
                let words = identity(&h, only_to)?;
                if let Some(old) = self.shared.map(table).get_words(&h, &words) {
                    self.remove_one_hashed(table, &h, &old);
                    undo.push(Undo::Restore(table, h, old));
                }
            }
        }
        Ok(())
    }

    fn hash(&self, a: IpAddr) -> KeyHash {
        let (v, bits) = addr_bits(a);
        self.shared.hash(v, bits)
    }

    /// Prefetches what [`TablesWriter::apply`] will read and write for
    /// `subscriber` in `tables`: its candidate buckets and its validity
    /// line. A batch touches subscribers spread over maps of a million
    /// records, so each of those is a cache miss; issued a few subscribers
    /// ahead, they overlap instead of following one another (the mirror
    /// does this; `sluice-perf control` times it).
    pub fn prefetch(&self, tables: &[Table], subscriber: IpAddr) {
        let h = self.hash(subscriber);
        for &t in tables {
            self.shared.map(t).prefetch(&h);
        }
        crate::dpdk::prefetch(self.shared.line(&h));
    }

    fn upsert_words(&mut self, t: Table, h: &KeyHash, w: &Words) -> Result<Upserted, TableError> {
        let r = self
            .shared
            .map(t)
            .upsert(&mut self.writers[t as usize], h, w)?;
        if r != Upserted::Unchanged {
            self.bump(h);
        }
        Ok(r)
    }

    fn remove_hashed(&mut self, t: Table, h: &KeyHash) -> bool {
        let removed = self.shared.map(t).remove(&mut self.writers[t as usize], h);
        if removed > 0 {
            self.bump(h);
        }
        removed > 0
    }

    fn remove_one_hashed(&mut self, t: Table, h: &KeyHash, words: &Words) -> bool {
        let removed = self
            .shared
            .map(t)
            .remove_one(&mut self.writers[t as usize], h, words);
        if removed {
            self.bump(h);
        }
        removed
    }

    /// Invalidates the flows of `h`'s validity line: after the change.
    fn bump(&mut self, h: &KeyHash) {
        let n = Table::ALL
            .iter()
            .map(|&t| self.shared.map(t).len(&self.writers[t as usize]) as usize)
            .sum();
        self.shared.bindings.store(n, Ordering::Relaxed);
        let l = self.shared.line(h);
        // The only writer: a load and a store, no locked instruction.
        l.store(l.load(Ordering::Relaxed).wrapping_add(1), Ordering::Release);
        if self.deferred {
            self.pending = true;
        } else {
            self.next_epoch();
        }
    }

    /// Until [`TablesWriter::announce`], changes move their validity lines
    /// but not the epoch: workers keep the decisions they have until the
    /// whole batch is in, then revalidate once. The epoch line is then
    /// written once per batch instead of once per row (every write of it
    /// costs each worker a cache miss at its next refresh, and the writer
    /// a miss too once a worker has read it).
    pub fn defer_epoch(&mut self) {
        self.deferred = true;
    }

    /// Moves the epoch once for the changes since
    /// [`TablesWriter::defer_epoch`] (none: nothing to announce). Call it
    /// before acknowledging the batch.
    pub fn announce(&mut self) {
        self.deferred = false;
        if std::mem::take(&mut self.pending) {
            self.next_epoch();
        }
    }

    /// Moves the epoch on (after the change it announces).
    fn next_epoch(&self) {
        let e = self.shared.epoch.load(Ordering::Relaxed).wrapping_add(1);
        self.shared.epoch.store(e, Ordering::Release);
    }

    /// The binding `subscriber` has in `table`, as last written (in the
    /// coupon table, the most specific one).
    pub fn get(&self, table: Table, subscriber: IpAddr) -> Option<Binding> {
        self.bindings(table, subscriber).into_iter().next()
    }

    /// Every binding `subscriber` has in `table`, most specific first.
    pub fn bindings(&self, table: Table, subscriber: IpAddr) -> Vec<Binding> {
        self.shared.map(table).get(&self.hash(subscriber))
    }

    /// Compiles and publishes a new prefix snapshot; returns its
    /// generation. On error nothing is published.
    pub fn publish(&mut self, policy: &PrefixPolicy) -> Result<u64, TableError> {
        let generation = self.generation + 1;
        let mut snap = Snapshot::compile(policy, generation, &self.live)?;
        // The epoch the snapshot starts, stored before it is published and
        // made the shared epoch after: a reader that sees the snapshot before
        // the epoch takes the snapshot's (see `TablesReader::refresh`).
        snap.epoch = self.shared.epoch.load(Ordering::Relaxed).wrapping_add(1);
        self.swap.store(Arc::new(snap));
        self.next_epoch();
        self.generation = generation;
        Ok(generation)
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.swap.load_full()
    }

    /// The current snapshot's generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Bindings in use in `table`.
    pub fn len(&self, table: Table) -> u32 {
        self.shared.map(table).len(&self.writers[table as usize])
    }

    pub fn capacity(&self, table: Table) -> u32 {
        self.shared.map(table).capacity()
    }

    /// Bytes of the binding maps and validity lines: allocated at
    /// construction, constant afterwards. Snapshots are extra
    /// ([`Snapshot::bytes`]).
    pub fn memory_bytes(&self) -> usize {
        self.shared
            .maps
            .iter()
            .map(BindingMap::memory_bytes)
            .sum::<usize>()
            + std::mem::size_of_val(&*self.shared.lines)
    }

    /// Snapshots not yet freed: the current one plus any old one a reader
    /// has not refreshed past.
    pub fn live_snapshots(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }
}

impl TablesReader {
    /// Picks up the current snapshot and epoch. The worker calls it before
    /// each burst it handles: its quiescent point (an idle worker keeps at
    /// most one old snapshot alive, and sees the changes at its next burst,
    /// before the burst's packets).
    #[inline]
    pub fn refresh(&mut self) {
        // Acquire, before the snapshot: a snapshot published before this
        // epoch is the one loaded below, and every change announced by it
        // is visible to this worker's lookups.
        let e = self.shared.epoch.load(Ordering::Acquire);
        let cur = self.cache.load();
        if !Arc::ptr_eq(cur, &self.snap) {
            self.snap = Arc::clone(cur);
        }
        // A snapshot seen before its epoch was stored: take the snapshot's,
        // so that no stamp of the previous snapshot passes as current.
        let e = if (e.wrapping_sub(self.snap.epoch) as i32) < 0 {
            self.snap.epoch
        } else {
            e
        };
        self.epoch = e;
    }

    /// The snapshot this reader classifies against.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snap
    }

    /// Whether every flow would get the snapshot's default, which rewrites
    /// nothing: no binding, no SP prefix. A worker may then skip
    /// classification (and, with no reverse state to keep, even parsing).
    /// One relaxed load; a binding added meanwhile is seen by the next
    /// call (the worker calls it once per burst).
    #[inline]
    pub fn is_inert(&self) -> bool {
        self.snap.inert && self.shared.bindings.load(Ordering::Relaxed) == 0
    }

    /// Prefetches the validity line of a flow's stamp if
    /// [`TablesReader::revalidate`] will read it (the stamp is behind the
    /// epoch), so that the read finds it in L1. The worker calls it with
    /// the decision [`crate::flow::FlowTable::prefetch_entry`] found, a
    /// burst ahead of the lookups: the line's miss overlaps the others of
    /// the burst instead of following the entry read.
    ///
    /// It used to hash each packet's subscriber to prefetch its line
    /// before the flow entry was read, on every packet while the epoch had
    /// moved in the last 4096 refreshes, that is all through an update
    /// storm: the hash and the prefetch on every packet, although a flow
    /// needs its line once per epoch (~1 packet in 15 at 110 batches/s
    /// and 4096 flows). A flow's stamp says which line and whether it is
    /// needed, for one compare.
    #[inline]
    pub fn prefetch_stamp(&self, s: Stamp) {
        if s.epoch != self.epoch {
            if let Some(l) = self.shared.lines.get(s.line as usize) {
                crate::dpdk::prefetch(l);
            }
        }
    }

    /// The hash of the subscriber end of `k` (the source upstream, the
    /// destination downstream): its bindings' key and its validity line.
    #[inline]
    fn subscriber_hash(&self, k: &FlowKey) -> KeyHash {
        let subscriber = if k.direction == Direction::Upstream {
            k.src
        } else {
            k.dst
        };
        self.shared.hash(k.version, subscriber)
    }

    /// Whether a flow's cached classification still holds, as of the last
    /// [`TablesReader::refresh`]: one compare while nothing changed, else
    /// the snapshot check and one relaxed load of the flow's line.
    #[inline]
    pub fn is_current(&self, s: Stamp) -> bool {
        self.revalidate(s) != Validity::Stale
    }

    /// [`TablesReader::is_current`], telling apart a stamp that needed its
    /// line read; [`TablesReader::restamp`] then saves the next check that
    /// read.
    #[inline]
    pub fn revalidate(&self, s: Stamp) -> Validity {
        if s.epoch == self.epoch {
            return Validity::Current;
        }
        // Stamped under this snapshot (at or after the epoch it started),
        // and no change to the subscriber's bindings since.
        let same_snapshot = (s.epoch.wrapping_sub(self.snap.epoch) as i32) >= 0;
        let same_line = self
            .shared
            .lines
            .get(s.line as usize)
            .is_some_and(|l| l.load(Ordering::Relaxed) == s.version);
        if same_snapshot && same_line {
            Validity::Restamped
        } else {
            Validity::Stale
        }
    }

    /// `s` moved to the current epoch; for a stamp that
    /// [`TablesReader::revalidate`] found [`Validity::Restamped`].
    #[inline]
    pub fn restamp(&self, s: Stamp) -> Stamp {
        Stamp {
            epoch: self.epoch,
            ..s
        }
    }

    /// Classifies a new flow (see the precedence in the module doc).
    #[inline]
    pub fn classify(&self, k: &FlowKey) -> Classified {
        let snap = &*self.snap;
        let upstream = k.direction == Direction::Upstream;
        let h = self.subscriber_hash(k);
        let line = h.line_bits() & self.shared.line_mask;
        // Acquire: the changes whose bump we see are visible to the lookups.
        let version = self.shared.line(&h).load(Ordering::Acquire);
        let mut stamp = Stamp {
            line,
            version,
            epoch: self.epoch,
        };
        let (decision, source) = if upstream {
            match self.decide(snap, &h, k) {
                Ok(d) => d,
                Err(Contended) => {
                    // Never current: neither the epoch nor the version.
                    stamp.version = version.wrapping_sub(1);
                    stamp.epoch = self.epoch.wrapping_sub(1);
                    (snap.default, Source::Contended)
                }
            }
        } else {
            (snap.default, Source::Default)
        };
        Classified {
            decision: FastDecision {
                actions: fit(decision.actions, k),
                ..decision
            },
            source,
            stamp,
        }
    }

    #[inline]
    fn decide(
        &self,
        snap: &Snapshot,
        h: &KeyHash,
        k: &FlowKey,
    ) -> Result<(FastDecision, Source), Contended> {
        // All six buckets are loaded first so that their misses overlap;
        // the line version was loaded before, so a change after these loads
        // makes the stamp stale.
        let probes = Table::ALL.map(|t| self.shared.map(t).probe(h));
        // Port-specific rows match TCP and UDP only.
        let port = if has_ports(k) { k.dst_port } else { 0 };
        let [sp, coupon, login] = &probes;
        if let Some(d) = self.bound(Table::SpAddress, sp, snap, h, k)? {
            return Ok((d, Source::SpAddress));
        }
        if let Some(d) = snap.sp.lookup(k.version, k.dst, port) {
            return Ok((*d, Source::SpPrefix));
        }
        if snap.is_eligible(k.version, k.dst, port) {
            if let Some(d) = self.bound(Table::Coupon, coupon, snap, h, k)? {
                return Ok((d, Source::Coupon));
            }
            if let Some(d) = self.bound(Table::Login, login, snap, h, k)? {
                return Ok((d, Source::Login));
            }
        }
        Ok((snap.default, Source::Default))
    }

    /// The decision of the subscriber's binding in `t`, if it has one that
    /// applies to this flow.
    #[inline]
    fn bound(
        &self,
        t: Table,
        probe: &Probe,
        snap: &Snapshot,
        h: &KeyHash,
        k: &FlowKey,
    ) -> Result<Option<FastDecision>, Contended> {
        let applies = |d: &Decoded| {
            d.restrict_net.is_none_or(|(net, mask)| k.dst & mask == net)
                && d.binding
                    .only_to
                    .and_then(|r| r.port)
                    .is_none_or(|p| p == k.dst_port && has_ports(k))
        };
        let d = match self.shared.map(t).resolve(h, probe, applies) {
            Found::Hit { decoded, .. } => decoded,
            Found::Miss => return Ok(None),
            Found::Contended => return Err(Contended),
        };
        Ok(match d.binding.grant {
            Grant::Level { level, actions } => Some(FastDecision {
                level,
                actions,
                meter: d.binding.meter,
            }),
            Grant::Tier(i) => snap.tiers.get(usize::from(i)).map(|t| FastDecision {
                meter: d.binding.meter.or(t.meter),
                ..*t
            }),
        })
    }

    /// The binding `subscriber` has in `table` and its record generation,
    /// as a reader sees it (diagnostics).
    pub fn lookup(&self, table: Table, subscriber: IpAddr) -> Option<(Binding, u32)> {
        let (v, bits) = addr_bits(subscriber);
        match self.shared.map(table).lookup(&self.shared.hash(v, bits)) {
            Found::Hit {
                decoded,
                generation,
            } => Some((decoded.binding, generation)),
            // Diagnostics: a contended read reports nothing.
            Found::Miss | Found::Contended => None,
        }
    }
}

/// The words that identify `h`'s record with this restriction (the
/// binding itself does not matter).
fn identity(h: &KeyHash, only_to: Option<Restriction>) -> Result<Words, TableError> {
    record::encode(
        &h.key,
        &Binding {
            only_to,
            ..Binding::default()
        },
    )
}

/// Whether a flow's protocol has ports (port-restricted rows match only
/// those).
#[inline]
fn has_ports(k: &FlowKey) -> bool {
    k.proto == PROTO_TCP || k.proto == PROTO_UDP
}

/// A binding record kept changing during a classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Contended;

/// Restricts actions to what applies to this flow: remaps for TCP and UDP
/// flows that start upstream, to an address of the flow's family; MSS
/// clamping for TCP.
#[inline]
pub(crate) fn fit(mut a: ActionSet, k: &FlowKey) -> ActionSet {
    let remappable =
        (k.proto == PROTO_TCP || k.proto == PROTO_UDP) && k.direction == Direction::Upstream;
    if !remappable {
        a.dst_port = None;
        a.dst_addr = None;
    }
    if a.dst_addr.is_some_and(|d| addr_bits(d).0 != k.version) {
        a.dst_addr = None;
    }
    if k.proto != PROTO_TCP {
        a.mss_clamp = None;
    }
    a
}

#[cfg(test)]
mod tests;
