//! The per-worker flow table: established flows keep their decision and the
//! reverse-rewrite state their replies need. No DPDK, no locks (one table
//! per worker; symmetric RSS puts both directions on the same worker), no
//! allocation after [`FlowTable::new`], no clock reads (the caller passes
//! `now`, in TSC cycles or nanoseconds, the same unit as the timeouts).
//!
//! # Both directions
//! An entry is stored under two keys: the forward key (the first packet's,
//! before any rewrite) and the reply key (what replies carry once the
//! forward rewrite is in place; [`FlowKey::reply_key`]). If C sent to S:80
//! and the flow rewrites that to P:8080, the reply key is
//! `P:8080 -> C, other direction`, so a reply from the priority endpoint
//! finds the entry and gets its source rewritten back to S:80
//! ([`Side::Reply`] plus [`FlowHit::reverse`]).
//!
//! If another live flow already owns the reply key (two clients' flows would
//! become indistinguishable after the rewrite), the insert is refused and
//! counted in `conflicts`: the new flow is then forwarded unrewritten rather
//! than breaking the existing one.
//!
//! # Layout and cost
//! Entries live in one preallocated array with a free list. The index is an
//! array of 64-byte buckets of 8 slots (a 32-bit signature and an entry
//! reference each); a key may sit in either of two buckets, chosen by the
//! hash ("two choices", inserted into the emptier one). A lookup is one
//! hash, at most two bucket cache lines and one key compare per signature
//! match. The index has 4 slots per entry, so with every entry in use its
//! buckets are half full on average.
//!
//! An entry is three cache lines. The first holds what a forward hit
//! needs: the forward key packed to 42 bytes, the last-seen time, the state
//! bits and the decision (at most 18 bytes; [`FlowDecision`] is exactly
//! that). The other two hold the reply key, the reverse rewrite and the
//! forward actions, read by replies and by flows with remaps only. So a
//! forward hit reads its bucket and one entry line, both prefetched in a
//! bulk lookup ([`FlowTable::prefetch`], [`FlowTable::prefetch_entry`]).
//!
//! The hash is seeded folded multiplies over the key's words (no SipHash:
//! the bounded window below, not the hash, is the defence against crafted
//! keys; a per-table random seed makes targeting a bucket harder).
//!
//! # Expiry and eviction
//! - Idle timeout: an entry unseen for longer than `idle_timeout` is
//!   expired when next met (lookup, insert, the [`FlowTable::expire`]
//!   sweep). Times are kept in 32 bits, in quanta of 1/65 536 to 1/32 768
//!   of the idle timeout, timeouts rounded up (exact for timeouts below
//!   65 536 units). After a FIN or RST
//!   in either direction the shorter `closing_timeout` applies; a new SYN
//!   on a closing flow starts a new flow (the old entry ends, so the
//!   policy is asked again).
//! - Table full (no free entry): evict from a sample of 16 entries taken
//!   round-robin, the first expired one, else the least recently seen.
//! - Both buckets of a key full: evict within that 16-slot probe window,
//!   expired first, else the least recently seen.
//!
//! Removals of expired entries count as `expirations`, of live ones as
//! `evictions`; both are counted, never silent, and nothing ever grows.
use thiserror::Error;

use crate::packet::{ActionSet, Dscp, FlowKey, IpVersion, ReverseRewrite, TCP_ACK, TCP_FIN};
use crate::packet::{TCP_RST, TCP_SYN};
use crate::stats::Direction;
use crate::tables::Stamp;

/// The largest capacity [`FlowTable::new`] accepts.
pub const MAX_CAPACITY: u32 = 1 << 24;

const SLOTS: usize = 8;
/// A free slot's reference. A used one is `entry index << 1 | side` (0
/// forward, 1 reply), plus [`REF_REMAPS`].
const EMPTY: u32 = u32::MAX;
/// On a forward reference: the flow's forward actions have remaps, on the
/// entry's second line, which [`FlowTable::prefetch_entry`] then
/// prefetches too. Indices are below 2^24 ([`MAX_CAPACITY`]), so the bit is
/// free and a flagged reference is never [`EMPTY`].
const REF_REMAPS: u32 = 1 << 30;

/// Whether forward `actions` do more than set the DSCP.
#[inline]
fn has_remaps(actions: &ActionSet) -> bool {
    actions.dst_port.is_some() || actions.dst_addr.is_some() || actions.mss_clamp.is_some()
}

/// The entry index of a slot reference.
#[inline(always)]
fn ref_index(r: u32) -> usize {
    ((r & !REF_REMAPS) >> 1) as usize
}
const EVICT_SAMPLE: usize = 16;

/// The per-flow payload the table keeps for the policy: what every packet
/// of the flow needs, in 18 bytes so that it shares the flow's first cache
/// line with the key (see the module doc). The forward rewrites beyond the
/// DSCP (port and address remaps, MSS clamp) are kept with the reply state
/// ([`FlowHit::actions`]); [`FlowDecision::remaps`] says whether there are
/// any, so that a flow without them never reads that line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, packed(2))]
pub struct FlowDecision {
    stamp: Stamp,
    /// The binding's meter ([`NO_METER`]: unmetered).
    meter: u32,
    /// Bits 0-2: the level; bit 6: pinned; bit 7: remaps.
    bits: u8,
    /// Bit 7: a DSCP is set; bits 0-5: the DSCP.
    dscp: u8,
}

/// [`FlowDecision::meter`] of an unmetered flow.
pub const NO_METER: u32 = u32::MAX;

const PINNED: u8 = 1 << 6;
const REMAPS: u8 = 1 << 7;
const HAS_DSCP: u8 = 1 << 7;

impl FlowDecision {
    /// A flow's decision from its forward `actions`, its priority `level`
    /// (0 highest, at most 7), its meter and its policy stamp. `pinned`: decided
    /// by a static config rule, final for the flow's life; a decision from
    /// the policy tables is re-checked with its stamp on every forward
    /// packet and re-classified when stale.
    pub fn new(actions: &ActionSet, level: u8, pinned: bool, meter: u32, stamp: Stamp) -> Self {
        let remaps = has_remaps(actions);
        FlowDecision {
            stamp,
            meter,
            bits: (level & 7) | if pinned { PINNED } else { 0 } | if remaps { REMAPS } else { 0 },
            dscp: actions.dscp.map_or(0, |d| HAS_DSCP | d.value()),
        }
    }

    /// The priority level (0 highest; see the policy model).
    #[inline]
    pub fn level(&self) -> u8 {
        self.bits & 7
    }

    #[inline]
    pub fn pinned(&self) -> bool {
        self.bits & PINNED != 0
    }

    /// Whether the forward actions do more than set the DSCP: then they are
    /// in [`FlowHit::actions`].
    #[inline]
    pub fn remaps(&self) -> bool {
        self.bits & REMAPS != 0
    }

    #[inline]
    pub fn dscp(&self) -> Option<Dscp> {
        if self.dscp & HAS_DSCP != 0 {
            Dscp::new(self.dscp & 0x3f)
        } else {
            None
        }
    }

    #[inline]
    pub fn meter(&self) -> u32 {
        self.meter
    }

    #[inline]
    pub fn stamp(&self) -> Stamp {
        self.stamp
    }

    /// The same decision with another stamp.
    #[inline]
    pub fn with_stamp(self, stamp: Stamp) -> Self {
        FlowDecision { stamp, ..self }
    }

