//! The per-worker flow table: established flows keep their decision and the
//! reverse-rewrite state their replies need. No DPDK, no locks (one table
//! per worker; symmetric RSS puts both directions on the same worker), no
//! allocation after [`FlowTable::new`], no clock reads (the caller passes
//! `now`, in TSC cycles or nanoseconds, the same unit as the timeouts).
//!
//! # Both directions
//! A flow is found by two keys: the forward key (the first packet's,
//! before any rewrite) and the reply key (what replies carry once the
//! forward rewrite is in place; [`FlowKey::reply_key`]). If C sent to S:80
//! and the flow rewrites that to P:8080, the reply key is
//! `P:8080 -> C, other direction`, so a reply from the priority endpoint
//! finds the flow and gets its source rewritten back to S:80
//! ([`Side::Reply`] plus [`FlowHit::reverse`]). Most flows rewrite
//! nothing, and their reply key is the forward key's mirror image
//! (endpoints swapped, other direction): the hash is the same for both,
//! and one slot serves both directions.
//!
//! If another live flow already owns the reply key (two clients' flows would
//! become indistinguishable after the rewrite), the insert is refused and
//! counted in `conflicts`: the new flow is then forwarded unrewritten rather
//! than breaking the existing one.
//!
//! # Layout and cost: one cache line per hit
//! The table is one array of 64-byte slots, open addressing with linear
//! probing: a key lives in the first empty slot at or after its home slot
//! (the hash), fewer than [`WINDOW`] slots on. A slot is one cache line and
//! holds a whole key, so a lookup needs no separate index:
//! - a **forward slot** is the flow: its forward key packed to 42 bytes,
//!   the state bits, the last sighting and the decision (at most 18 bytes;
//!   [`FlowDecision`] is exactly that). For a flow whose replies are its
//!   key's mirror image it is **shared**: a reply matches it mirrored;
//! - a **reply slot**, for a flow whose replies are rewritten, holds the
//!   reply key and the index of the forward slot;
//! - a flow whose replies are rewritten or whose forward actions do more
//!   than set the DSCP (remaps, MSS clamp) also has a **tail** (two lines,
//!   in a pool of its own): the reply key as stored, the reverse rewrite,
//!   the forward actions and the last sighting. Its forward slot then
//!   holds the tail's index where the last sighting would be.
//!
//! There are [`SLOTS_PER_FLOW`] slots per flow of capacity: a full table
//! of flows without rewrites fills a quarter of them (half, if every flow
//! had a reply slot), so most keys sit in their home slot and nearly all
//! within the next. The bulk lookup packs and hashes a key once and
//! prefetches the home slot and the next ([`FlowTable::prefetch`]), looks
//! there once they arrive and prefetches what the key needs next
//! ([`FlowTable::prefetch_entry`]: the forward slot of a reply slot, the
//! tail of a flow that has one, the next two slots of a key not found
//! yet), then looks up ([`FlowTable::lookup_probed`]). A hit on a flow
//! without rewrites, either direction, is one line and one round trip to
//! memory per group of keys, where the index of buckets and 192-byte
//! entries it replaced took two (`sluice-perf classify`, 4M flows: 67-69
//! -> 51-58 cycles per bulk forward hit; ARCHITECTURE.md). A rewritten
//! flow's reply reads its slot, then the forward slot and the tail: three
//! round trips (two before). Memory: 256 bytes per flow of capacity for
//! the slots, 128 for the tails.
//!
//! Removing a key shifts the later keys of its run back towards their
//! homes (backward-shift deletion), so there are no tombstones and the
//! probe lengths of a table with flows coming and going stay those of a
//! freshly filled one. A shifted forward slot takes its reply slot's link
//! along. A slot index therefore names a flow only until the next insert
//! or removal ([`FlowHandle`]).
//!
//! The hash is seeded folded multiplies, each endpoint folded alike and
//! the two added, so that a key and its mirror image hash alike (no
//! SipHash: the bounded window, not the hash, is the defence against
//! crafted keys; a per-table random seed makes targeting a slot harder).
//!
//! # Expiry and eviction
//! - Idle timeout: a flow unseen for longer than `idle_timeout` is
//!   expired when next met (lookup, insert, the [`FlowTable::expire`]
//!   sweep). Times are kept in 32 bits, in quanta of 1/65 536 to 1/32 768
//!   of the idle timeout, timeouts rounded up (exact for timeouts below
//!   65 536 units). After a FIN or RST
//!   in either direction the shorter `closing_timeout` applies; a new SYN
//!   on a closing flow starts a new flow (the old one ends, so the
//!   policy is asked again).
//! - Table full (as many flows as the capacity): evict from a sample of 16
//!   flows taken round-robin, the first expired one, else the least
//!   recently seen.
//! - A key's [`WINDOW`] slots all taken: evict among the flows that own
//!   them, expired first, else the least recently seen.
//!
//! Removals of expired flows count as `expirations`, of live ones as
//! `evictions`; both are counted, never silent, and nothing ever grows.
use thiserror::Error;

use crate::packet::{ActionSet, Dscp, FlowKey, IpVersion, ReverseRewrite, TCP_ACK, TCP_FIN};
use crate::packet::{TCP_RST, TCP_SYN};
use crate::stats::Direction;
use crate::tables::Stamp;

/// The largest capacity [`FlowTable::new`] accepts.
pub const MAX_CAPACITY: u32 = 1 << 24;

/// Slots per flow of capacity (rounded up to a power of two in all). A
/// full table of flows without rewrites (one slot each) fills a quarter of
/// its slots. With two slots per flow and no shared slots (the first
/// version of this table) the same load took 8 per flow, and twice the
/// memory measured no faster; 16 per flow measured slower (112-118
/// cycles: a 4 GiB array misses the TLB more), see ARCHITECTURE.md.
pub const SLOTS_PER_FLOW: usize = 4;

/// A key sits fewer than `WINDOW` slots past its home (and is looked for
/// no further).
pub const WINDOW: usize = 16;

/// Whether forward `actions` do more than set the DSCP.
#[inline]
fn has_remaps(actions: &ActionSet) -> bool {
    actions.dst_port.is_some() || actions.dst_addr.is_some() || actions.mss_clamp.is_some()
}

const EVICT_SAMPLE: usize = 16;

/// The per-flow payload the table keeps for the policy: what every packet
/// of the flow needs, in 18 bytes so that it shares the flow's forward
/// slot with the key (see the module doc). The forward rewrites beyond the
/// DSCP (port and address remaps, MSS clamp) are kept in the flow's tail
/// ([`FlowHit::actions`]); [`FlowDecision::remaps`] says whether there are
/// any, so that a flow without them never reads it.
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
    /// or everything from the tail when there are remaps.
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

