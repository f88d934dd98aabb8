//! [`PolicyState`]: every table in memory, atomic batches, and
//! [`PolicyState::classify`], the reference classifier.
//!
//! A batch is applied change by change, each one checked against the state
//! as the changes before it left it (so a batch can add a tier and a login
//! that uses it), with an undo log. The first change that fails rolls the
//! whole batch back: the state, its sequence number and its generations are
//! exactly what they were (`PartialEq` holds; a proptest checks it).
//! [`PolicyState::stage`] exposes the in-between step, so the store can make
//! a batch durable after it is known to be valid and before it is visible
//! as committed.
//!
//! The big tables (coupons, logins, SP allocations) are hash maps with
//! secondary indexes for classification: per subscriber (coupons), per
//! address or prefix (SP allocations, eligibility) with the prefix lengths
//! in use, so a lookup probes each length in use once, longest first. The
//! cost of a 10k-change batch is measured by the `journal_throughput`
//! benchmark in [`super::store`].
use compact_str::CompactString;
use std::collections::{BTreeMap, BTreeSet};
use std::mem::size_of;
use std::net::IpAddr;

use serde::Serialize;
use thiserror::Error;

use super::model::{
    check_default, Change, CouponBinding, Decision, EligibilityRule, Entry, Key, LoginBinding,
    Port, Prefix, SpAllocation, SpMatch, Table, Tier,
};

/// The big maps hash with foldhash: several times faster than SipHash on
/// these short keys, and still seeded per process (keys come from clients).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// What a coupon matches besides its subscriber: (dst prefix, dst port).
type CouponMatch = (Option<Prefix>, Option<Port>);

/// IP protocol numbers whose flows have ports.
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// A flow as the classifier sees it: the first packet from the subscriber
/// side (`src` is the subscriber, `dst` the remote end).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowQuery {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number. Port-specific rows match TCP (6) and UDP (17)
    /// only; for any other protocol `dst_port` is ignored.
    pub proto: u8,
    pub dst_port: u16,
    /// Unix seconds, for coupon expiry.
    pub now: u64,
}

impl FlowQuery {
    fn port_matches(&self, port: Option<Port>) -> bool {
        match port {
            None => true,
            Some(p) => {
                (self.proto == PROTO_TCP || self.proto == PROTO_UDP) && p.get() == self.dst_port
            }
        }
    }
}

/// Which row decided a flow.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// A service-provider allocation on the exact destination address.
    SpIp {
        id: String,
    },
    /// A service-provider allocation on a destination prefix.
    SpPrefix {
        id: String,
    },
    Coupon {
        id: String,
    },
    Login {
        login: String,
        tier: String,
    },
    Default,
}

/// A change that was refused. `index` is its position in the batch,
/// `field` the entry field (for `add`/`update`) or key field (for `remove`)
/// at fault, empty when the change as a whole is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("change {index} ({op} {table}): `{field}`: {reason}")]
pub struct BatchError {
    pub index: usize,
    pub op: &'static str,
    pub table: Table,
    pub field: String,
    pub reason: String,
}

/// The most coupons one subscriber can hold at once. The dataplane keeps a
/// subscriber's coupons side by side in its coupon map (one record each,
/// in the key's two index buckets of eight entries, shared with other
/// keys), so the number is bounded; four (say video, gaming, voice and
/// one spare) leaves those buckets room even in a full table.
pub const MAX_COUPONS_PER_SUBSCRIBER: usize = 4;

/// What a batch touches in the fast-path tables: the subscribers whose
/// coupon or login rows change (before or after the batch), and whether
/// any prefix-wide row (tier, SP allocation, eligibility, default) does.
/// Computed by [`Staged::touched`] from the batch and the rows it replaced
/// or removed, which still name the subscriber of a coupon being removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    /// Each subscriber once, in address order, with which of its rows
    /// changed: a batch of coupon updates does not make the mirror look up
    /// (in two tables of a million rows each) a login nobody changed.
    pub subscribers: Vec<(IpAddr, Rows)>,
    /// The coupons re-rated in place ([`Rows::in_place`] indexes this).
    pub in_place: Vec<CouponBinding>,
    pub prefix_policy: bool,
}

/// Which of one subscriber's rows a batch touched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rows {
    pub coupons: bool,
    pub login: bool,
    /// The subscriber's only change in the batch is one coupon updated in
    /// place: same subscriber, destination and port, and no rate before or
    /// after (so no meter changes hands). Its one fast record can then be
    /// rewritten from the new row ([`Touched::in_place`]`[i]`) without
    /// re-deriving the subscriber: the common operator change (a new
    /// level or mark for an existing binding), and half the mirror's work.
    pub in_place: Option<u32>,
}

impl Rows {
    pub const COUPONS: Rows = Rows {
        coupons: true,
        login: false,
        in_place: None,
    };
    pub const LOGIN: Rows = Rows {
        coupons: false,
        login: true,
        in_place: None,
    };
    pub const ALL: Rows = Rows {
        coupons: true,
        login: true,
        in_place: None,
    };
}

impl Touched {
    /// `subscribers` in address order, each once, its rows merged (a
    /// subscriber listed twice is not changed in place: it is re-derived).
    pub fn new(mut subscribers: Vec<(IpAddr, Rows)>, prefix_policy: bool) -> Touched {
        subscribers.sort_unstable_by_key(|&(a, _)| a);
        subscribers.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1.coupons |= later.1.coupons;
                kept.1.login |= later.1.login;
                kept.1.in_place = None;
            }
            same
        });
        Touched {
            subscribers,
            in_place: Vec::new(),
            prefix_policy,
        }
    }
}