    /// The forward actions of a flow whose hit is `hit`: the DSCP alone,
    /// or everything from the reply line when there are remaps.
    #[inline]
    pub fn actions(&self, hit: &FlowHit<'_, FlowDecision>) -> ActionSet {
        if self.remaps() {
            *hit.actions
        } else {
            ActionSet {
                dscp: self.dscp(),
                ..ActionSet::default()
            }
        }
    }
}

impl Default for FlowDecision {
    fn default() -> Self {
        FlowDecision::new(
            &ActionSet::default(),
            crate::tables::BEST_EFFORT,
            false,
            NO_METER,
            Stamp::default(),
        )
    }
}

/// Sizing and timeouts, fixed at construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowTableConfig {
    /// Maximum number of flows (each has two keys). 1..=[`MAX_CAPACITY`].
    pub capacity: u32,
    /// Idle time after which a flow expires, in the unit of `now`.
    pub idle_timeout: u64,
    /// Idle time after which a flow that saw FIN or RST expires. At most
    /// `idle_timeout`.
    pub closing_timeout: u64,
    /// Hash seed; give each table a random one.
    pub seed: u64,
}

impl Default for FlowTableConfig {
    /// 65 536 flows; timeouts in nanoseconds: 120 s idle, 10 s closing.
    fn default() -> Self {
        FlowTableConfig {
            capacity: 65_536,
            idle_timeout: 120_000_000_000,
            closing_timeout: 10_000_000_000,
            seed: 0x5eed_1ce5_0ff1_0e5e,
        }
    }
}

/// A rejected [`FlowTableConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FlowTableError {
    #[error("flow table capacity {0}: expected 1..={MAX_CAPACITY}")]
    Capacity(u32),
    #[error("flow closing timeout {closing} is longer than the idle timeout {idle}")]
    Timeouts { closing: u64, idle: u64 },
}

/// Why [`FlowTable::insert`] stored nothing. Counted in `conflicts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum InsertError {
    /// Another live flow already owns this flow's reply key.
    #[error("another live flow owns the reply key")]
    ReplyKeyInUse,
    /// No slot could be freed. Cannot happen with a capacity of at least
    /// one; it exists so that the insert path has no panic.
    #[error("no flow slot could be freed")]
    NoRoom,
}

/// Which of a flow's two keys a packet matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Same direction as the packet that created the flow: apply the
    /// decision's actions.
    Forward,
    /// The replies: apply [`FlowHit::reverse`].
    Reply,
}

/// Names an entry between a lookup and a [`FlowTable::set_decision`] on the
/// same packet. Stale after the entry is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowHandle(u32);

/// A successful lookup. The decision is copied out (18 bytes); the reply
/// state and the forward remaps are borrowed, since only replies and flows
/// with remaps read them (a second cache line).
#[derive(Debug, Clone, Copy)]
pub struct FlowHit<'a, D> {
    pub handle: FlowHandle,
    pub side: Side,
    pub decision: D,
    pub reverse: &'a ReverseRewrite,
    /// The forward actions as inserted or last set
    /// ([`FlowTable::set_actions`]). [`FlowDecision::actions`] reads them
    /// only when the decision has remaps; set them whenever a decision with
    /// remaps is set.
    pub actions: &'a ActionSet,
}

/// Where [`FlowTable::prefetch_entry`] expects a key's flow (an entry
/// reference), for [`FlowTable::lookup_hashed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hint(u32);

impl Hint {
    /// No expectation: the lookup walks the buckets.
    pub const NONE: Hint = Hint(EMPTY);
}

/// Counters since construction. The worker copies them into its published
/// stats once per burst.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowCounters {
    pub hits: u64,
    pub misses: u64,
    pub inserts: u64,
    /// Live flows removed to make room.
    pub evictions: u64,
    /// Flows removed because their timeout had passed (including closing
    /// flows ended by a new SYN).
    pub expirations: u64,
    /// Inserts refused with [`InsertError::ReplyKeyInUse`].
    pub conflicts: u64,
    /// Flows removed by [`FlowTable::remove`] or replaced by an insert of
    /// the same forward key.
    pub removals: u64,
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Bucket {
    sig: [u32; SLOTS],
    /// References ([`EMPTY`], [`REF_REMAPS`]).
    slot: [u32; SLOTS],
}

const EMPTY_BUCKET: Bucket = Bucket {
    sig: [0; SLOTS],
    slot: [EMPTY; SLOTS],
};

/// Kind bits of [`Hot::kind`] and [`PackedKey::kind`]: the protocol, then
/// the key's family and direction, then the entry's state.
const KIND_V6: u16 = 1 << 8;
const KIND_DOWN: u16 = 1 << 9;
const KIND_KEY: u16 = (1 << 10) - 1;
const LIVE: u16 = 1 << 10;
const CLOSING: u16 = 1 << 11;

/// A flow key as the first line stores it: 42 bytes instead of
/// [`FlowKey`]'s 48, so that the line has room for the decision.
#[derive(Clone, Copy, PartialEq, Eq)]
struct PackedKey {
    src: u128,
    dst: u128,
    /// `src_port | dst_port << 16 | vlan << 32`.
    ports: u64,
    /// `proto | KIND_V6 | KIND_DOWN`.
    kind: u16,
}

impl PackedKey {
    #[inline(always)]
    fn of(k: &FlowKey) -> PackedKey {
        PackedKey {
            src: k.src,
            dst: k.dst,
            ports: u64::from(k.src_port) | u64::from(k.dst_port) << 16 | u64::from(k.vlan) << 32,
            kind: u16::from(k.proto)
                | if k.version == IpVersion::V6 {
                    KIND_V6
                } else {
                    0
                }
                | if k.direction == Direction::Downstream {
                    KIND_DOWN
                } else {
                    0
                },
        }
    }
}

/// The first cache line of an entry: the forward key, what every hit reads
/// and writes (expiry, state) and the decision, so that a forward hit
/// without remaps reads this line and its bucket and nothing else.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Hot<D> {
    src: u128,
    dst: u128,
    ports: u64,
    /// When last seen, in quanta of the table's clock (`now >> shift`),
    /// wrapping; see [`FlowTable::age`].
    last: u32,
    /// [`PackedKey::kind`] plus [`LIVE`] and [`CLOSING`].
    kind: u16,
    decision: D,
}

impl<D> Hot<D> {
    #[inline(always)]
    fn matches(&self, k: &PackedKey) -> bool {
        self.src == k.src
            && self.dst == k.dst
            && self.ports == k.ports
            && self.kind & KIND_KEY == k.kind
    }

    fn key(&self) -> FlowKey {
        FlowKey {
            src: self.src,
            dst: self.dst,
            src_port: self.ports as u16,
            dst_port: (self.ports >> 16) as u16,
            vlan: (self.ports >> 32) as u32,
            proto: self.kind as u8,
            version: if self.kind & KIND_V6 != 0 {
                IpVersion::V6
            } else {
                IpVersion::V4
            },
            direction: if self.kind & KIND_DOWN != 0 {
                Direction::Downstream
            } else {
                Direction::Upstream
            },
        }
    }

    #[inline(always)]
    fn live(&self) -> bool {
        self.kind & LIVE != 0
    }

    #[inline(always)]
    fn closing(&self) -> bool {
        self.kind & CLOSING != 0
    }
}