/// Why [`FlowTable::insert`] stored nothing. Both are counted in
/// `conflicts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum InsertError {
    /// Another live flow already owns this flow's reply key.
    #[error("another live flow owns the reply key")]
    ReplyKeyInUse,
    /// No slot could be freed in the key's window. Evictions are repeated
    /// until one is (a removal's backward shift may refill the window from
    /// beyond it), so this takes a table of fewer slots than a window
    /// holding nothing but the new flow's own keys; it exists so that the
    /// insert path has no panic.
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

/// Names a flow (its forward slot) between a lookup and a
/// [`FlowTable::set_decision`] on the same packet: valid until the next
/// insert or removal, which may shift slots (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowHandle(u32);

/// A successful lookup. The decision is copied out (18 bytes); the reply
/// state and the forward remaps are borrowed from the flow's tail (static
/// empty ones for a flow without), since only rewritten replies and flows
/// with remaps read them.
#[derive(Debug, Clone, Copy)]
pub struct FlowHit<'a, D> {
    pub handle: FlowHandle,
    pub side: Side,
    pub decision: D,
    pub reverse: &'a ReverseRewrite,
    /// The forward actions as inserted or last set
    /// ([`FlowTable::set_actions`]) if the flow has a tail (its actions
    /// ever did more than set the DSCP, or its replies are rewritten);
    /// else all `None` (the DSCP is the decision's).
    /// [`FlowDecision::actions`] reads them only when the decision has
    /// remaps; set them whenever a decision with remaps is set.
    pub actions: &'a ActionSet,
}

/// A key on its way through a bulk lookup: packed and hashed once by
/// [`FlowTable::prefetch`], given the slot it was seen in by
/// [`FlowTable::prefetch_entry`], looked up by [`FlowTable::lookup_probed`].
#[derive(Clone, Copy)]
pub struct Probe {
    key: PackedKey,
    h: u64,
    /// The slot [`FlowTable::prefetch_entry`] found the key in, or
    /// [`NO_HINT`].
    hint: u32,
}

const NO_HINT: u32 = u32::MAX;

impl Probe {
    /// The key's hash, the same for both directions of a flow whose
    /// replies are not rewritten: for spreading flows over queues.
    #[inline]
    pub fn hash(&self) -> u64 {
        self.h
    }
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
    /// Inserts refused ([`InsertError`]: nearly always
    /// [`InsertError::ReplyKeyInUse`]).
    pub conflicts: u64,
    /// Flows removed by [`FlowTable::remove`] or replaced by an insert of
    /// the same forward key.
    pub removals: u64,
}

/// Slot kind bits ([`Slot::kind`], [`PackedKey::kind`]): the key's
/// protocol, family and direction, then the slot's state and a forward
/// slot's flags.
const KIND_V6: u16 = 1 << 8;
const KIND_DOWN: u16 = 1 << 9;
const KIND_KEY: u16 = (1 << 10) - 1;
/// The slot's state, two bits: empty (0), [`FWD`] or [`REPLY`].
const STATE: u16 = 3 << 10;
/// A flow's forward key: the slot is the flow.
const FWD: u16 = 1 << 10;
/// A flow's separate reply key: [`Slot::link`] is the forward slot.
const REPLY: u16 = 2 << 10;
/// On a forward slot: FIN or RST seen.
const CLOSING: u16 = 1 << 12;
/// On a forward slot: the flow has a tail, [`Slot::link`] is its index.
const TAIL: u16 = 1 << 13;
/// On a forward slot: the flow's replies carry its key's mirror image
/// ([`PackedKey::mirror`]), so this slot is found by both directions and
/// there is no reply slot.
const SHARED: u16 = 1 << 14;

/// A flow key as slots store and compare it: 42 bytes instead of
/// [`FlowKey`]'s 48, so that a slot has room for the decision.
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

    /// The key with its endpoints swapped, in the other direction: what
    /// the replies of a flow without rewrites carry.
    #[inline(always)]
    fn mirror(&self) -> PackedKey {
        PackedKey {
            src: self.dst,
            dst: self.src,
            ports: (self.ports & !0xffff_ffff)
                | (self.ports & 0xffff) << 16
                | (self.ports >> 16) & 0xffff,
            kind: self.kind ^ KIND_DOWN,
        }
    }
}

/// Which way round a slot holds a key ([`Slot::holds`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Match {
    No,
    /// As stored: a forward slot's forward key, a reply slot's reply key.
    Same,
    /// The stored key's mirror image, in a [`SHARED`] forward slot: a
    /// reply.
    Mirror,
}

/// One cache line of the table: a key and what a hit on it needs (see the
/// module doc).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Slot<D> {
    src: u128,
    dst: u128,
    ports: u64,
    /// Forward slot without a tail: when last seen, in quanta of the
    /// table's clock (`now >> shift`), wrapping ([`age_of`]). Forward slot
    /// with a tail: the tail's index (the last sighting is there). Reply
    /// slot: the forward slot's index.
    link: u32,
    /// [`PackedKey::kind`], the [`STATE`], and a forward slot's
    /// [`CLOSING`], [`TAIL`] and [`SHARED`].
    kind: u16,
    /// A forward slot's decision; `D::default()` elsewhere.
    decision: D,
}

impl<D> Slot<D> {
    /// Whether the slot holds a key (forward or reply) and it is `k`, or
    /// `k`'s mirror image in a slot [`SHARED`] by both directions.
    #[inline(always)]
    fn holds(&self, k: &PackedKey) -> Match {
        if !self.used() {
            return Match::No;
        }
        let stored = self.packed();
        if stored == *k {
            Match::Same
        } else if self.has(SHARED) && stored == k.mirror() {
            Match::Mirror
        } else {
            Match::No
        }
    }

    #[inline(always)]
    fn is_fwd(&self) -> bool {
        self.kind & STATE == FWD
    }

    #[inline(always)]
    fn is_reply(&self) -> bool {
        self.kind & STATE == REPLY
    }

    /// Holds a key, forward or reply.
    #[inline(always)]
    fn used(&self) -> bool {
        self.kind & STATE != 0
    }

    #[inline(always)]
    fn has(&self, flag: u16) -> bool {
        self.kind & flag != 0
    }

    /// No key: probes stop here.
    #[inline(always)]
    fn empty(&self) -> bool {
        self.kind & STATE == 0
    }

    /// The key as [`Slot::holds`] compares it.
    #[inline(always)]
    fn packed(&self) -> PackedKey {
        PackedKey {
            src: self.src,
            dst: self.dst,
            ports: self.ports,
            kind: self.kind & KIND_KEY,
        }
    }