/// What an accepted batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// How many changes (each bumped the sequence number once).
    pub changes: usize,
    /// The sequence number after the batch: the number of changes ever
    /// applied to this policy.
    pub seq: u64,
}

/// The size of one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TableInfo {
    pub table: Table,
    pub entries: usize,
    /// Bumped by every change applied to this table.
    pub generation: u64,
    /// An estimate of the heap this table and its indexes take here (not in
    /// the dataplane): entries times their size plus map overhead.
    pub approx_bytes: usize,
}

/// Prefix lengths in use, so a longest-prefix lookup probes only those.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Lengths {
    v4: BTreeMap<u8, usize>,
    v6: BTreeMap<u8, usize>,
}

impl Lengths {
    fn side(&mut self, v4: bool) -> &mut BTreeMap<u8, usize> {
        if v4 {
            &mut self.v4
        } else {
            &mut self.v6
        }
    }

    fn add(&mut self, p: Prefix) {
        *self.side(p.is_ipv4()).entry(p.prefix_len()).or_default() += 1;
    }

    fn remove(&mut self, p: Prefix) {
        let side = self.side(p.is_ipv4());
        let n = side.get_mut(&p.prefix_len()).expect("length counted");
        *n -= 1;
        if *n == 0 {
            side.remove(&p.prefix_len());
        }
    }

    /// Longest first.
    fn for_addr(&self, a: IpAddr) -> impl Iterator<Item = u8> + '_ {
        if a.is_ipv4() { &self.v4 } else { &self.v6 }
            .keys()
            .rev()
            .copied()
    }
}

/// How many login bindings of each family use a tier (a tier that rewrites
/// the address can only serve one family).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct TierUse {
    v4: usize,
    v6: usize,
}

/// The whole policy, in memory. See the module doc of [`super`] for the
/// precedence [`PolicyState::classify`] implements.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyState {
    seq: u64,
    generations: [u64; 6],
    default: Decision,
    /// Per table, the bytes of the rows' strings (ids, names), kept as rows
    /// come and go so that [`PolicyState::tables`] is O(1): `stats` must
    /// stay cheap with millions of rows.
    text_bytes: [usize; 6],

    coupons: HashMap<CompactString, CouponBinding>,
    /// subscriber -> (dst, port) -> coupon id.
    coupon_match: HashMap<IpAddr, VecMap<CouponMatch, CompactString>>,
    /// Coupons with an expiry, by expiry: the once-a-second sweep reads
    /// only what has expired instead of every coupon.
    coupon_expiry: std::collections::BTreeSet<(u64, CompactString)>,

    logins: HashMap<IpAddr, LoginBinding>,
    tiers: BTreeMap<String, Tier>,
    tier_use: HashMap<String, TierUse>,

    sps: HashMap<String, SpAllocation>,
    /// (ip or prefix) -> port -> allocation id.
    sp_match: HashMap<SpMatch, VecMap<Option<Port>, String>>,
    sp_lengths: Lengths,

    eligibility: BTreeSet<EligibilityRule>,
    /// prefix -> ports (None: any port).
    elig_index: HashMap<Prefix, VecMap<Option<Port>, ()>>,
    elig_lengths: Lengths,
}

/// A small map kept as a sorted vector: the per-subscriber, per-address
/// and per-prefix index nodes hold one or a few rows, for which a B-tree
/// node (hundreds of bytes) would dominate memory and insertion time.
/// Sorted, so equal contents compare equal whatever the insertion order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct VecMap<K, V>(Vec<(K, V)>);

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        VecMap(Vec::new())
    }
}

impl<K: Ord, V> VecMap<K, V> {
    fn find(&self, k: &K) -> Result<usize, usize> {
        self.0.binary_search_by(|(x, _)| x.cmp(k))
    }

    fn get(&self, k: &K) -> Option<&V> {
        self.find(k).ok().map(|i| &self.0[i].1)
    }

    fn insert(&mut self, k: K, v: V) {
        match self.find(&k) {
            Ok(i) => self.0[i].1 = v,
            Err(i) => self.0.insert(i, (k, v)),
        }
    }

    fn remove(&mut self, k: &K) -> Option<V> {
        self.find(k).ok().map(|i| self.0.remove(i).1)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

/// How to undo one applied change: one byte per change (the batch itself
/// says what an `Inserted` row's key was); the rows replaced or removed are
/// kept in order in [`Staged`]'s `olds`, one vector per batch rather than
/// an allocation per row (a 10k-row update batch paid 10k allocations and
/// frees for them).
#[derive(Clone, Copy)]
enum Undo {
    Inserted,
    Replaced,
    Removed,
}

/// Rows whose lookups [`PolicyState::warm`] overlaps at a time.
const WARM_AHEAD: usize = 32;

/// What [`PolicyState::apply_one`] did, with the row it displaced.
enum Outcome {
    Inserted,
    Replaced(Entry),
    Removed(Entry),
}

/// A batch that passed validation and is applied, but not yet committed.
/// [`Staged::commit`] keeps it; dropping it rolls the state back exactly.
#[must_use = "a staged batch is rolled back when dropped; call commit()"]
pub struct Staged<'a> {
    state: &'a mut PolicyState,
    batch: &'a [Change],
    undo: Vec<Undo>,
    /// The rows replaced or removed, in the order of `undo`.
    olds: Vec<Entry>,
    seq: u64,
    generations: [u64; 6],
    committed: bool,
}

impl Staged<'_> {
    pub fn commit(mut self) -> Applied {
        self.committed = true;
        Applied {
            changes: self.undo.len(),
            seq: self.state.seq,
        }
    }