/// One flow, in 192 bytes: the [`Hot`] line, then what only replies and
/// flows with remaps read. A forward hit touches one line of the entry,
/// prefetched by [`FlowTable::prefetch_entry`]. (Before, the key and the
/// decision were on two lines and the validity line of the stamp was a
/// third: `sluice-perf classify`, bulk hit, ~97 cycles.)
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Entry<D> {
    hot: Hot<D>,
    tail: Tail,
}

/// The reply key, the rewrite that undoes the forward one, and the forward
/// actions.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Tail {
    rev: FlowKey,
    reverse: ReverseRewrite,
    actions: ActionSet,
}

impl<D> Entry<D> {
    /// Whether `side`'s key (0 forward, 1 reply) is `key` (`packed`: the
    /// same key, packed).
    #[inline(always)]
    fn matches(&self, side: u32, key: &FlowKey, packed: &PackedKey) -> bool {
        if side == 0 {
            self.hot.matches(packed)
        } else {
            self.tail.rev == *key
        }
    }
}

const NO_KEY: FlowKey = FlowKey {
    src: 0,
    dst: 0,
    src_port: 0,
    dst_port: 0,
    vlan: 0,
    proto: 0,
    version: IpVersion::V4,
    direction: Direction::Upstream,
};

/// The idle timeout spans at most 2^16 quanta of the table's clock (a
/// quantum is the power of two between 1/65 536 and 1/32 768 of it: 2.1 ms
/// for 120 s in nanoseconds), and timeouts are rounded up to whole quanta.
/// Ages are kept in 32 bits: an entry unseen for 2^32 quanta (at least
/// 65 536 idle timeouts) would look fresh again, so the worker's sweep
/// ([`FlowTable::expire`], run on idle polls too) must pass every entry
/// well within that; it takes seconds to a minute for 4M flows.
const TIMEOUT_QUANTA: u32 = 16;

/// How far behind an entry's last sighting a caller's clock may be and
/// still count as "now" rather than as an age near 2^32 quanta.
const LAG_QUANTA: u32 = 1 << TIMEOUT_QUANTA;

/// Quanta from `last` to `q` on the table's wrapping 32-bit clock: 0 when
/// `q` lags `last` by at most [`LAG_QUANTA`].
#[inline(always)]
fn age_of(q: u32, last: u32) -> u32 {
    let a = q.wrapping_sub(last);
    if a > u32::MAX - LAG_QUANTA {
        0
    } else {
        a
    }
}

/// A bounded two-sided flow table, generic over a small `Copy` per-flow
/// decision (default [`FlowDecision`]). See the module doc.
pub struct FlowTable<D: Copy + Default = FlowDecision> {
    entries: Box<[Entry<D>]>,
    /// Free entry indices. Its capacity is the table's, reserved up front;
    /// an index is pushed only after it was popped, so it never grows.
    free: Vec<u32>,
    buckets: Box<[Bucket]>,
    mask: usize,
    /// Per-word hash keys derived from the configured seed.
    keys: [u64; 6],
    /// `now >> shift` is the table's clock (see [`TIMEOUT_QUANTA`]).
    shift: u32,
    /// The timeouts in quanta of that clock.
    idle: u32,
    closing: u32,
    /// Next entry the full-table eviction samples.
    hand: usize,
    /// Next entry the [`FlowTable::expire`] sweep looks at.
    sweep: usize,
    counters: FlowCounters,
}

impl<D: Copy + Default> FlowTable<D> {
    /// Allocates everything the table will ever use.
    pub fn new(cfg: FlowTableConfig) -> Result<Self, FlowTableError> {
        if cfg.capacity == 0 || cfg.capacity > MAX_CAPACITY {
            return Err(FlowTableError::Capacity(cfg.capacity));
        }
        if cfg.closing_timeout > cfg.idle_timeout {
            return Err(FlowTableError::Timeouts {
                closing: cfg.closing_timeout,
                idle: cfg.idle_timeout,
            });
        }
        let cap = cfg.capacity as usize;
        // 4 slots per entry (2 keys at 50 % load), at least 2 buckets.
        let nbuckets = (cap * 4 / SLOTS).next_power_of_two().max(2);
        Ok(Self::with_buckets(cfg, nbuckets))
    }

    /// `cfg` validated; `nbuckets` a power of two, at least 2.
    fn with_buckets(cfg: FlowTableConfig, nbuckets: usize) -> Self {
        const {
            assert!(
                std::mem::size_of::<Hot<D>>() == 64,
                "the decision must fit the entry's first line (18 bytes, alignment <= 2)"
            )
        };
        let cap = cfg.capacity as usize;
        let empty = Entry {
            hot: Hot {
                src: 0,
                dst: 0,
                ports: 0,
                last: 0,
                kind: 0,
                decision: D::default(),
            },
            tail: Tail {
                rev: NO_KEY,
                reverse: ReverseRewrite::default(),
                actions: ActionSet::default(),
            },
        };
        let shift = (u64::BITS - cfg.idle_timeout.leading_zeros()).saturating_sub(TIMEOUT_QUANTA);
        let mut free = Vec::with_capacity(cap);
        free.extend((0..cfg.capacity).rev());
        FlowTable {
            entries: crate::dpdk::huge_vec(cap, empty).into_boxed_slice(),
            free,
            buckets: crate::dpdk::huge_vec(nbuckets, EMPTY_BUCKET).into_boxed_slice(),
            mask: nbuckets - 1,
            keys: hash_keys(cfg.seed),
            shift,
            // Rounded up: a flow never expires before its timeout.
            idle: cfg.idle_timeout.div_ceil(1 << shift) as u32,
            closing: cfg.closing_timeout.div_ceil(1 << shift) as u32,
            hand: 0,
            sweep: 0,
            counters: FlowCounters::default(),
        }
    }

    /// Maximum number of flows.
    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// Flows currently stored (expired ones included until met).
    pub fn len(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn counters(&self) -> FlowCounters {
        self.counters
    }

    /// Finds the flow a packet belongs to, by either of its keys. On a hit
    /// the flow is refreshed (`now`) and `tcp_flags` (0 for non-TCP) are
    /// noted: FIN or RST switch it to the closing timeout. An expired flow,
    /// or a closing one that sees a new SYN, is removed and reported as a
    /// miss.
    #[inline]
    pub fn lookup(&mut self, key: &FlowKey, tcp_flags: u8, now: u64) -> Option<FlowHit<'_, D>> {
        let h = self.hash(key);
        self.lookup_hashed(key, h, Hint::NONE, tcp_flags, now)
    }

    /// First step of a bulk lookup: hashes `key` and prefetches its first
    /// bucket (where a key sits unless that bucket was full when it was
    /// inserted); returns the hash for [`FlowTable::prefetch_entry`] and
    /// [`FlowTable::lookup_hashed`]. Doing this for a whole burst before
    /// looking any key up overlaps the cache misses (see the module doc).
    #[inline]
    pub fn prefetch(&self, key: &FlowKey) -> u64 {
        let h = self.hash(key);
        let (b1, _, _) = self.buckets_of(h);
        if let Some(bucket) = self.buckets.get(b1) {
            crate::dpdk::prefetch(bucket);
        }
        h
    }