    /// The key as stored: a forward slot's forward key, a reply slot's
    /// reply key.
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

    /// Stores `key` as a slot of state and flags `what`.
    #[inline(always)]
    fn fill(&mut self, key: &PackedKey, what: u16, link: u32, decision: D) {
        *self = Slot {
            src: key.src,
            dst: key.dst,
            ports: key.ports,
            link,
            kind: key.kind | what,
            decision,
        };
    }
}

/// What only some flows need: the reply key (for removal), the rewrite
/// that undoes the forward one, the forward actions, and the last sighting
/// (the forward slot holds the tail's index in its place).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Tail {
    rev: FlowKey,
    reverse: ReverseRewrite,
    actions: ActionSet,
    last: u32,
}

/// A tail-less flow's reverse rewrite: none.
static NO_REVERSE: ReverseRewrite = ReverseRewrite {
    src_port: None,
    src_addr: None,
    mss_clamp: None,
};

/// A tail-less flow's [`FlowHit::actions`]: its DSCP is in the decision.
static NO_ACTIONS: ActionSet = ActionSet {
    dscp: None,
    dst_port: None,
    dst_addr: None,
    mss_clamp: None,
};

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
/// Ages are kept in 32 bits: a flow unseen for 2^32 quanta (at least
/// 65 536 idle timeouts) would look fresh again, so the worker's sweep
/// ([`FlowTable::expire`], run on idle polls too) must pass every slot
/// well within that; it takes seconds to minutes for 4M flows.
const TIMEOUT_QUANTA: u32 = 16;