    /// The state as it will be if committed.
    pub fn state(&self) -> &PolicyState {
        self.state
    }

    /// What the batch touches in the fast-path tables ([`Touched`]),
    /// from the batch and the rows it replaced or removed (kept for the
    /// undo): no lookup in the state, whose rows a big batch has by now
    /// pushed out of the caches again.
    pub fn touched(&self) -> Touched {
        let mut subscribers = Vec::with_capacity(self.batch.len());
        let mut in_place = Vec::new();
        let mut prefix_policy = false;
        let mut olds = self.olds.iter();
        for (c, u) in self.batch.iter().zip(&self.undo) {
            let old = match u {
                Undo::Replaced | Undo::Removed => olds.next(),
                Undo::Inserted => None,
            };
            let old_coupon = match old {
                Some(Entry::Coupon(o)) => Some(o),
                _ => None,
            };
            match c {
                Change::Add(Entry::Coupon(b)) | Change::Update(Entry::Coupon(b)) => {
                    let same_row = |o: &CouponBinding| {
                        (o.subscriber(), o.dst(), o.port()) == (b.subscriber(), b.dst(), b.port())
                            && o.decision().rate().is_none()
                            && b.decision().rate().is_none()
                    };
                    let mut rows = Rows::COUPONS;
                    if matches!(c, Change::Update(_)) && old_coupon.is_some_and(same_row) {
                        if let Ok(i) = u32::try_from(in_place.len()) {
                            rows.in_place = Some(i);
                            in_place.push(b.clone());
                        }
                    }
                    subscribers.push((b.subscriber(), rows));
                    if let Some(o) = old_coupon {
                        if o.subscriber() != b.subscriber() {
                            subscribers.push((o.subscriber(), Rows::COUPONS));
                        }
                    }
                }
                Change::Remove(Key::Coupon(_)) => {
                    if let Some(o) = old_coupon {
                        subscribers.push((o.subscriber(), Rows::COUPONS));
                    }
                }
                Change::Add(Entry::Login(l)) | Change::Update(Entry::Login(l)) => {
                    subscribers.push((l.subscriber(), Rows::LOGIN))
                }
                Change::Remove(Key::Login(a)) => subscribers.push((*a, Rows::LOGIN)),
                _ => prefix_policy = true,
            }
        }
        let mut t = Touched::new(subscribers, prefix_policy);
        t.in_place = in_place;
        t
    }
}

impl Drop for Staged<'_> {
    fn drop(&mut self) {
        if !self.committed {
            let undo = std::mem::take(&mut self.undo);
            let olds = std::mem::take(&mut self.olds);
            self.state.rollback(self.batch, undo, olds);
            self.state.seq = self.seq;
            self.state.generations = self.generations;
        }
    }
}

fn reject(field: impl Into<String>, reason: impl Into<String>) -> (String, String) {
    (field.into(), reason.into())
}

impl PolicyState {
    pub fn new() -> PolicyState {
        PolicyState::default()
    }

    /// Apply a batch atomically: every change or none.
    pub fn apply(&mut self, batch: &[Change]) -> Result<Applied, BatchError> {
        Ok(self.stage(batch)?.commit())
    }

    /// [`PolicyState::apply`], also saying what the batch touched.
    pub fn apply_touched(&mut self, batch: &[Change]) -> Result<(Applied, Touched), BatchError> {
        let staged = self.stage(batch)?;
        let touched = staged.touched();
        Ok((staged.commit(), touched))
    }

    /// Validate and apply `batch`, keeping what is needed to undo it. On
    /// error the state is already as it was.
    pub fn stage<'a>(&'a mut self, batch: &'a [Change]) -> Result<Staged<'a>, BatchError> {
        let mut staged = Staged {
            seq: self.seq,
            generations: self.generations,
            state: self,
            batch,
            undo: Vec::with_capacity(batch.len()),
            olds: Vec::with_capacity(batch.len()),
            committed: false,
        };
        for (index, change) in batch.iter().enumerate() {
            if index % WARM_AHEAD == 0 {
                staged
                    .state
                    .warm(&batch[index..batch.len().min(index + WARM_AHEAD)]);
            }
            match staged.state.apply_one(change) {
                Ok(a) => {
                    staged.undo.push(match a {
                        Outcome::Inserted => Undo::Inserted,
                        Outcome::Replaced(old) => {
                            staged.olds.push(old);
                            Undo::Replaced
                        }
                        Outcome::Removed(old) => {
                            staged.olds.push(old);
                            Undo::Removed
                        }
                    });
                    staged.state.seq += 1;
                    staged.state.generations[change.table().index()] += 1;
                }
                Err((field, mut reason)) => {
                    if let Change::Add(e) = change {
                        let key = e.key();
                        if let Some(j) = batch[..index]
                            .iter()
                            .rposition(|c| matches!(c, Change::Add(x) if x.key() == key))
                        {
                            reason.push_str(&format!(" (added by change {j} of this batch)"));
                        }
                    }
                    return Err(BatchError {
                        index,
                        op: change.op(),
                        table: change.table(),
                        field,
                        reason,
                    });
                    // `staged` drops here and rolls back.
                }
            }
        }
        Ok(staged)
    }