    /// Second step: prefetches the entry lines of the key's signature
    /// matches in its first bucket (in cache by now), or, with none there,
    /// the second bucket. Returns the first match, for
    /// [`FlowTable::lookup_hashed`] to try before walking the buckets again.
    #[inline]
    pub fn prefetch_entry(&self, h: u64) -> Hint {
        let (b1, b2, sig) = self.buckets_of(h);
        let Some(bucket) = self.buckets.get(b1) else {
            return Hint::NONE;
        };
        let mut m = sig_matches(bucket, sig);
        if m == 0 {
            if let Some(b) = self.buckets.get(b2) {
                crate::dpdk::prefetch(b);
            }
            return Hint::NONE;
        }
        let first = Hint(bucket.slot[(m.trailing_zeros() as usize) & (SLOTS - 1)]);
        while m != 0 {
            let r = bucket.slot[(m.trailing_zeros() as usize) & (SLOTS - 1)];
            m &= m - 1;
            if let Some(e) = self.entries.get(ref_index(r)) {
                crate::dpdk::prefetch(&e.hot);
                if r & (1 | REF_REMAPS) != 0 {
                    crate::dpdk::prefetch_lines(&e.tail);
                }
            }
        }
        first
    }

    /// [`FlowTable::lookup`] with the hash from [`FlowTable::prefetch`]
    /// and the hint from [`FlowTable::prefetch_entry`] (or [`Hint::NONE`]).
    /// The hinted entry is taken if it is live and holds `key` on the
    /// hinted side: keys are unique in the table, so that is the flow, even
    /// if the table changed since the hint was taken. Otherwise the buckets
    /// are walked.
    #[inline(always)]
    pub fn lookup_hashed(
        &mut self,
        key: &FlowKey,
        h: u64,
        hint: Hint,
        tcp_flags: u8,
        now: u64,
    ) -> Option<FlowHit<'_, D>> {
        let hinted = self
            .entries
            .get(ref_index(hint.0))
            .is_some_and(|e| e.hot.live() && e.matches(hint.0 & 1, key, &PackedKey::of(key)));
        let found = if hinted {
            Some(hint.0)
        } else {
            self.find(key, h)
        };
        let Some(r) = found else {
            self.counters.misses += 1;
            return None;
        };
        let idx = ref_index(r) as u32;
        let side = if r & 1 == 0 {
            Side::Forward
        } else {
            Side::Reply
        };
        let (closing, expired) = match self.entries.get(idx as usize) {
            Some(e) => (e.hot.closing(), self.hot_expired(&e.hot, now)),
            None => return None,
        };
        let reopened =
            closing && side == Side::Forward && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        if reopened || expired {
            self.release(idx);
            self.counters.expirations += 1;
            self.counters.misses += 1;
            return None;
        }
        self.counters.hits += 1;
        let q = self.clock(now);
        let e = self.entries.get_mut(idx as usize)?;
        // Never backwards (a caller's clock may lag another's slightly).
        if age_of(q, e.hot.last) > 0 {
            e.hot.last = q;
        }
        if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            e.hot.kind |= CLOSING;
        }
        Some(FlowHit {
            handle: FlowHandle(idx),
            side,
            decision: e.hot.decision,
            reverse: &e.tail.reverse,
            actions: &e.tail.actions,
        })
    }

    /// Stores a new flow under its forward key `fwd` (the packet's key
    /// before any rewrite) and its reply key `fwd.reply_key(&reverse)`,
    /// with the forward `actions` it gets ([`FlowHit::actions`]). Makes
    /// room by the counted eviction policy in the module doc; never
    /// allocates. An existing flow with the same forward key is replaced.
    pub fn insert(
        &mut self,
        fwd: FlowKey,
        reverse: ReverseRewrite,
        actions: ActionSet,
        decision: D,
        tcp_flags: u8,
        now: u64,
    ) -> Result<FlowHandle, InsertError> {
        let rev = fwd.reply_key(&reverse);
        let (hf, hr) = (self.hash(&fwd), self.hash(&rev));
        if let Some(r) = self.find(&fwd, hf) {
            self.release(ref_index(r) as u32);
            self.counters.removals += 1;
        }
        if let Some(r) = self.find(&rev, hr) {
            let other = ref_index(r) as u32;
            if !self.is_expired(other, now) {
                self.counters.conflicts += 1;
                return Err(InsertError::ReplyKeyInUse);
            }
            self.release(other);
            self.counters.expirations += 1;
        }
        if self.free.is_empty() {
            self.evict_sampled(now);
        }
        let Some(idx) = self.free.pop() else {
            return Err(InsertError::NoRoom);
        };
        let Some(e) = self.entries.get_mut(idx as usize) else {
            return Err(InsertError::NoRoom);
        };
        let packed = PackedKey::of(&fwd);
        let closing = if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            CLOSING
        } else {
            0
        };
        *e = Entry {
            hot: Hot {
                src: packed.src,
                dst: packed.dst,
                ports: packed.ports,
                last: (now >> self.shift) as u32,
                kind: packed.kind | LIVE | closing,
                decision,
            },
            tail: Tail {
                rev,
                reverse,
                actions,
            },
        };
        // The forward reference says whether the flow has remaps, so that a
        // bulk lookup prefetches the line they are on.
        let fwd_ref = idx << 1 | if has_remaps(&actions) { REF_REMAPS } else { 0 };
        for (h, r) in [(hf, fwd_ref), (hr, idx << 1 | 1)] {
            if !self.place(h, r) {
                self.evict_in_window(h, idx, now);
                if !self.place(h, r) {
                    self.release(idx);
                    return Err(InsertError::NoRoom);
                }
            }
        }
        self.counters.inserts += 1;
        Ok(FlowHandle(idx))
    }

    /// Replaces the decision of a live flow (after a re-classification).
    /// Returns false if the handle's flow is gone.
    pub fn set_decision(&mut self, h: FlowHandle, decision: D) -> bool {
        match self.entries.get_mut(h.0 as usize) {
            Some(e) if e.hot.live() => {
                e.hot.decision = decision;
                true
            }
            _ => false,
        }
    }

    /// Replaces the forward actions of a live flow ([`FlowHit::actions`]).
    /// The reply state stays as inserted: remaps are fixed at a flow's
    /// start. Returns false if the handle's flow is gone.
    pub fn set_actions(&mut self, h: FlowHandle, actions: ActionSet) -> bool {
        let fwd = match self.entries.get_mut(h.0 as usize) {
            Some(e) if e.hot.live() => {
                e.tail.actions = actions;
                e.hot.key()
            }
            _ => return false,
        };
        // The forward reference's flag follows, so that bulk lookups keep
        // prefetching the line the actions are on exactly when needed.
        let (b1, b2, _) = self.buckets_of(self.hash(&fwd));
        let r = h.0 << 1;
        let flagged = r | if has_remaps(&actions) { REF_REMAPS } else { 0 };
        for b in [b1, b2] {
            if let Some(bucket) = self.buckets.get_mut(b) {
                for slot in bucket.slot.iter_mut() {
                    if *slot != EMPTY && *slot & !REF_REMAPS == r {
                        *slot = flagged;
                    }
                }
            }
        }
        true
    }

    /// Removes the flow that `key` (either side) belongs to.
    pub fn remove(&mut self, key: &FlowKey) -> bool {
        let h = self.hash(key);
        match self.find(key, h) {
            Some(r) => {
                self.release(ref_index(r) as u32);
                self.counters.removals += 1;
                true
            }
            None => false,
        }
    }

    /// Looks at up to `budget` entries (round-robin) and removes the expired
    /// ones; returns how many. Call it once per burst with a small budget
    /// so that idle flows leave even if never met again.
    pub fn expire(&mut self, now: u64, budget: usize) -> usize {
        let n = self.entries.len();
        let mut removed = 0;
        for _ in 0..budget.min(n) {
            let idx = self.sweep as u32;
            self.sweep = (self.sweep + 1) % n;
            if self.is_live(idx) && self.is_expired(idx, now) {
                self.release(idx);
                self.counters.expirations += 1;
                removed += 1;
            }
        }
        removed
    }

    #[inline]
    fn is_live(&self, idx: u32) -> bool {
        self.entries.get(idx as usize).is_some_and(|e| e.hot.live())
    }

    #[inline]
    fn is_expired(&self, idx: u32, now: u64) -> bool {
        self.entries
            .get(idx as usize)
            .is_some_and(|e| self.hot_expired(&e.hot, now))
    }

    /// `now` on the table's clock.
    #[inline(always)]
    fn clock(&self, now: u64) -> u32 {
        (now >> self.shift) as u32
    }

    /// Quanta since the entry was last seen (see [`age_of`]).
    #[inline(always)]
    fn age<X>(&self, h: &Hot<X>, now: u64) -> u32 {
        age_of(self.clock(now), h.last)
    }

    #[inline(always)]
    fn hot_expired(&self, h: &Hot<D>, now: u64) -> bool {
        let timeout = if h.closing() { self.closing } else { self.idle };
        self.age(h, now) > timeout
    }

    /// Seeded folded multiplies over the key's six 64-bit words (each
    /// address's halves, the ports and VLANs, the protocol and direction):
    /// three independent 64x64->128-bit products, then one to combine, so
    /// the dependency chain is two multiplies long. Both factors of every
    /// product carry a seed-derived key, so no chosen word zeroes a product
    /// for all seeds: which keys collide depends on the seed.
    #[inline]
    fn hash(&self, k: &FlowKey) -> u64 {
        let s = &self.keys;
        let ports =
            (u64::from(k.src_port) << 48) | (u64::from(k.dst_port) << 32) | u64::from(k.vlan);
        let kind =
            u64::from(k.proto) | (u64::from(k.version as u8) << 8) | ((k.direction as u64) << 16);
        let a = fold_mul(k.src as u64 ^ s[0], (k.src >> 64) as u64 ^ s[1]);
        let b = fold_mul(k.dst as u64 ^ s[2], (k.dst >> 64) as u64 ^ s[3]);
        let c = fold_mul(ports ^ s[4], kind ^ s[5]);
        fold_mul(a ^ b.rotate_left(23), c ^ 0xe703_7ed1_a0b4_28db)
    }

    /// The key's two candidate buckets and its signature.
    #[inline]
    fn buckets_of(&self, h: u64) -> (usize, usize, u32) {
        // Never 0: an empty slot's signature, so a match is always a slot
        // in use.
        let sig = (h >> 32) as u32 | 1;
        let b1 = h as usize & self.mask;
        let mut b2 =
            ((h as u32).rotate_left(16) ^ sig.wrapping_mul(0x9e37_79b9)) as usize & self.mask;
        if b2 == b1 {
            b2 = (b1 ^ 1) & self.mask;
        }
        (b1, b2, sig)
    }

    #[inline(always)]
    fn find(&self, key: &FlowKey, h: u64) -> Option<u32> {
        let (b1, b2, sig) = self.buckets_of(h);
        let packed = PackedKey::of(key);
        for b in [b1, b2] {
            let bucket = self.buckets.get(b)?;
            let mut m = sig_matches(bucket, sig);
            while m != 0 {
                let r = bucket.slot[(m.trailing_zeros() as usize) & (SLOTS - 1)];
                m &= m - 1;
                let hit = self
                    .entries
                    .get(ref_index(r))
                    .is_some_and(|e| e.matches(r & 1, key, &packed));
                if hit {
                    return Some(r);
                }
            }
        }
        None
    }

    /// Puts a reference in the emptier of the key's buckets.
    fn place(&mut self, h: u64, r: u32) -> bool {
        let (b1, b2, sig) = self.buckets_of(h);
        let empties = |b: usize| {
            self.buckets
                .get(b)
                .map_or(0, |k| k.slot.iter().filter(|&&s| s == EMPTY).count())
        };
        // The first bucket unless it is full: most keys then sit in their
        // first bucket, the only one a bulk lookup prefetches up front.
        let b = if empties(b1) > 0 { b1 } else { b2 };
        let Some(bucket) = self.buckets.get_mut(b) else {
            return false;
        };
        for (s, slot) in bucket.sig.iter_mut().zip(bucket.slot.iter_mut()) {
            if *slot == EMPTY {
                *s = sig;
                *slot = r;
                return true;
            }
        }
        false
    }

    /// Unlinks both keys of a live entry and frees it.
    fn release(&mut self, idx: u32) {
        let Some(e) = self.entries.get_mut(idx as usize) else {
            return;
        };
        if !e.hot.live() {
            return;
        }
        e.hot.kind &= !LIVE;
        let keys = [e.hot.key(), e.tail.rev];
        for (side, key) in (0u32..).zip(keys.iter()) {
            let r = idx << 1 | side;
            let (b1, b2, _) = self.buckets_of(self.hash(key));
            for b in [b1, b2] {
                if let Some(bucket) = self.buckets.get_mut(b) {
                    for (s, slot) in bucket.sig.iter_mut().zip(bucket.slot.iter_mut()) {
                        if *slot != EMPTY && *slot & !REF_REMAPS == r {
                            *slot = EMPTY;
                            *s = 0;
                        }
                    }
                }
            }
        }
        // Never grows: `idx` was popped from `free` when it became live.
        self.free.push(idx);
    }

    /// Of the given live entries, the first expired one, else the least
    /// recently seen; with whether it had expired.
    fn pick_victim(&self, candidates: impl Iterator<Item = u32>, now: u64) -> Option<(u32, bool)> {
        let mut oldest: Option<(u32, u32)> = None;
        for idx in candidates {
            let Some(e) = self.entries.get(idx as usize).filter(|e| e.hot.live()) else {
                continue;
            };
            if self.hot_expired(&e.hot, now) {
                return Some((idx, true));
            }
            let age = self.age(&e.hot, now);
            let older = match oldest {
                None => true,
                Some((_, a)) => age > a,
            };
            if older {
                oldest = Some((idx, age));
            }
        }
        oldest.map(|(idx, _)| (idx, false))
    }

    fn evict(&mut self, victim: Option<(u32, bool)>) {
        if let Some((idx, expired)) = victim {
            self.release(idx);
            if expired {
                self.counters.expirations += 1;
            } else {
                self.counters.evictions += 1;
            }
        }
    }

    /// Table full: evict from the next [`EVICT_SAMPLE`] entries.
    fn evict_sampled(&mut self, now: u64) {
        let n = self.entries.len();
        let start = self.hand;
        self.hand = (self.hand + EVICT_SAMPLE) % n;
        let sample = (0..EVICT_SAMPLE.min(n)).map(|i| ((start + i) % n) as u32);
        let victim = self.pick_victim(sample, now);
        self.evict(victim);
    }

    /// A key's two buckets are full: evict one flow referenced from them,
    /// never `keep` (the flow being inserted).
    fn evict_in_window(&mut self, h: u64, keep: u32, now: u64) {
        let (b1, b2, _) = self.buckets_of(h);
        let refs = |b: usize| self.buckets.get(b).map_or([EMPTY; SLOTS], |k| k.slot);
        let (r1, r2) = (refs(b1), refs(b2));
        let window = r1
            .into_iter()
            .chain(r2)
            .filter(|&r| r != EMPTY && ref_index(r) as u32 != keep)
            .map(|r| ref_index(r) as u32);
        let victim = self.pick_victim(window, now);
        self.evict(victim);
    }
}