/// How far behind a flow's last sighting a caller's clock may be and
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
    slots: Box<[Slot<D>]>,
    mask: usize,
    /// [`WINDOW`], or fewer for a table of fewer slots.
    window: usize,
    /// One per flow of capacity, so that a flow needing one always finds
    /// one.
    tails: Box<[Tail]>,
    /// Free tail indices. Its capacity is the table's, reserved up front;
    /// an index is pushed only after it was popped, so it never grows.
    free_tails: Vec<u32>,
    capacity: usize,
    /// Live flows (forward slots).
    len: usize,
    /// Hash keys derived from the configured seed.
    keys: [u64; 5],
    /// `now >> shift` is the table's clock (see [`TIMEOUT_QUANTA`]).
    shift: u32,
    /// The timeouts in quanta of that clock.
    idle: u32,
    closing: u32,
    /// Next slot the full-table eviction samples from.
    hand: usize,
    /// Next slot the [`FlowTable::expire`] sweep looks at.
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
        let nslots = (cfg.capacity as usize * SLOTS_PER_FLOW).next_power_of_two();
        Ok(Self::with_slots(cfg, nslots))
    }

    /// `cfg` validated; `nslots` a power of two, at least 2.
    fn with_slots(cfg: FlowTableConfig, nslots: usize) -> Self {
        const {
            assert!(
                std::mem::size_of::<Slot<D>>() == 64,
                "the decision must fit a slot (18 bytes, alignment <= 2)"
            )
        };
        const { assert!(std::mem::size_of::<Tail>() == 128) };
        let cap = cfg.capacity as usize;
        let empty = Slot {
            src: 0,
            dst: 0,
            ports: 0,
            link: 0,
            kind: 0,
            decision: D::default(),
        };
        let tail = Tail {
            rev: NO_KEY,
            reverse: NO_REVERSE,
            actions: NO_ACTIONS,
            last: 0,
        };
        let shift = (u64::BITS - cfg.idle_timeout.leading_zeros()).saturating_sub(TIMEOUT_QUANTA);
        let mut free_tails = Vec::with_capacity(cap);
        free_tails.extend((0..cfg.capacity).rev());
        FlowTable {
            slots: crate::dpdk::huge_vec(nslots, empty).into_boxed_slice(),
            mask: nslots - 1,
            window: WINDOW.min(nslots),
            tails: crate::dpdk::huge_vec(cap, tail).into_boxed_slice(),
            free_tails,
            capacity: cap,
            len: 0,
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
        self.capacity
    }

    /// Flows currently stored (expired ones included until met).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
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
        let key = PackedKey::of(key);
        let probe = Probe {
            key,
            h: self.hash(&key),
            hint: NO_HINT,
        };
        self.lookup_probed(&probe, tcp_flags, now)
    }

    /// First step of a bulk lookup: packs and hashes `key` and prefetches
    /// its home slot and the next (where nearly every key sits). Doing
    /// this for a whole burst before looking any key up overlaps the cache
    /// misses (see the module doc).
    #[inline]
    pub fn prefetch(&self, key: &FlowKey) -> Probe {
        let key = PackedKey::of(key);
        let h = self.hash(&key);
        let home = self.home(h);
        if let Some(s) = self.slots.get(home) {
            crate::dpdk::prefetch(s);
        }
        if let Some(s) = self.slots.get((home + 1) & self.mask) {
            crate::dpdk::prefetch(s);
        }
        Probe {
            key,
            h,
            hint: NO_HINT,
        }
    }

    /// Second step: looks for `key` in the two slots [`FlowTable::prefetch`]
    /// fetched and prefetches what its lookup reads next: a reply's forward
    /// slot, a flow's tail, or, when neither slot holds the key and neither
    /// ends its probe, the next two slots. Notes where the key was found,
    /// for [`FlowTable::lookup_probed`] to try first.
    ///
    /// Returns the decision when `key` is its flow's forward key (found
    /// as stored in a forward slot), so that the caller can prefetch what
    /// checking it needs: the worker checks a forward packet's stamp and
    /// prefetches its validity line. Replies (a shared slot's mirror
    /// image, a reply slot) are not checked: None. A key past the two
    /// slots (~3 %) is not looked at yet: None too, and its check reads
    /// the line unprefetched.
    #[inline]
    pub fn prefetch_entry(&self, probe: &mut Probe) -> Option<&D> {
        let home = self.home(probe.h);
        let near = self.window.min(2);
        for d in 0..near {
            let i = (home + d) & self.mask;
            let s = self.slots.get(i)?;
            if s.empty() {
                return None;
            }
            let m = s.holds(&probe.key);
            if m != Match::No {
                probe.hint = i as u32;
                if s.is_reply() {
                    if let Some(f) = self.slots.get(s.link as usize) {
                        crate::dpdk::prefetch(f);
                    }
                    return None;
                }
                if s.has(TAIL) {
                    if let Some(t) = self.tails.get(s.link as usize) {
                        crate::dpdk::prefetch_lines(t);
                    }
                }
                return (s.is_fwd() && m == Match::Same).then_some(&s.decision);
            }
        }
        for d in near..self.window.min(near + 2) {
            if let Some(s) = self.slots.get((home + d) & self.mask) {
                crate::dpdk::prefetch(s);
            }
        }
        None
    }

    /// [`FlowTable::lookup`] of a key prepared by [`FlowTable::prefetch`]
    /// (and [`FlowTable::prefetch_entry`]). The slot the key was seen in
    /// is taken if it still holds the key: keys are unique in the table,
    /// so that is the flow, even if the table changed since. Otherwise the
    /// key's window is probed.
    #[inline(always)]
    pub fn lookup_probed(
        &mut self,
        probe: &Probe,
        tcp_flags: u8,
        now: u64,
    ) -> Option<FlowHit<'_, D>> {
        let packed = &probe.key;
        let hinted = self
            .slots
            .get(probe.hint as usize)
            .map_or(Match::No, |s| s.holds(packed));
        let found = if hinted != Match::No {
            Some((probe.hint as usize, hinted))
        } else {
            self.find(packed, probe.h)
        };
        let Some((fwd, side)) = found.and_then(|(i, m)| self.owner(i, m)) else {
            self.counters.misses += 1;
            return None;
        };
        let q = self.clock(now);
        let Some(f) = self.slots.get(fwd).filter(|f| f.is_fwd()) else {
            self.counters.misses += 1;
            return None;
        };
        let (closing, tail) = (f.has(CLOSING), f.has(TAIL).then_some(f.link as usize));
        let age = age_of(q, self.last(f));
        let expired = age > if closing { self.closing } else { self.idle };
        let reopened =
            closing && side == Side::Forward && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        if reopened || expired {
            self.release(fwd);
            self.counters.expirations += 1;
            self.counters.misses += 1;
            return None;
        }
        let f = self.slots.get_mut(fwd)?;
        if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            f.kind |= CLOSING;
        }
        // Never backwards (a caller's clock may lag another's slightly).
        let tail = match tail {
            Some(i) => {
                let t = self.tails.get_mut(i)?;
                if age > 0 {
                    t.last = q;
                }
                Some(&*t)
            }
            None => {
                if age > 0 {
                    f.link = q;
                }
                None
            }
        };
        self.counters.hits += 1;
        Some(FlowHit {
            handle: FlowHandle(fwd as u32),
            side,
            decision: f.decision,
            reverse: tail.map_or(&NO_REVERSE, |t| &t.reverse),
            actions: tail.map_or(&NO_ACTIONS, |t| &t.actions),
        })
    }

    /// Stores a new flow under its forward key `fwd` (the packet's key
    /// before any rewrite) and its reply key `fwd.reply_key(&reverse)`,
    /// with the forward `actions` it gets ([`FlowHit::actions`]: kept only
    /// if they do more than set the DSCP, which is the decision's). Makes
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
        let (pf, pr) = (PackedKey::of(&fwd), PackedKey::of(&rev));
        // Replies that are the forward key's mirror image find the forward
        // slot itself. (A key equal to its mirror would need both sides in
        // one key; `reply_key` flips the direction, so there is none.)
        let shared = pr == pf.mirror();
        let (hf, hr) = (self.hash(&pf), self.hash(&pr));
        if let Some((other, _)) = self.find(&pf, hf).and_then(|(i, m)| self.owner(i, m)) {
            self.release(other);
            self.counters.removals += 1;
        }
        if let Some((other, _)) = self.find(&pr, hr).and_then(|(i, m)| self.owner(i, m)) {
            if !self.slots.get(other).is_some_and(|f| self.expired(f, now)) {
                self.counters.conflicts += 1;
                return Err(InsertError::ReplyKeyInUse);
            }
            self.release(other);
            self.counters.expirations += 1;
        }
        if self.len >= self.capacity {
            self.evict_sampled(now);
        }
        if self.len >= self.capacity {
            self.counters.conflicts += 1;
            return Err(InsertError::NoRoom);
        }
        // An eviction's backward shift may pull a key from beyond the
        // window into the hole, so one eviction does not always free a slot
        // in it: evict until one does (each round removes a flow owning a
        // slot of the window).
        let mut fi = None;
        for _ in 0..=self.window {
            fi = self.free_slot(hf);
            if fi.is_some() {
                break;
            }
            self.evict_in_window(hf, None, now);
        }
        let Some(mut fi) = fi else {
            self.counters.conflicts += 1;
            return Err(InsertError::NoRoom);
        };
        let q = self.clock(now);
        let closing = if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            CLOSING
        } else {
            0
        };
        let (link, tail) = if has_remaps(&actions) || reverse != NO_REVERSE {
            // At most one tail per live flow, and fewer live flows than
            // tails here: the pool is never empty.
            let Some(t) = self.free_tails.pop() else {
                self.counters.conflicts += 1;
                return Err(InsertError::NoRoom);
            };
            if let Some(x) = self.tails.get_mut(t as usize) {
                *x = Tail {
                    rev,
                    reverse,
                    actions,
                    last: q,
                };
            }
            (t, TAIL)
        } else {
            (q, 0)
        };
        let shared = if shared { SHARED } else { 0 };
        if let Some(s) = self.slots.get_mut(fi) {
            s.fill(&pf, FWD | closing | tail | shared, link, decision);
        }
        self.len += 1;
        if shared != 0 {
            self.counters.inserts += 1;
            return Ok(FlowHandle(fi as u32));
        }
        let mut ri = None;
        for _ in 0..=self.window {
            ri = self.free_slot(hr);
            if ri.is_some() {
                break;
            }
            self.evict_in_window(hr, Some(fi), now);
            // The eviction may have shifted the new forward slot back.
            match self.find(&pf, hf) {
                Some((i, Match::Same)) => fi = i,
                _ => {
                    ri = None;
                    break;
                }
            }
        }
        let Some(ri) = ri else {
            // Its reply slot was never placed: the release finds none.
            if self
                .slots
                .get(fi)
                .is_some_and(|f| f.holds(&pf) == Match::Same)
            {
                self.release(fi);
            }
            self.counters.conflicts += 1;
            return Err(InsertError::NoRoom);
        };
        if let Some(s) = self.slots.get_mut(ri) {
            s.fill(&pr, REPLY, fi as u32, D::default());
        }
        self.counters.inserts += 1;
        Ok(FlowHandle(fi as u32))
    }

    /// Replaces the decision of a live flow (after a re-classification).
    /// Returns false if the handle names no flow (but a stale handle may
    /// name another: see [`FlowHandle`]).
    pub fn set_decision(&mut self, h: FlowHandle, decision: D) -> bool {
        match self.slots.get_mut(h.0 as usize) {
            Some(f) if f.is_fwd() => {
                f.decision = decision;
                true
            }
            _ => false,
        }
    }

    /// Replaces the forward actions of a live flow ([`FlowHit::actions`]),
    /// giving it a tail if they do more than set the DSCP and it had none.
    /// The reply state stays as inserted: remaps are fixed at a flow's
    /// start. Returns false if the handle names no flow.
    pub fn set_actions(&mut self, h: FlowHandle, actions: ActionSet) -> bool {
        let Some(f) = self.slots.get_mut(h.0 as usize).filter(|f| f.is_fwd()) else {
            return false;
        };
        if f.has(TAIL) {
            if let Some(t) = self.tails.get_mut(f.link as usize) {
                t.actions = actions;
            }
        } else if has_remaps(&actions) {
            // The pool has a tail for every flow (see `insert`).
            let Some(t) = self.free_tails.pop() else {
                return false;
            };
            if let Some(x) = self.tails.get_mut(t as usize) {
                *x = Tail {
                    rev: f.key().reply_key(&NO_REVERSE),
                    reverse: NO_REVERSE,
                    actions,
                    last: f.link,
                };
            }
            f.link = t;
            f.kind |= TAIL;
        }
        true
    }

    /// Removes the flow that `key` (either side) belongs to.
    pub fn remove(&mut self, key: &FlowKey) -> bool {
        let packed = PackedKey::of(key);
        let h = self.hash(&packed);
        match self.find(&packed, h).and_then(|(i, m)| self.owner(i, m)) {
            Some((fwd, _)) => {
                self.release(fwd);
                self.counters.removals += 1;
                true
            }
            None => false,
        }
    }

    /// Looks at up to `budget` slots (round-robin) and removes the flows
    /// found expired there; returns how many. Call it now and then with a
    /// small budget so that idle flows leave even if never met again. (A
    /// flow that a removal shifts back behind the sweep is looked at on the
    /// next pass.)
    pub fn expire(&mut self, now: u64, budget: usize) -> usize {
        let n = self.slots.len();
        let mut removed = 0;
        for _ in 0..budget.min(n) {
            let i = self.sweep;
            self.sweep = (self.sweep + 1) % n;
            if self
                .slots
                .get(i)
                .is_some_and(|f| f.is_fwd() && self.expired(f, now))
            {
                self.release(i);
                self.counters.expirations += 1;
                removed += 1;
                // The removal may have shifted a later key into `i`.
                self.sweep = i;
            }
        }
        removed
    }

    /// The forward slot owning slot `i`, and the side of a key found
    /// there as `m`; `None` if `i` holds no key.
    #[inline(always)]
    fn owner(&self, i: usize, m: Match) -> Option<(usize, Side)> {
        let s = self.slots.get(i)?;
        if s.is_fwd() {
            let side = if m == Match::Mirror {
                Side::Reply
            } else {
                Side::Forward
            };
            Some((i, side))
        } else if s.is_reply() {
            Some((s.link as usize, Side::Reply))
        } else {
            None
        }
    }

    /// A forward slot's last sighting.
    #[inline(always)]
    fn last(&self, f: &Slot<D>) -> u32 {
        if f.has(TAIL) {
            self.tails.get(f.link as usize).map_or(0, |t| t.last)
        } else {
            f.link
        }
    }

    /// `now` on the table's clock.
    #[inline(always)]
    fn clock(&self, now: u64) -> u32 {
        (now >> self.shift) as u32
    }

    /// Quanta since the forward slot's flow was last seen (see [`age_of`]).
    #[inline(always)]
    fn age(&self, f: &Slot<D>, now: u64) -> u32 {
        age_of(self.clock(now), self.last(f))
    }

    #[inline(always)]
    fn expired(&self, f: &Slot<D>, now: u64) -> bool {
        let timeout = if f.has(CLOSING) {
            self.closing
        } else {
            self.idle
        };
        self.age(f, now) > timeout
    }

    /// Seeded folded multiplies, the same for a key and its mirror image:
    /// each endpoint (address halves, port) is folded with the same
    /// seed-derived keys and the two are added, then combined with the
    /// VLANs, protocol and family (not the direction). Two independent
    /// 64x64->128-bit products, then one to combine, so the dependency
    /// chain is two multiplies long. Both factors of every product carry a
    /// seed-derived key, so no chosen word zeroes a product for all seeds:
    /// which keys collide depends on the seed.
    #[inline]
    fn hash(&self, k: &PackedKey) -> u64 {
        let s = &self.keys;
        // The port times a seed-derived odd factor: which endpoints
        // collide depends on the seed.
        let end = |addr: u128, port: u64| {
            fold_mul(
                addr as u64 ^ port.wrapping_mul(s[4] | 1) ^ s[0],
                (addr >> 64) as u64 ^ s[1],
            )
        };
        let a = end(k.src, k.ports & 0xffff);
        let b = end(k.dst, (k.ports >> 16) & 0xffff);
        let rest = (k.ports >> 32) | u64::from(k.kind & !KIND_DOWN) << 32;
        fold_mul(a.wrapping_add(b) ^ s[2], rest ^ s[3])
    }

    /// A key's home slot.
    #[inline(always)]
    fn home(&self, h: u64) -> usize {
        h as usize & self.mask
    }

    /// The slot holding `key` (or its mirror image, shared) within its
    /// window, and how; the probe stops at an empty slot.
    #[inline(always)]
    fn find(&self, key: &PackedKey, h: u64) -> Option<(usize, Match)> {
        let home = self.home(h);
        for d in 0..self.window {
            let i = (home + d) & self.mask;
            let s = self.slots.get(i)?;
            if s.empty() {
                return None;
            }
            match s.holds(key) {
                Match::No => {}
                m => return Some((i, m)),
            }
        }
        None
    }

    /// The first empty slot in the window of hash `h`.
    fn free_slot(&self, h: u64) -> Option<usize> {
        let home = self.home(h);
        (0..self.window)
            .map(|d| (home + d) & self.mask)
            .find(|&i| self.slots.get(i).is_some_and(|s| !s.used()))
    }

    /// Empties slot `i` by backward-shift deletion: each later key of the
    /// run whose home is at or before the hole moves into it, and the hole
    /// moves on, until an empty slot ends the run. Keys only move towards
    /// their home, so none ever has an empty slot on its probe and the
    /// table keeps no tombstones (which would lengthen probes as flows
    /// come and go). A forward slot that moves has its reply slot's link
    /// follow it.
    fn vacate(&mut self, mut i: usize) {
        let mut j = i;
        for _ in 0..self.slots.len() {
            j = (j + 1) & self.mask;
            let Some(&s) = self.slots.get(j) else {
                break;
            };
            if s.empty() {
                break;
            }
            let home = self.home(self.hash(&s.packed()));
            if j.wrapping_sub(home) & self.mask >= j.wrapping_sub(i) & self.mask {
                if let Some(x) = self.slots.get_mut(i) {
                    *x = s;
                }
                if s.is_fwd() && !s.has(SHARED) {
                    self.relink(&s, i);
                }
                i = j;
            }
        }
        if let Some(x) = self.slots.get_mut(i) {
            x.kind = 0;
            x.decision = D::default();
        }
    }

    /// Points the reply slot of the unshared flow `f` (just moved) at its
    /// new forward slot `to`.
    fn relink(&mut self, f: &Slot<D>, to: usize) {
        let pr = PackedKey::of(&self.reply_key(f));
        if let Some((r, _)) = self.find(&pr, self.hash(&pr)) {
            if let Some(x) = self.slots.get_mut(r).filter(|x| x.is_reply()) {
                x.link = to as u32;
            }
        }
    }

    /// The key a forward slot's flow was inserted with as its reply key.
    fn reply_key(&self, f: &Slot<D>) -> FlowKey {
        if f.has(TAIL) {
            self.tails.get(f.link as usize).map_or(NO_KEY, |t| t.rev)
        } else {
            f.key().reply_key(&NO_REVERSE)
        }
    }

    /// Removes the flow whose forward slot is `fwd`: its keys and its
    /// tail.
    fn release(&mut self, fwd: usize) {
        let Some(&f) = self.slots.get(fwd).filter(|f| f.is_fwd()) else {
            return;
        };
        let rev = self.reply_key(&f);
        if f.has(TAIL) {
            self.free_tails.push(f.link);
        }
        self.vacate(fwd);
        self.len -= 1;
        if f.has(SHARED) {
            return;
        }
        // By its key alone (keys are unique): the shift may have moved
        // another flow into `fwd`, its reply slot's link following.
        let pr = PackedKey::of(&rev);
        let home = self.home(self.hash(&pr));
        for d in 0..self.window {
            let i = (home + d) & self.mask;
            match self.slots.get(i) {
                Some(x) if x.is_reply() && x.holds(&pr) == Match::Same => {
                    self.vacate(i);
                    return;
                }
                Some(x) if !x.empty() => {}
                _ => return,
            }
        }
    }

    /// Of the flows whose forward slots are given, the first expired one,
    /// else the least recently seen; with whether it had expired.
    fn pick_victim(
        &self,
        candidates: impl Iterator<Item = usize>,
        now: u64,
    ) -> Option<(usize, bool)> {
        let mut oldest: Option<(usize, u32)> = None;
        for i in candidates {
            let Some(f) = self.slots.get(i).filter(|f| f.is_fwd()) else {
                continue;
            };
            if self.expired(f, now) {
                return Some((i, true));
            }
            let age = self.age(f, now);
            if oldest.is_none_or(|(_, a)| age > a) {
                oldest = Some((i, age));
            }
        }
        oldest.map(|(i, _)| (i, false))
    }

    fn evict(&mut self, victim: Option<(usize, bool)>) {
        if let Some((i, expired)) = victim {
            self.release(i);
            if expired {
                self.counters.expirations += 1;
            } else {
                self.counters.evictions += 1;
            }
        }
    }

    /// Table full: evict among the next [`EVICT_SAMPLE`] flows met going
    /// round the slots.
    fn evict_sampled(&mut self, now: u64) {
        let n = self.slots.len();
        let mut sample = [0usize; EVICT_SAMPLE];
        let mut taken = 0;
        for _ in 0..n {
            let i = self.hand;
            self.hand = (self.hand + 1) & self.mask;
            if self.slots.get(i).is_some_and(|s| s.is_fwd()) {
                if let Some(x) = sample.get_mut(taken) {
                    *x = i;
                }
                taken += 1;
                if taken == EVICT_SAMPLE {
                    break;
                }
            }
        }
        let victim = self.pick_victim(sample.into_iter().take(taken), now);
        self.evict(victim);
    }

    /// The window of hash `h` is full: evict one of the flows owning its
    /// slots, never `keep` (the flow being inserted).
    fn evict_in_window(&mut self, h: u64, keep: Option<usize>, now: u64) {
        let home = self.home(h);
        let owners = (0..self.window)
            .filter_map(|d| self.owner((home + d) & self.mask, Match::Same))
            .map(|(f, _)| f)
            .filter(|&f| Some(f) != keep);
        let victim = self.pick_victim(owners, now);
        self.evict(victim);
    }
}