    fn rollback(&mut self, batch: &[Change], undo: Vec<Undo>, mut olds: Vec<Entry>) {
        let mut old = || olds.pop().expect("one old row per Replaced or Removed");
        for (change, u) in batch.iter().zip(undo).rev() {
            match u {
                Undo::Inserted => {
                    let Change::Add(e) = change else {
                        unreachable!("only an add inserts")
                    };
                    self.remove_raw(&e.key());
                }
                Undo::Replaced => {
                    let old = old();
                    self.remove_raw(&old.key());
                    self.insert_raw(old);
                }
                Undo::Removed => self.insert_raw(old()),
            }
        }
    }

    /// Validate one change against the current state and apply it.
    fn apply_one(&mut self, change: &Change) -> Result<Outcome, (String, String)> {
        match change {
            Change::Add(Entry::Default(_)) | Change::Remove(Key::Default) => {
                Err(reject("", "the default decision always exists: use update"))
            }
            Change::Update(Entry::Default(d)) => {
                check_default(d).map_err(|e| reject(e.field, e.reason))?;
                let old = std::mem::replace(&mut self.default, *d);
                Ok(Outcome::Replaced(Entry::Default(old)))
            }
            Change::Add(e) => {
                self.check_add(e)?;
                self.insert_raw(e.clone());
                Ok(Outcome::Inserted)
            }
            Change::Update(e) => {
                // A coupon re-rated, the storm's case, keeps its match
                // (subscriber, destination, port), and is swapped in place
                // in one lookup: the per-subscriber limit and the
                // duplicate-match check (which would find this very row)
                // cannot fail, and their index lookups (cache misses with
                // a million rows) are skipped.
                // For a coupon that fails it, an in-place swap cannot
                // succeed later either (its match moves, or it is missing).
                let coupon = matches!(e, Entry::Coupon(_));
                if coupon {
                    if let Some(old) = self.replace_in_place(e) {
                        return Ok(Outcome::Replaced(old));
                    }
                }
                if !self.has_key_of(e) {
                    let key = e.key();
                    return Err(reject(key.field(), format!("no {key} to update")));
                }
                self.check_entry(e, true)?;
                if !coupon {
                    if let Some(old) = self.replace_in_place(e) {
                        return Ok(Outcome::Replaced(old));
                    }
                }
                let old = self.remove_raw(&e.key()).expect("present");
                self.insert_raw(e.clone());
                Ok(Outcome::Replaced(old))
            }
            Change::Remove(key) => {
                if !self.contains(key) {
                    return Err(reject(key.field(), format!("no {key} to remove")));
                }
                if let Key::Tier(name) = key {
                    if let Some(u) = self.tier_use.get(name) {
                        return Err(reject(
                            "name",
                            format!(
                                "tier {name:?} is used by {} login binding(s); rebind or remove them first",
                                u.v4 + u.v6
                            ),
                        ));
                    }
                }
                Ok(Outcome::Removed(self.remove_raw(key).expect("present")))
            }
        }
    }

    /// Reads the coupon rows `changes` will look up by id, all at once:
    /// the lookups are independent, so the out-of-order core overlaps
    /// their cache misses, which [`PolicyState::apply_one`] would
    /// otherwise pay one after another (a million rows do not stay in the
    /// caches).
    fn warm(&self, changes: &[Change]) {
        for c in changes {
            if let Change::Update(Entry::Coupon(b)) | Change::Add(Entry::Coupon(b)) = c {
                std::hint::black_box(self.coupons.get(b.id()).map(|o| o.subscriber()));
            }
        }
    }

    /// The checks of an `add` of `e` (not the default): its key is free,
    /// and the cross-row rules hold.
    fn check_add(&self, e: &Entry) -> Result<(), (String, String)> {
        if self.has_key_of(e) {
            let key = e.key();
            return Err(reject(
                key.field(),
                format!("duplicate: {key} already exists"),
            ));
        }
        self.check_entry(e, false)
    }

    /// Whether the row `e` would take is taken (without building its key).
    fn has_key_of(&self, e: &Entry) -> bool {
        match e {
            Entry::Coupon(c) => self.coupons.contains_key(c.id()),
            Entry::Login(l) => self.logins.contains_key(&l.subscriber()),
            Entry::Tier(t) => self.tiers.contains_key(t.name()),
            Entry::Sp(s) => self.sps.contains_key(s.id()),
            Entry::Eligibility(r) => self.eligibility.contains(r),
            Entry::Default(_) => true,
        }
    }

    /// An update that leaves every index as it is (same match, same tier)
    /// only swaps the row: the common case of re-rating a binding.
    fn replace_in_place(&mut self, e: &Entry) -> Option<Entry> {
        let old = self.swap_in_place(e)?;
        // The derived figures follow the new row.
        let t = e.table().index();
        self.text_bytes[t] = self.text_bytes[t] - Self::text_of(&old) + Self::text_of(e);
        if let (Entry::Coupon(o), Entry::Coupon(n)) = (&old, e) {
            if o.expires() != n.expires() {
                if let Some(x) = o.expires() {
                    self.coupon_expiry.remove(&(x, o.id().into()));
                }
                if let Some(x) = n.expires() {
                    self.coupon_expiry.insert((x, n.id().into()));
                }
            }
        }
        Some(old)
    }