/// Six hash keys from one seed (a splitmix64 sequence), so that every word
/// of a flow key meets its own.
fn hash_keys(seed: u64) -> [u64; 6] {
    let mut x = seed;
    std::array::from_fn(|_| {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

// `sig_matches` builds a bit mask of a bucket's slots in a u32 and the
// slot index is taken modulo SLOTS.
const _: () = assert!(SLOTS.is_power_of_two() && SLOTS <= 32);

/// The low 64 bits of the full product xor its high 64 bits.
#[inline(always)]
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// Bit i set when slot i of `bucket` carries `sig` (never 0, see
/// `buckets_of`). Written branch-free so that it compiles to one vector
/// compare.
#[inline(always)]
fn sig_matches(bucket: &Bucket, sig: u32) -> u32 {
    let mut m = 0u32;
    for (i, &s) in bucket.sig.iter().enumerate() {
        m |= u32::from(s == sig) << i;
    }
    m
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::IpAddr;

    use proptest::prelude::*;

    use super::*;
    use crate::packet::{PortRewrite, PROTO_TCP, PROTO_UDP};

    const IDLE: u64 = 1_000;
    const CLOSING: u64 = 100;

    fn cfg(capacity: u32) -> FlowTableConfig {
        FlowTableConfig {
            capacity,
            idle_timeout: IDLE,
            closing_timeout: CLOSING,
            seed: 42,
        }
    }

    /// Inserts a flow without rewrites or TCP flags.
    fn add(
        t: &mut FlowTable<u32>,
        k: FlowKey,
        d: u32,
        now: u64,
    ) -> Result<FlowHandle, InsertError> {
        t.insert(
            k,
            ReverseRewrite::default(),
            ActionSet::default(),
            d,
            0,
            now,
        )
    }

    fn table(capacity: u32) -> FlowTable<u32> {
        FlowTable::new(cfg(capacity)).unwrap()
    }

    /// Client 10.0.(n>>8).(n&255):n -> 192.0.2.80:80, upstream.
    fn key(n: u32) -> FlowKey {
        FlowKey::new(
            (IpAddr::from([10, 0, (n >> 8) as u8, n as u8]), n as u16),
            (IpAddr::from([192, 0, 2, 80]), 80),
            PROTO_TCP,
            0,
            Direction::Upstream,
        )
        .unwrap()
    }

    fn remap() -> ReverseRewrite {
        ReverseRewrite::for_forward(
            &key(1),
            &ActionSet {
                dst_port: Some(8080),
                dst_addr: Some(IpAddr::from([198, 51, 100, 7])),
                ..Default::default()
            },
        )
    }

    /// The layout the bulk lookup's prefetches assume: a forward hit reads
    /// line 0 only, a reply (or a flow with remaps) also lines 1 and 2.
    #[test]
    fn entry_layout() {
        use std::mem::{offset_of, size_of};
        type E = super::Entry<super::FlowDecision>;
        assert_eq!(size_of::<super::FlowDecision>(), 18);
        assert_eq!(size_of::<super::Hot<super::FlowDecision>>(), 64);
        assert_eq!(offset_of!(super::Hot<super::FlowDecision>, decision), 46);
        assert_eq!(size_of::<E>(), 192);
        assert_eq!(offset_of!(E, tail), 64);
        assert!(size_of::<super::Tail>() <= 128);
    }

    /// The bulk path (prefetch, prefetch_entry's hint, lookup) finds flows
    /// with and without remaps, and a hint gone stale (its flow removed,
    /// the entry reused by another) falls back to the bucket walk.
    #[test]
    fn hinted_lookups_find_the_flow_or_walk_the_buckets() {
        let mut t = table(16);
        let port = ActionSet {
            dst_port: Some(8080),
            ..ActionSet::default()
        };
        t.insert(key(1), remap(), port, 1, 0, 0).unwrap();
        add(&mut t, key(2), 2, 0).unwrap();
        for (k, want, actions) in [(key(1), 1, port), (key(2), 2, ActionSet::default())] {
            let h = t.prefetch(&k);
            let hint = t.prefetch_entry(h);
            assert_ne!(hint, Hint::NONE);
            let hit = t.lookup_hashed(&k, h, hint, 0, 1).unwrap();
            assert_eq!(
                (hit.side, hit.decision, *hit.actions),
                (Side::Forward, want, actions)
            );
        }
        let h = t.prefetch(&key(1));
        let stale = t.prefetch_entry(h);
        assert!(t.remove(&key(1)));
        assert!(t.lookup_hashed(&key(1), h, stale, 0, 1).is_none());
        // The freed entry is reused by another flow: the hint names it, but
        // its key differs.
        add(&mut t, key(3), 3, 1).unwrap();
        assert!(t.lookup_hashed(&key(1), h, stale, 0, 1).is_none());
        add(&mut t, key(1), 4, 1).unwrap();
        let hit = t.lookup_hashed(&key(1), h, stale, 0, 2).unwrap();
        assert_eq!(hit.decision, 4);
        assert_eq!(t.lookup(&key(3), 0, 2).map(|h| h.decision), Some(3));
    }

    #[test]
    fn a_decision_keeps_what_it_was_built_from() {
        let actions = ActionSet {
            dscp: crate::packet::Dscp::new(46),
            ..ActionSet::default()
        };
        let d = FlowDecision::new(&actions, 3, false, 17, Stamp::default());
        assert_eq!((d.level(), d.pinned(), d.remaps()), (3, false, false));
        assert_eq!((d.dscp(), d.meter()), (crate::packet::Dscp::new(46), 17));
        let remap = ActionSet {
            dst_port: Some(8080),
            ..ActionSet::default()
        };
        let d = FlowDecision::new(&remap, 7, true, NO_METER, Stamp::default());
        assert_eq!(
            (d.level(), d.pinned(), d.remaps(), d.dscp()),
            (7, true, true, None)
        );
        assert_eq!(FlowDecision::default().level(), crate::tables::BEST_EFFORT);
    }

    /// A flow unseen for longer than half the clock's range is old, not
    /// "in the future": it expires, and eviction takes it before a fresh
    /// one (a signed age had it look newest).
    #[test]
    fn a_very_old_flow_is_expired_not_revived() {
        let mut t = table(2);
        add(&mut t, key(1), 1, 0).unwrap();
        let late = (1u64 << 31) + 5_000;
        assert!(t.lookup(&key(1), 0, late).is_none());
        let mut t = table(2);
        add(&mut t, key(1), 1, 0).unwrap();
        add(&mut t, key(2), 2, late).unwrap();
        add(&mut t, key(3), 3, late).unwrap();
        assert_eq!(t.lookup(&key(2), 0, late).map(|h| h.decision), Some(2));
        assert!(t.lookup(&key(1), 0, late).is_none());
        assert_eq!(t.counters().evictions, 0);
    }

    /// A closing timeout shorter than one quantum of a coarse clock is one
    /// quantum, not zero: timeouts round up.
    #[test]
    fn timeouts_round_up_to_whole_quanta() {
        let idle = 1u64 << 40;
        let t: FlowTable<u32> = FlowTable::new(FlowTableConfig {
            capacity: 4,
            idle_timeout: idle,
            closing_timeout: 1000,
            seed: 1,
        })
        .unwrap();
        assert_eq!(t.closing, 1);
        assert_eq!(u64::from(t.idle) << t.shift, idle);
    }

    /// Timeouts far beyond 2^16 units are kept in coarser quanta: a flow
    /// still expires once its timeout has passed, to within one quantum.
    #[test]
    fn coarse_clocks_expire_on_time() {
        let idle = 120_000_000_000u64; // 120 s in ns
        let mut t: FlowTable<u32> = FlowTable::new(FlowTableConfig {
            capacity: 4,
            idle_timeout: idle,
            closing_timeout: idle / 12,
            seed: 1,
        })
        .unwrap();
        let quantum = 1u64 << t.shift;
        assert!(quantum * 65_536 <= 2 * idle && quantum * 65_536 > idle / 2);
        let start = 1u64 << 40;
        add(&mut t, key(1), 1, start).unwrap();
        assert!(t.lookup(&key(1), 0, start + idle - quantum).is_some());
        let seen = start + idle - quantum;
        assert!(t.lookup(&key(1), 0, seen + idle - quantum).is_some());
        let seen = seen + idle - quantum;
        assert!(t.lookup(&key(1), 0, seen + idle + 2 * quantum).is_none());
        // A clock a little behind the last sighting is not an expiry.
        add(&mut t, key(2), 2, start).unwrap();
        assert!(t.lookup(&key(2), 0, start - 5 * quantum).is_some());
    }

    #[test]
    fn config_is_validated() {
        assert_eq!(
            FlowTable::<u32>::new(cfg(0)).err(),
            Some(FlowTableError::Capacity(0))
        );
        assert!(FlowTable::<u32>::new(cfg(MAX_CAPACITY + 1)).is_err());
        let bad = FlowTableConfig {
            closing_timeout: IDLE + 1,
            ..cfg(4)
        };
        assert!(matches!(
            FlowTable::<u32>::new(bad),
            Err(FlowTableError::Timeouts { .. })
        ));
        assert!(FlowTable::<FlowDecision>::new(FlowTableConfig::default()).is_ok());
    }

    #[test]
    fn reply_direction_finds_the_entry_with_the_reverse_state() {
        let mut t = table(16);
        let rr = remap();
        t.insert(key(1), rr, ActionSet::default(), 7, 0, 0).unwrap();

        let reply = key(1).reply_key(&rr);
        assert_eq!(reply.src_port, 8080);
        let hit = t.lookup(&reply, 0, 1).expect("reply hit");
        assert_eq!((hit.side, hit.decision, *hit.reverse), (Side::Reply, 7, rr));
        assert_eq!(
            hit.reverse.src_port,
            Some(PortRewrite { from: 8080, to: 80 })
        );

        let hit = t.lookup(&key(1), 0, 2).expect("forward hit");
        assert_eq!(hit.side, Side::Forward);
        // The pre-rewrite reply (from S:80) is not this flow.
        assert!(t
            .lookup(&key(1).reply_key(&ReverseRewrite::default()), 0, 3)
            .is_none());
        let c = t.counters();
        assert_eq!((c.hits, c.misses, c.inserts), (2, 1, 1));
    }

    #[test]
    fn keys_differ_by_direction_vlan_and_protocol() {
        let mut t = table(16);
        add(&mut t, key(1), 1, 0).unwrap();
        let mut k = key(1);
        k.direction = Direction::Downstream;
        assert!(t.lookup(&k, 0, 0).is_none());
        let mut k = key(1);
        k.vlan = 1 << 24 | 5;
        assert!(t.lookup(&k, 0, 0).is_none());
        let mut k = key(1);
        k.proto = PROTO_UDP;
        assert!(t.lookup(&k, 0, 0).is_none());
    }

    #[test]
    fn idle_flows_expire_and_traffic_keeps_them_alive() {
        let mut t = table(16);
        t.insert(key(1), remap(), ActionSet::default(), 1, 0, 0)
            .unwrap();
        assert!(
            t.lookup(&key(1), 0, IDLE).is_some(),
            "exactly the timeout is not idle"
        );
        // Reply traffic refreshes the flow as well.
        let reply = key(1).reply_key(&remap());
        assert!(t.lookup(&reply, 0, 2 * IDLE).is_some());
        assert!(t.lookup(&key(1), 0, 3 * IDLE + 1).is_none());
        assert!(
            t.lookup(&reply, 0, 3 * IDLE + 1).is_none(),
            "both keys gone"
        );
        assert_eq!(t.counters().expirations, 1);
        assert!(t.is_empty());
    }

    #[test]
    fn fin_or_rst_switches_to_the_closing_timeout() {
        for flags in [TCP_FIN | TCP_ACK, TCP_RST] {
            let mut t = table(16);
            t.insert(key(1), remap(), ActionSet::default(), 1, TCP_SYN, 0)
                .unwrap();
            let reply = key(1).reply_key(&remap());
            // The FIN or RST comes from the server side.
            assert!(t.lookup(&reply, flags, 10).is_some());
            assert!(t.lookup(&key(1), TCP_ACK, 10 + CLOSING).is_some());
            assert!(t.lookup(&key(1), TCP_ACK, 10 + 2 * CLOSING + 1).is_none());
            assert_eq!(t.counters().expirations, 1);
        }
    }

    #[test]
    fn a_flow_inserted_with_rst_starts_closing() {
        let mut t = table(4);
        t.insert(key(1), remap(), ActionSet::default(), 1, TCP_RST, 0)
            .unwrap();
        assert!(t.lookup(&key(1), 0, CLOSING + 1).is_none());
    }

    #[test]
    fn a_new_syn_on_a_closing_flow_starts_a_new_flow() {
        let mut t = table(16);
        t.insert(key(1), remap(), ActionSet::default(), 1, TCP_SYN, 0)
            .unwrap();
        assert!(t.lookup(&key(1), TCP_FIN | TCP_ACK, 1).is_some());
        // Retransmitted SYN-ACK-like segments do not reopen; a bare SYN does.
        assert!(t.lookup(&key(1), TCP_SYN | TCP_ACK, 2).is_some());
        assert!(t.lookup(&key(1), TCP_SYN, 3).is_none());
        assert!(t.is_empty());
        // A SYN on a flow that is not closing is just a hit (retransmission).
        t.insert(key(1), remap(), ActionSet::default(), 2, TCP_SYN, 4)
            .unwrap();
        assert!(t.lookup(&key(1), TCP_SYN, 5).is_some());
    }

    #[test]
    fn a_full_table_evicts_the_oldest_and_counts_it() {
        let mut t = table(4);
        for n in 0..4 {
            t.insert(key(n), remap(), ActionSet::default(), n, 0, u64::from(n))
                .unwrap();
        }
        // Refresh flow 0, so flow 1 is now the least recently seen.
        assert!(t.lookup(&key(0), 0, 10).is_some());
        t.insert(key(10), remap(), ActionSet::default(), 10, 0, 11)
            .unwrap();
        assert_eq!(t.len(), 4);
        assert!(t.lookup(&key(1), 0, 12).is_none(), "oldest evicted");
        for n in [0, 2, 3, 10] {
            assert!(t.lookup(&key(n), 0, 12).is_some(), "flow {n} kept");
        }
        let c = t.counters();
        assert_eq!((c.evictions, c.expirations, c.inserts), (1, 0, 5));
    }

    #[test]
    fn a_full_table_evicts_expired_flows_first() {
        let mut t = table(4);
        t.insert(key(0), remap(), ActionSet::default(), 0, 0, 500)
            .unwrap();
        t.insert(key(1), remap(), ActionSet::default(), 1, 0, 0)
            .unwrap(); // idle since 0
        t.insert(key(2), remap(), ActionSet::default(), 2, 0, 400)
            .unwrap();
        t.insert(key(3), remap(), ActionSet::default(), 3, 0, 900)
            .unwrap();
        t.insert(key(4), remap(), ActionSet::default(), 4, 0, IDLE + 1)
            .unwrap();
        let c = t.counters();
        assert_eq!((c.evictions, c.expirations), (0, 1));
        assert!(t.lookup(&key(1), 0, IDLE + 1).is_none());
        assert!(t.lookup(&key(0), 0, IDLE + 1).is_some());
    }

    #[test]
    fn a_taken_reply_key_refuses_the_insert_until_it_expires() {
        // Two servers remapped to the same endpoint from the same client
        // port: after the rewrite their replies would be indistinguishable.
        let mut t = table(16);
        let rr = remap();
        t.insert(key(1), rr, ActionSet::default(), 1, 0, 0).unwrap();
        let mut other = key(1);
        other.dst = u128::from(u32::from_be_bytes([192, 0, 2, 81]));
        let rr2 = ReverseRewrite {
            src_addr: rr.src_addr.map(|a| crate::packet::AddrRewrite {
                to: other.dst_addr(),
                ..a
            }),
            ..rr
        };
        assert_eq!(other.reply_key(&rr2), key(1).reply_key(&rr));
        assert_eq!(
            t.insert(other, rr2, ActionSet::default(), 2, 0, 1),
            Err(InsertError::ReplyKeyInUse)
        );
        assert_eq!(t.counters().conflicts, 1);
        assert_eq!(t.lookup(&key(1), 0, 1).map(|h| h.decision), Some(1));
        assert!(t
            .insert(other, rr2, ActionSet::default(), 2, 0, 2 * IDLE)
            .is_ok());
        assert_eq!(t.counters().expirations, 1);
    }

    #[test]
    fn inserting_a_known_forward_key_replaces_the_flow() {
        let mut t = table(4);
        t.insert(key(1), remap(), ActionSet::default(), 1, 0, 0)
            .unwrap();
        add(&mut t, key(1), 2, 1).unwrap();
        assert_eq!(t.len(), 1);
        assert!(t.lookup(&key(1).reply_key(&remap()), 0, 2).is_none());
        assert_eq!(t.lookup(&key(1), 0, 2).map(|h| h.decision), Some(2));
        assert_eq!(t.counters().removals, 1);
    }

    #[test]
    fn decision_can_be_replaced_through_the_handle() {
        let mut t = table(4);
        let h = t
            .insert(key(1), remap(), ActionSet::default(), 1, 0, 0)
            .unwrap();
        assert!(t.set_decision(h, 9));
        assert_eq!(t.lookup(&key(1), 0, 1).map(|h| h.decision), Some(9));
        assert!(t.remove(&key(1).reply_key(&remap())));
        assert!(!t.set_decision(h, 10), "stale handle");
        assert!(!t.remove(&key(1)));
    }

    #[test]
    fn the_sweep_removes_idle_flows_within_its_budget() {
        let mut t = table(64);
        for n in 0..64 {
            t.insert(
                key(n),
                remap(),
                ActionSet::default(),
                n,
                0,
                if n < 10 { 0 } else { 1500 },
            )
            .unwrap();
        }
        let mut removed = 0;
        for _ in 0..8 {
            removed += t.expire(IDLE + 1, 8);
        }
        assert_eq!(removed, 10);
        assert_eq!(t.len(), 54);
        assert_eq!(t.counters().expirations, 10);
    }

    #[test]
    fn the_table_never_grows_past_its_capacity() {
        let mut t = table(1000);
        let (e, b, f) = (t.entries.len(), t.buckets.len(), t.free.capacity());
        for n in 0..100_000u32 {
            let k = key(n % 5000);
            if t.lookup(&k, 0, u64::from(n)).is_none() {
                let _ = t.insert(k, remap(), ActionSet::default(), n, 0, u64::from(n));
            }
            assert!(t.len() <= 1000);
        }
        assert_eq!(
            (t.entries.len(), t.buckets.len(), t.free.capacity()),
            (e, b, f)
        );
        let c = t.counters();
        assert_eq!(
            c.inserts - c.evictions - c.expirations - c.removals,
            t.len() as u64
        );
        assert!(c.evictions > 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u16, bool),
        Lookup(u16, bool),
        Remove(u16),
        Tick(u16),
        Sweep(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u16..300, any::<bool>()).prop_map(|(n, r)| Op::Insert(n, r)),
            4 => (0u16..300, any::<bool>()).prop_map(|(n, r)| Op::Lookup(n, r)),
            1 => (0u16..300).prop_map(Op::Remove),
            1 => (0u16..400).prop_map(Op::Tick),
            1 => any::<u8>().prop_map(Op::Sweep),
        ]
    }

    proptest! {
        /// Against a model with no capacity limit: the table may forget
        /// flows (eviction, expiry) but never returns a wrong one, never
        /// exceeds its capacity and its counters add up. The index is made
        /// tiny so that full probe windows are common.
        #[test]
        fn lookups_are_never_wrong_and_counters_add_up(
            ops in prop::collection::vec(op(), 1..400),
            capacity in 1u32..64,
            nbuckets_log in 1u32..4,
        ) {
            let mut t: FlowTable<u32> = FlowTable::with_buckets(cfg(capacity), 1 << nbuckets_log);
            let mut model: HashMap<u16, ReverseRewrite> = HashMap::new();
            let mut now = 0u64;
            for op in ops {
                match op {
                    Op::Insert(n, remapped) => {
                        let rr = if remapped { remap() } else { ReverseRewrite::default() };
                        if t.insert(key(n.into()), rr, ActionSet::default(), n.into(), 0, now).is_ok() {
                            model.insert(n, rr);
                        }
                    }
                    Op::Lookup(n, reply) => {
                        let Some(&rr) = model.get(&n) else {
                            prop_assert!(t.lookup(&key(n.into()), 0, now).is_none());
                            continue;
                        };
                        let k = if reply { key(n.into()).reply_key(&rr) } else { key(n.into()) };
                        if let Some(hit) = t.lookup(&k, 0, now) {
                            prop_assert_eq!(hit.decision, u32::from(n));
                            prop_assert_eq!(*hit.reverse, rr);
                            prop_assert_eq!(hit.side, if reply { Side::Reply } else { Side::Forward });
                        }
                    }
                    Op::Remove(n) => {
                        t.remove(&key(n.into()));
                        model.remove(&n);
                    }
                    Op::Tick(d) => now += u64::from(d),
                    Op::Sweep(b) => {
                        t.expire(now, b.into());
                    }
                }
                prop_assert!(t.len() <= t.capacity());
                let c = t.counters();
                prop_assert_eq!(c.inserts - c.evictions - c.expirations - c.removals, t.len() as u64);
            }
        }
    }
}