/// The hash keys of [`FlowTable::hash`], from one seed (a splitmix64
/// sequence).
fn hash_keys(seed: u64) -> [u64; 5] {
    let mut x = seed;
    std::array::from_fn(|_| {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// The low 64 bits of the full product xor its high 64 bits.
#[inline(always)]
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
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

    /// The table's invariants, all checked: every key is within its window
    /// with no empty slot before it, and unique (a shared slot's mirror
    /// image too); every reply slot points at an unshared forward
    /// slot whose reply key it holds, and every unshared forward slot has
    /// exactly one; `len` counts the forward slots; tails are neither
    /// shared nor lost.
    fn check<D: Copy + Default>(t: &FlowTable<D>) {
        let n = t.slots.len();
        let mut replies = vec![0u32; n];
        let mut tails = std::collections::HashSet::new();
        let mut keys = std::collections::HashSet::new();
        for (i, s) in t.slots.iter().enumerate() {
            if !s.used() {
                continue;
            }
            let key = PackedKey::of(&s.key());
            assert!(
                keys.insert((key.src, key.dst, key.ports, key.kind)),
                "key twice"
            );
            if s.has(SHARED) {
                let m = key.mirror();
                assert!(keys.insert((m.src, m.dst, m.ports, m.kind)), "mirror twice");
            }
            let home = t.home(t.hash(&key));
            let d = i.wrapping_sub(home) & t.mask;
            assert!(d < t.window, "slot {i} is {d} past its home");
            for j in 0..d {
                assert!(
                    !t.slots[(home + j) & t.mask].empty(),
                    "empty slot before {i}"
                );
            }
            if s.is_reply() {
                let f = &t.slots[s.link as usize];
                assert!(
                    f.is_fwd() && !f.has(SHARED),
                    "reply {i} points at no unshared flow"
                );
                let rev = if f.has(TAIL) {
                    t.tails[f.link as usize].rev
                } else {
                    f.key().reply_key(&NO_REVERSE)
                };
                assert!(PackedKey::of(&rev) == key, "reply {i} holds another key");
                replies[s.link as usize] += 1;
            } else if s.has(TAIL) {
                assert!(tails.insert(s.link), "tail {} twice", s.link);
            }
        }
        let mut flows = 0;
        for (i, s) in t.slots.iter().enumerate() {
            if s.is_fwd() {
                flows += 1;
                let want = if s.has(SHARED) { 0 } else { 1 };
                assert_eq!(replies[i], want, "reply slots of flow {i}");
            }
        }
        assert_eq!(flows, t.len);
        assert_eq!(tails.len() + t.free_tails.len(), t.capacity);
        assert!(
            t.free_tails.iter().all(|f| !tails.contains(f)),
            "a tail in use is free"
        );
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
    /// its slot only (one line), a flow with a tail also the tail's two.
    #[test]
    fn slot_layout() {
        use std::mem::{offset_of, size_of};
        type S = super::Slot<super::FlowDecision>;
        assert_eq!(size_of::<super::FlowDecision>(), 18);
        assert_eq!(size_of::<S>(), 64);
        assert_eq!(std::mem::align_of::<S>(), 64);
        assert_eq!(offset_of!(S, decision), 46);
        assert_eq!(size_of::<super::Tail>(), 128);
    }

    /// The bulk path (prefetch, prefetch_entry's hint, lookup) finds flows
    /// with and without a tail, from either side, and a hint gone stale
    /// (its flow removed, the slot reused by another) falls back to the
    /// probe.
    #[test]
    fn hinted_lookups_find_the_flow_or_probe() {
        let mut t = table(16);
        let port = ActionSet {
            dst_port: Some(8080),
            ..ActionSet::default()
        };
        t.insert(key(1), remap(), port, 1, 0, 0).unwrap();
        add(&mut t, key(2), 2, 0).unwrap();
        // The last member: the decision prefetch_entry hands back for a
        // forward key (replies are not checked: none).
        let cases = [
            (key(1), 1, port, Side::Forward, Some(1)),
            (key(2), 2, ActionSet::default(), Side::Forward, Some(2)),
            (key(1).reply_key(&remap()), 1, port, Side::Reply, None),
            (
                key(2).reply_key(&ReverseRewrite::default()),
                2,
                ActionSet::default(),
                Side::Reply,
                None,
            ),
        ];
        for (k, want, actions, side, early) in cases {
            let mut p = t.prefetch(&k);
            assert_eq!(t.prefetch_entry(&mut p).copied(), early);
            assert_ne!(p.hint, NO_HINT);
            let hit = t.lookup_probed(&p, 0, 1).unwrap();
            assert_eq!(
                (hit.side, hit.decision, *hit.actions),
                (side, want, actions)
            );
        }
        let mut stale = t.prefetch(&key(1));
        t.prefetch_entry(&mut stale);
        assert!(t.remove(&key(1)));
        let mut p = t.prefetch(&key(1));
        assert_eq!(t.prefetch_entry(&mut p), None);
        assert_eq!(p.hint, NO_HINT);
        assert!(t.lookup_probed(&stale, 0, 1).is_none());
        // The freed slot may be reused by another flow: the hint names it,
        // but its key differs.
        add(&mut t, key(3), 3, 1).unwrap();
        assert!(t.lookup_probed(&stale, 0, 1).is_none());
        add(&mut t, key(1), 4, 1).unwrap();
        let hit = t.lookup_probed(&stale, 0, 2).unwrap();
        assert_eq!(hit.decision, 4);
        assert_eq!(t.lookup(&key(3), 0, 2).map(|h| h.decision), Some(3));
    }

    /// Keys pushed past their home slot and the next (a table of 16 slots,
    /// all homes close) are still found, by the bulk path and the plain
    /// one; removing keys in the middle of the run shifts the rest back,
    /// and once every key is gone every slot is empty.
    #[test]
    fn removing_keys_shifts_their_run_back() {
        let mut t: FlowTable<u32> = FlowTable::with_slots(cfg(8), 16);
        for n in 0..6 {
            add(&mut t, key(n), n, 0).unwrap();
        }
        assert_eq!(t.len(), 6);
        for n in 0..6 {
            let k = key(n);
            let mut p = t.prefetch(&k);
            t.prefetch_entry(&mut p);
            let hit = t.lookup_probed(&p, 0, 1).unwrap();
            assert_eq!(hit.decision, n);
        }
        for n in [1, 3] {
            assert!(t.remove(&key(n)));
            check(&t);
        }
        let used = t.slots.iter().filter(|s| s.used()).count();
        assert_eq!(used, 4, "four flows, one shared slot each");
        for n in [0, 2, 4, 5] {
            assert_eq!(t.lookup(&key(n), 0, 2).map(|h| h.decision), Some(n));
        }
        for n in [0, 2, 4, 5] {
            assert!(t.remove(&key(n)));
        }
        assert!(t.is_empty());
        assert!(
            t.slots.iter().all(|s| s.empty()),
            "no slot is left behind once every key is gone"
        );
    }

    /// A flow whose replies are not rewritten takes one slot, found by both
    /// directions; its replies are `Side::Reply` on the same handle. A
    /// rewritten flow's pre-rewrite mirror is not the flow, and a new flow
    /// whose key is a shared flow's mirror image replaces it.
    #[test]
    fn a_flow_without_rewrites_shares_one_slot_between_directions() {
        let mut t = table(16);
        let h = add(&mut t, key(1), 1, 0).unwrap();
        assert_eq!(t.slots.iter().filter(|s| s.used()).count(), 1);
        let mirror = key(1).reply_key(&ReverseRewrite::default());
        let hit = t.lookup(&mirror, 0, 1).unwrap();
        assert_eq!((hit.side, hit.handle, hit.decision), (Side::Reply, h, 1));
        // The same endpoints in the same order but the other direction are
        // another flow.
        let mut other = key(1);
        other.direction = Direction::Downstream;
        assert!(t.lookup(&other, 0, 1).is_none());
        t.insert(key(2), remap(), ActionSet::default(), 2, 0, 0)
            .unwrap();
        assert_eq!(t.slots.iter().filter(|s| s.used()).count(), 3);
        assert!(t
            .lookup(&key(2).reply_key(&ReverseRewrite::default()), 0, 1)
            .is_none());
        check(&t);
        // The mirror image as a new flow's forward key: the old flow goes.
        add(&mut t, mirror, 3, 2).unwrap();
        assert_eq!(
            t.lookup(&mirror, 0, 2).map(|h| (h.side, h.decision)),
            Some((Side::Forward, 3))
        );
        assert_eq!(
            t.lookup(&key(1), 0, 2).map(|h| (h.side, h.decision)),
            Some((Side::Reply, 3))
        );
        assert_eq!((t.len(), t.counters().removals), (2, 1));
        check(&t);
    }

    /// A flow inserted without remaps that is given some later gets a tail:
    /// its remaps are kept, its replies still find it, and its last
    /// sighting moves with it.
    #[test]
    fn actions_with_remaps_give_a_flow_a_tail() {
        let mut t = table(4);
        let h = add(&mut t, key(1), 1, 0).unwrap();
        assert_eq!(
            *t.lookup(&key(1), 0, 1).unwrap().actions,
            ActionSet::default()
        );
        let clamp = ActionSet {
            mss_clamp: Some(1200),
            ..ActionSet::default()
        };
        assert!(t.set_actions(h, clamp));
        assert_eq!(*t.lookup(&key(1), 0, 2).unwrap().actions, clamp);
        let reply = key(1).reply_key(&ReverseRewrite::default());
        let hit = t.lookup(&reply, 0, IDLE).unwrap();
        assert_eq!(
            (hit.side, *hit.reverse),
            (Side::Reply, ReverseRewrite::default())
        );
        assert!(
            t.lookup(&key(1), 0, 2 * IDLE).is_some(),
            "refreshed at IDLE"
        );
        assert!(t.remove(&reply));
        assert_eq!(t.free_tails.len(), 4, "the tail went back to the pool");
        assert!(!t.set_actions(h, clamp), "stale handle");
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
        // Room for four times as many flows: no insert evicts.
        let mut t = table(256);
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
        // The budget counts slots: one pass is `slots()` of them. A flow
        // that a removal shifts back behind the sweep waits for the next
        // pass: two passes find every one.
        assert_eq!(t.slots.len(), 256 * SLOTS_PER_FLOW);
        let mut removed = t.expire(IDLE + 1, 0);
        assert_eq!(removed, 0);
        for _ in 0..8 {
            removed += t.expire(IDLE + 1, t.slots.len() / 8);
        }
        assert!((5..=10).contains(&removed), "one pass removed {removed}");
        removed += t.expire(IDLE + 1, t.slots.len());
        assert_eq!(removed, 10);
        assert_eq!(t.len(), 54);
        assert_eq!(t.counters().expirations, 10);
    }

    /// A full table of rewritten flows (two keys each, half the slots in
    /// use) with new flows arriving all the time always makes room: an
    /// eviction whose backward shift refills the window from beyond it is
    /// followed by another.
    #[test]
    fn a_full_table_of_rewritten_flows_always_makes_room() {
        let mut t = table(4096);
        for n in 0..40_000u32 {
            let k = key(n);
            let rr = ReverseRewrite::for_forward(
                &k,
                &ActionSet {
                    dst_port: Some(8080),
                    ..ActionSet::default()
                },
            );
            t.insert(k, rr, ActionSet::default(), n, 0, u64::from(n))
                .unwrap();
        }
        check(&t);
        let c = t.counters();
        assert_eq!((t.len(), c.conflicts), (4096, 0));
        assert_eq!(c.evictions + c.expirations, 40_000 - 4096);
    }

    #[test]
    fn the_table_never_grows_past_its_capacity() {
        let mut t = table(1000);
        let (e, b, f) = (t.slots.len(), t.tails.len(), t.free_tails.capacity());
        for n in 0..100_000u32 {
            let k = key(n % 5000);
            if t.lookup(&k, 0, u64::from(n)).is_none() {
                let _ = t.insert(k, remap(), ActionSet::default(), n, 0, u64::from(n));
            }
            assert!(t.len() <= 1000);
        }
        assert_eq!(
            (t.slots.len(), t.tails.len(), t.free_tails.capacity()),
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
        Clamp(u16),
        Tick(u16),
        Sweep(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u16..300, any::<bool>()).prop_map(|(n, r)| Op::Insert(n, r)),
            4 => (0u16..300, any::<bool>()).prop_map(|(n, r)| Op::Lookup(n, r)),
            1 => (0u16..300).prop_map(Op::Remove),
            1 => (0u16..300).prop_map(Op::Clamp),
            1 => (0u16..400).prop_map(Op::Tick),
            1 => any::<u8>().prop_map(Op::Sweep),
        ]
    }

    proptest! {
        /// Against a model with no capacity limit: the table may forget
        /// flows (eviction, expiry) but never returns a wrong one, never
        /// exceeds its capacity and its counters add up. The table is made
        /// of few slots so that full probe windows are common.
        #[test]
        fn lookups_are_never_wrong_and_counters_add_up(
            ops in prop::collection::vec(op(), 1..400),
            capacity in 1u32..64,
            nslots_log in 1u32..7,
        ) {
            let mut t: FlowTable<u32> = FlowTable::with_slots(cfg(capacity), 1 << nslots_log);
            // Per flow: its reverse rewrite and its forward actions.
            let mut model: HashMap<u16, (ReverseRewrite, ActionSet)> = HashMap::new();
            let clamp = ActionSet { mss_clamp: Some(1200), ..ActionSet::default() };
            let mut now = 0u64;
            for op in ops {
                match op {
                    Op::Insert(n, remapped) => {
                        let rr = if remapped { remap() } else { ReverseRewrite::default() };
                        if t.insert(key(n.into()), rr, ActionSet::default(), n.into(), 0, now).is_ok() {
                            model.insert(n, (rr, ActionSet::default()));
                        }
                    }
                    Op::Lookup(n, reply) => {
                        let Some(&(rr, actions)) = model.get(&n) else {
                            prop_assert!(t.lookup(&key(n.into()), 0, now).is_none());
                            continue;
                        };
                        let k = if reply { key(n.into()).reply_key(&rr) } else { key(n.into()) };
                        if let Some(hit) = t.lookup(&k, 0, now) {
                            prop_assert_eq!(hit.decision, u32::from(n));
                            prop_assert_eq!(*hit.reverse, rr);
                            prop_assert_eq!(*hit.actions, actions);
                            prop_assert_eq!(hit.side, if reply { Side::Reply } else { Side::Forward });
                        }
                    }
                    Op::Remove(n) => {
                        t.remove(&key(n.into()));
                        model.remove(&n);
                    }
                    Op::Clamp(n) => {
                        if let Some(h) = t.lookup(&key(n.into()), 0, now).map(|hit| hit.handle) {
                            prop_assert!(t.set_actions(h, clamp));
                            if let Some(m) = model.get_mut(&n) {
                                m.1 = clamp;
                            }
                        }
                    }
                    Op::Tick(d) => now += u64::from(d),
                    Op::Sweep(b) => {
                        t.expire(now, b.into());
                    }
                }
                prop_assert!(t.len() <= t.capacity());
                check(&t);
                let c = t.counters();
                prop_assert_eq!(c.inserts - c.evictions - c.expirations - c.removals, t.len() as u64);
            }
        }
    }
}