    /// [`PolicyState::replace_in_place`] without the derived figures.
    fn swap_in_place(&mut self, e: &Entry) -> Option<Entry> {
        match e {
            Entry::Coupon(c) => {
                let old = self.coupons.get_mut(c.id())?;
                let same = (old.subscriber(), old.dst(), old.port())
                    == (c.subscriber(), c.dst(), c.port());
                same.then(|| Entry::Coupon(std::mem::replace(old, c.clone())))
            }
            Entry::Login(l) => {
                let old = self.logins.get_mut(&l.subscriber())?;
                (old.tier() == l.tier()).then(|| Entry::Login(std::mem::replace(old, l.clone())))
            }
            Entry::Tier(t) => {
                let old = self.tiers.get_mut(t.name())?;
                Some(Entry::Tier(std::mem::replace(old, t.clone())))
            }
            Entry::Sp(s) => {
                let old = self.sps.get_mut(s.id())?;
                let same = (old.target(), old.port()) == (s.target(), s.port());
                same.then(|| Entry::Sp(std::mem::replace(old, s.clone())))
            }
            Entry::Eligibility(_) | Entry::Default(_) => None,
        }
    }

    /// Cross-row checks for an entry about to be inserted; `updating`: it
    /// the key of the row it replaces (an update), which it may collide with.
    fn check_entry(&self, e: &Entry, updating: bool) -> Result<(), (String, String)> {
        match e {
            Entry::Coupon(c) => {
                let held = self
                    .coupon_match
                    .get(&c.subscriber())
                    .map_or(0, |m| m.len());
                let own = updating
                    && self
                        .coupons
                        .get(c.id())
                        .is_some_and(|o| o.subscriber() == c.subscriber());
                if held >= MAX_COUPONS_PER_SUBSCRIBER && !own {
                    return Err(reject(
                        "subscriber",
                        format!(
                            "{} already holds {held} coupons, the most one subscriber can hold",
                            c.subscriber()
                        ),
                    ));
                }
                if let Some(other) = self
                    .coupon_match
                    .get(&c.subscriber())
                    .and_then(|m| m.get(&(c.dst(), c.port())))
                {
                    if !(updating && other == c.id()) {
                        return Err(reject(
                            "subscriber",
                            format!(
                                "duplicate match: coupon {other:?} already binds subscriber {}{}{}",
                                c.subscriber(),
                                c.dst().map(|d| format!(" dst {d}")).unwrap_or_default(),
                                c.port().map(|p| format!(" port {p}")).unwrap_or_default()
                            ),
                        ));
                    }
                }
            }
            Entry::Login(l) => {
                let Some(tier) = self.tiers.get(l.tier()) else {
                    return Err(reject("tier", format!("unknown tier {:?}", l.tier())));
                };
                if let Some(a) = tier.decision().actions().dst_addr {
                    if a.is_ipv4() != l.subscriber().is_ipv4() {
                        return Err(reject(
                            "tier",
                            format!(
                                "tier {:?} rewrites the destination to {a}, another family than subscriber {}",
                                l.tier(),
                                l.subscriber()
                            ),
                        ));
                    }
                }
            }
            Entry::Tier(t) => {
                if let (Some(a), Some(u)) =
                    (t.decision().actions().dst_addr, self.tier_use.get(t.name()))
                {
                    let other = if a.is_ipv4() { u.v6 } else { u.v4 };
                    if other > 0 {
                        return Err(reject(
                            "decision.dst_addr",
                            format!(
                                "tier {:?} is used by {other} login binding(s) of the other family than {a}",
                                t.name()
                            ),
                        ));
                    }
                }
            }
            Entry::Sp(s) => {
                if let Some(other) = self
                    .sp_match
                    .get(&s.target())
                    .and_then(|m| m.get(&s.port()))
                {
                    if !(updating && other == s.id()) {
                        return Err(reject(
                            s.target().field(),
                            format!(
                                "duplicate match: sp allocation {other:?} already holds {}{}",
                                s.target(),
                                s.port().map(|p| format!(" port {p}")).unwrap_or_default()
                            ),
                        ));
                    }
                }
            }
            Entry::Eligibility(_) | Entry::Default(_) => {}
        }
        Ok(())
    }

    fn contains(&self, k: &Key) -> bool {
        match k {
            Key::Coupon(id) => self.coupons.contains_key(id.as_str()),
            Key::Login(a) => self.logins.contains_key(a),
            Key::Tier(n) => self.tiers.contains_key(n),
            Key::Sp(id) => self.sps.contains_key(id),
            Key::Eligibility(p, port) => {
                self.eligibility.contains(&EligibilityRule::new(*p, *port))
            }
            Key::Default => true,
        }
    }

    /// The bytes [`PolicyState::approx_bytes`] counts for a row's strings.
    fn text_of(e: &Entry) -> usize {
        match e {
            // The id is kept twice (by id, and in the match index), on the
            // heap only when longer than a `CompactString` holds inline.
            Entry::Coupon(c) if c.id().len() > size_of::<CompactString>() => 2 * c.id().len(),
            Entry::Coupon(_) => 0,
            Entry::Login(l) => l.login().len() + l.tier().len(),
            Entry::Tier(t) => 2 * t.name().len(),
            Entry::Sp(s) => 2 * s.id().len() + s.provider().len(),
            Entry::Eligibility(_) | Entry::Default(_) => 0,
        }
    }

    /// Insert with its indexes; the key must be free (checked by callers).
    fn insert_raw(&mut self, e: Entry) {
        self.text_bytes[e.table().index()] += Self::text_of(&e);
        match e {
            Entry::Coupon(c) => {
                self.coupon_match
                    .entry(c.subscriber())
                    .or_default()
                    .insert((c.dst(), c.port()), c.id().into());
                if let Some(e) = c.expires() {
                    self.coupon_expiry.insert((e, c.id().into()));
                }
                self.coupons.insert(c.id().into(), c);
            }
            Entry::Login(l) => {
                let u = self.tier_use.entry(l.tier().to_string()).or_default();
                if l.subscriber().is_ipv4() {
                    u.v4 += 1;
                } else {
                    u.v6 += 1;
                }
                self.logins.insert(l.subscriber(), l);
            }
            Entry::Tier(t) => {
                self.tiers.insert(t.name().to_string(), t);
            }
            Entry::Sp(s) => {
                self.sp_match
                    .entry(s.target())
                    .or_default()
                    .insert(s.port(), s.id().to_string());
                if let SpMatch::Prefix(p) = s.target() {
                    self.sp_lengths.add(p);
                }
                self.sps.insert(s.id().to_string(), s);
            }
            Entry::Eligibility(r) => {
                self.elig_index
                    .entry(r.dst())
                    .or_default()
                    .insert(r.port(), ());
                self.elig_lengths.add(r.dst());
                self.eligibility.insert(r);
            }
            Entry::Default(d) => self.default = d,
        }
    }

    /// Remove with its indexes, leaving no empty index node behind (so a
    /// rolled-back state compares equal to the original).
    fn remove_raw(&mut self, k: &Key) -> Option<Entry> {
        let e = self.remove_rows(k)?;
        self.text_bytes[e.table().index()] -= Self::text_of(&e);
        Some(e)
    }

    fn remove_rows(&mut self, k: &Key) -> Option<Entry> {
        Some(match k {
            Key::Coupon(id) => {
                let c = self.coupons.remove(id.as_str())?;
                if let Some(e) = c.expires() {
                    self.coupon_expiry.remove(&(e, c.id().into()));
                }
                let m = self.coupon_match.get_mut(&c.subscriber()).expect("indexed");
                m.remove(&(c.dst(), c.port()));
                if m.is_empty() {
                    self.coupon_match.remove(&c.subscriber());
                }
                Entry::Coupon(c)
            }
            Key::Login(a) => {
                let l = self.logins.remove(a)?;
                let u = self.tier_use.get_mut(l.tier()).expect("counted");
                if a.is_ipv4() {
                    u.v4 -= 1;
                } else {
                    u.v6 -= 1;
                }
                if u.v4 + u.v6 == 0 {
                    self.tier_use.remove(l.tier());
                }
                Entry::Login(l)
            }
            Key::Tier(n) => Entry::Tier(self.tiers.remove(n)?),
            Key::Sp(id) => {
                let s = self.sps.remove(id)?;
                let m = self.sp_match.get_mut(&s.target()).expect("indexed");
                m.remove(&s.port());
                if m.is_empty() {
                    self.sp_match.remove(&s.target());
                }
                if let SpMatch::Prefix(p) = s.target() {
                    self.sp_lengths.remove(p);
                }
                Entry::Sp(s)
            }
            Key::Eligibility(p, port) => {
                let r = EligibilityRule::new(*p, *port);
                if !self.eligibility.remove(&r) {
                    return None;
                }
                let ports = self.elig_index.get_mut(p).expect("indexed");
                ports.remove(port);
                if ports.is_empty() {
                    self.elig_index.remove(p);
                }
                self.elig_lengths.remove(*p);
                Entry::Eligibility(r)
            }
            Key::Default => Entry::Default(self.default),
        })
    }

    // -----------------------------------------------------------------------
    // Classification
    // -----------------------------------------------------------------------

    /// The decision for a new flow from the subscriber side, and the row it
    /// came from. The precedence is documented in [`super`] (module doc).
    pub fn classify(&self, q: &FlowQuery) -> (Decision, Source) {
        // 1. SP allocation on the exact destination address.
        if let Some(id) = self.sp_at(SpMatch::Ip(q.dst), q) {
            return (*self.sps[id].decision(), Source::SpIp { id: id.clone() });
        }
        // 2. SP allocation on the longest destination prefix.
        for len in self.sp_lengths.for_addr(q.dst) {
            let p = Prefix::containing(q.dst, len).expect("length from a prefix of this family");
            if let Some(id) = self.sp_at(SpMatch::Prefix(p), q) {
                return (
                    *self.sps[id].decision(),
                    Source::SpPrefix { id: id.clone() },
                );
            }
        }
        if !self.eligible(q) {
            return (self.default, Source::Default);
        }
        // 3. The most specific live coupon of the subscriber.
        if let Some(m) = self.coupon_match.get(&q.src) {
            let best = m
                .iter()
                .filter(|((dst, port), _)| {
                    dst.is_none_or(|d| d.contains(q.dst)) && q.port_matches(*port)
                })
                .map(|(&(dst, port), id)| (&self.coupons[id], dst, port))
                .filter(|(c, _, _)| c.is_live(q.now))
                .max_by_key(|&(_, dst, port)| coupon_rank(dst, port));
            if let Some((c, _, _)) = best {
                return (
                    *c.decision(),
                    Source::Coupon {
                        id: c.id().to_string(),
                    },
                );
            }
        }
        // 4. The tier of the subscriber's login.
        if let Some(l) = self.logins.get(&q.src) {
            let tier = &self.tiers[l.tier()];
            return (
                *tier.decision(),
                Source::Login {
                    login: l.login().to_string(),
                    tier: l.tier().to_string(),
                },
            );
        }
        (self.default, Source::Default)
    }

    fn sp_at(&self, m: SpMatch, q: &FlowQuery) -> Option<&String> {
        let ports = self.sp_match.get(&m)?;
        let specific = if q.proto == PROTO_TCP || q.proto == PROTO_UDP {
            Port::new(q.dst_port).and_then(|p| ports.get(&Some(p)))
        } else {
            None
        };
        specific.or_else(|| ports.get(&None))
    }

    /// Whether coupons and logins may act on this destination.
    pub fn eligible(&self, q: &FlowQuery) -> bool {
        if self.eligibility.is_empty() {
            return true;
        }
        self.elig_lengths.for_addr(q.dst).any(|len| {
            let p = Prefix::containing(q.dst, len).expect("length from a prefix of this family");
            self.elig_index
                .get(&p)
                .is_some_and(|ports| ports.iter().any(|(port, ())| q.port_matches(*port)))
        })
    }

    // -----------------------------------------------------------------------
    // Reads
    // -----------------------------------------------------------------------

    /// The number of changes ever applied.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn generation(&self, t: Table) -> u64 {
        self.generations[t.index()]
    }

    pub fn default_decision(&self) -> &Decision {
        &self.default
    }

    /// The rows of each table, in no particular order (use
    /// [`PolicyState::list`] for key order).
    pub fn coupons(&self) -> impl ExactSizeIterator<Item = &CouponBinding> {
        self.coupons.values()
    }
    pub fn logins(&self) -> impl ExactSizeIterator<Item = &LoginBinding> {
        self.logins.values()
    }
    pub fn tiers(&self) -> impl ExactSizeIterator<Item = &Tier> {
        self.tiers.values()
    }
    pub fn sp_allocations(&self) -> impl ExactSizeIterator<Item = &SpAllocation> {
        self.sps.values()
    }
    pub fn eligibility_rules(&self) -> impl ExactSizeIterator<Item = &EligibilityRule> {
        self.eligibility.iter()
    }

    /// A tier by name (the decision of the logins bound to it).
    pub fn tier(&self, name: &str) -> Option<&Tier> {
        self.tiers.get(name)
    }

    pub fn len(&self, t: Table) -> usize {
        match t {
            Table::Coupon => self.coupons.len(),
            Table::Login => self.logins.len(),
            Table::Tier => self.tiers.len(),
            Table::Sp => self.sps.len(),
            Table::Eligibility => self.eligibility.len(),
            Table::Default => 1,
        }
    }

    pub fn get(&self, k: &Key) -> Option<Entry> {
        Some(match k {
            Key::Coupon(id) => Entry::Coupon(self.coupons.get(id.as_str())?.clone()),
            Key::Login(a) => Entry::Login(self.logins.get(a)?.clone()),
            Key::Tier(n) => Entry::Tier(self.tiers.get(n)?.clone()),
            Key::Sp(id) => Entry::Sp(self.sps.get(id)?.clone()),
            Key::Eligibility(p, port) => {
                let r = EligibilityRule::new(*p, *port);
                Entry::Eligibility(*self.eligibility.get(&r)?)
            }
            Key::Default => Entry::Default(self.default),
        })
    }

    /// Rows of `t` in key order, `offset` skipped, at most `limit`.
    ///
    /// The big tables are hash maps (an ordered map's lookups cost a cache
    /// miss per comparison of heap-allocated keys, which halved the
    /// throughput of batches), so a page is selected in O(n + k log k).
    pub fn list(&self, t: Table, offset: usize, limit: usize) -> Vec<Entry> {
        fn page<'a, T: 'a + Clone>(
            it: impl Iterator<Item = &'a T>,
            offset: usize,
            limit: usize,
            f: fn(T) -> Entry,
        ) -> Vec<Entry> {
            it.skip(offset).take(limit).cloned().map(f).collect()
        }
        fn sorted_page<'a, K: Ord + 'a, T: 'a + Clone>(
            it: impl Iterator<Item = (&'a K, &'a T)>,
            offset: usize,
            limit: usize,
            f: fn(T) -> Entry,
        ) -> Vec<Entry> {
            let mut rows: Vec<(&K, &T)> = it.collect();
            let end = offset.saturating_add(limit);
            if end < rows.len() {
                rows.select_nth_unstable_by(end, |a, b| a.0.cmp(b.0));
                rows.truncate(end);
            }
            rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
            page(rows.into_iter().map(|(_, v)| v), offset, limit, f)
        }
        match t {
            Table::Coupon => sorted_page(self.coupons.iter(), offset, limit, Entry::Coupon),
            Table::Login => sorted_page(self.logins.iter(), offset, limit, Entry::Login),
            Table::Tier => page(self.tiers.values(), offset, limit, Entry::Tier),
            Table::Sp => sorted_page(self.sps.iter(), offset, limit, Entry::Sp),
            Table::Eligibility => page(self.eligibility.iter(), offset, limit, Entry::Eligibility),
            Table::Default => page([self.default].iter(), offset, limit, Entry::Default),
        }
    }

    /// Every row as `add` changes, in an order that applies cleanly to an
    /// empty state (tiers before the logins that use them). With
    /// [`PolicyState::from_parts`] this is the snapshot format.
    pub fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        self.tiers
            .values()
            .cloned()
            .map(Entry::Tier)
            .chain(self.logins.values().cloned().map(Entry::Login))
            .chain(self.coupons.values().cloned().map(Entry::Coupon))
            .chain(self.sps.values().cloned().map(Entry::Sp))
            .chain(self.eligibility.iter().copied().map(Entry::Eligibility))
    }

    /// Rebuild a state from its rows, validating them as a batch of adds,
    /// then set its sequence number and generations (from a snapshot).
    pub fn from_parts(
        default: Decision,
        entries: Vec<Entry>,
        seq: u64,
        generations: [u64; 6],
    ) -> Result<PolicyState, BatchError> {
        // Each row checked as an `add` (`apply_one`), but moved in rather
        // than cloned, into maps sized for them up front: a failure
        // discards the whole state, so nothing needs undoing. (Applied as
        // a batch of adds, a million rows took ~1.9 s to load.)
        let mut s = PolicyState::new();
        let count = |t: Table| entries.iter().filter(|e| e.table() == t).count();
        let coupons = count(Table::Coupon);
        s.coupons.reserve(coupons);
        s.coupon_match.reserve(coupons);
        s.logins.reserve(count(Table::Login));
        for (index, e) in entries.into_iter().enumerate() {
            let refuse = |(field, reason): (String, String), e: &Entry| BatchError {
                index,
                op: "add",
                table: e.table(),
                field,
                reason,
            };
            if matches!(e, Entry::Default(_)) {
                return Err(refuse(
                    reject("", "the default decision always exists: use update"),
                    &e,
                ));
            }
            s.check_add(&e).map_err(|r| refuse(r, &e))?;
            s.insert_raw(e);
        }
        s.apply(&[Change::Update(Entry::Default(default))])?;
        s.seq = seq;
        s.generations = generations;
        Ok(s)
    }

    pub fn generations(&self) -> [u64; 6] {
        self.generations
    }

    /// The coupons bound to `subscriber` (expired ones included until they
    /// are removed).
    pub fn coupons_of(&self, subscriber: IpAddr) -> impl Iterator<Item = &CouponBinding> {
        self.coupon_match
            .get(&subscriber)
            .into_iter()
            .flat_map(|m| m.iter())
            .filter_map(|(_, id)| self.coupons.get(id))
    }

    /// The login bound to `subscriber`.
    pub fn login(&self, subscriber: IpAddr) -> Option<&LoginBinding> {
        self.logins.get(&subscriber)
    }

    /// `remove` changes for the coupons expired at `now`, for the control
    /// thread to apply (and journal) periodically. Classification already
    /// ignores them; this frees their rows.
    pub fn expired_coupons(&self, now: u64) -> Vec<Change> {
        // Expired: expires <= now (see `CouponBinding::is_live`).
        self.coupon_expiry
            .iter()
            .take_while(|(e, _)| *e <= now)
            .map(|(_, id)| Change::Remove(Key::Coupon(id.to_string())))
            .collect()
    }

    /// Sizes, generations and memory estimates of every table.
    pub fn tables(&self) -> Vec<TableInfo> {
        Table::ALL
            .into_iter()
            .map(|t| TableInfo {
                table: t,
                entries: self.len(t),
                generation: self.generation(t),
                approx_bytes: self.approx_bytes(t),
            })
            .collect()
    }

    /// Heap estimate: per row, the key and value sizes plus their strings,
    /// plus ~50 % B-tree/hash overhead, plus the indexes' rows.
    fn approx_bytes(&self, t: Table) -> usize {
        const STR: usize = size_of::<String>();
        let overhead = |n: usize| n * 3 / 2;
        let text = self.text_bytes[t.index()];
        match t {
            Table::Coupon => {
                self.coupons.len()
                    * (overhead(STR + size_of::<CouponBinding>())
                        + overhead(STR + size_of::<CouponMatch>()))
                    + text
                    + self.coupon_match.len() * overhead(size_of::<IpAddr>() + 24)
            }
            Table::Login => {
                self.logins.len() * overhead(size_of::<IpAddr>() + size_of::<LoginBinding>()) + text
            }
            Table::Tier => {
                self.tiers.len() * overhead(STR + size_of::<Tier>())
                    + text
                    + self.tier_use.len() * overhead(STR + size_of::<TierUse>())
            }
            Table::Sp => {
                self.sps.len()
                    * (overhead(STR + size_of::<SpAllocation>())
                        + overhead(size_of::<SpMatch>() + size_of::<Option<Port>>() + STR + 24))
                    + text
            }
            Table::Eligibility => {
                self.eligibility.len()
                    * overhead(2 * size_of::<EligibilityRule>() + size_of::<Prefix>() + 24)
            }
            Table::Default => size_of::<Decision>(),
        }
    }
}

/// Coupon specificity: with a port beats without; then the longer prefix;
/// a prefix beats none.
fn coupon_rank(dst: Option<Prefix>, port: Option<Port>) -> (bool, i16) {
    (
        port.is_some(),
        dst.map_or(-1, |d| i16::from(d.prefix_len())),
    )
}
