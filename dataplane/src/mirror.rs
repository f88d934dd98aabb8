//! Keeps the workers' lock-free tables ([`crate::tables`]) equal to the
//! control plane's policy ([`PolicyState`]).
//!
//! The control thread owns the one [`Mirror`] (and with it the tables'
//! single writer). At start-up [`Mirror::load`] copies the whole stored
//! policy before any worker starts; after every accepted batch
//! [`Mirror::sync`] rewrites what the batch touched, before the control
//! socket acknowledges it:
//! - **per subscriber** (coupon and login rows): the subscriber's coupon
//!   records and login record are recomputed from the state and written
//!   as one table batch (records that did not change are not rewritten, so
//!   they invalidate no flow);
//! - **prefix-wide rows** (tiers, SP allocations, eligibility, the
//!   default): a new prefix snapshot is compiled from the whole state and
//!   published (every flow re-classifies once).
//!
//! # How the policy maps onto the tables
//! | policy | tables |
//! |---|---|
//! | coupon (subscriber, dst?, port?) | coupon map record, restriction = (dst, port) |
//! | login (subscriber -> tier) | login map record, [`Grant::Tier`] |
//! | tier | `PrefixPolicy::tiers[index]`; indices are stable while a tier lives |
//! | SP allocation on a prefix | `sp_prefixes` entry (prefix, port) |
//! | SP allocation on one address | `sp_prefixes` host entry (/32, /128); see below |
//! | eligibility rule | `eligibility` entry; no rule at all = all eligible |
//! | default | `default` |
//!
//! The policy checks an SP allocation on an exact address before any
//! prefix, even a host-length one; the snapshot has one longest-prefix
//! lookup. So for an address with both kinds of host entry, the entries
//! are merged: per port, the address allocation on that port, else the
//! address allocation for any port, else the host-prefix one on that port;
//! for any port, the address one, else the host-prefix one. That is the
//! policy's order exactly.
//!
//! The SP-address map of the tables (allocations keyed by the
//! *subscriber*) has no policy row: the policy's per-IP allocations are
//! keyed by the provider's address, which is a destination.
//!
//! Expiry: the fast path does not look at a coupon's expiry; the control
//! thread removes expired coupons once a second, and the removal reaches
//! the tables like any change.
//!
//! Rates: a row whose decision has a rate gets a meter of its own in the
//! shared [`MeterTable`]: a coupon (`c:<id>`), an SP allocation
//! (`s:<id>`), each login of a tier with a rate (`l:<address>`: a tier's
//! rate is per subscriber), and the default (`d`, one aggregate). Its
//! index travels in the binding or snapshot decision; the worker meters
//! the flow's packets (both directions) against it. A meter is released
//! when its row goes; when all are in use, a new row is unmetered and the
//! shortage counted ([`MirrorStats::meters_exhausted`]).
//!
//! # Failures
//! The policy refuses what the tables cannot hold in the same way (per
//! subscriber coupon limit, validation). What can still fail is capacity:
//! the tables are sized by the config, the policy store is not. A
//! subscriber whose records do not fit keeps what it had, the failure is
//! counted and logged ([`MirrorStats::errors`]), and the next change to
//! that subscriber tries again.
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;
use sluice_control::policy::{self, PolicyState, Rows, Touched};

use crate::packet::{ActionSet, Dscp};
use crate::sched::MeterTable;
use crate::tables::{
    Binding, EligibilityRule, FastDecision, Grant, Op, Prefix, PrefixPolicy, Restriction, SpPrefix,
    Table, TableError, TablesConfig, TablesReader, TablesWriter,
};

/// How many subscribers ahead [`Mirror::sync`] prefetches the buckets and
/// validity lines it will need ([`TablesWriter::prefetch`]): enough to
/// cover a memory access with the work on the subscribers between
/// (`sluice-perf control`: the mirror's time per row 1139 ns without, 1005
/// with 8 ahead, 922 with 32; prefetching the records as well, half as far
/// ahead, gained nothing measurable).
const PREFETCH_AHEAD: usize = 32;

/// The fast tables that hold `rows`.
fn fast_tables(rows: Rows) -> &'static [Table] {
    match (rows.coupons, rows.login) {
        (true, true) => &[Table::Coupon, Table::Login],
        (true, false) => &[Table::Coupon],
        (false, true) => &[Table::Login],
        (false, false) => &[],
    }
}

/// Counters of the mirror (read by `stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MirrorStats {
    /// Batches synced (and the initial load).
    pub syncs: u64,
    /// Subscribers re-derived.
    pub subscribers: u64,
    /// Table operations written (upserts and removals).
    pub ops: u64,
    /// Prefix snapshots published.
    pub publishes: u64,
    /// Subscribers or snapshots the tables refused.
    pub errors: u64,
    pub last_error: Option<String>,
    /// Meters in use.
    pub meters: u32,
    /// Rows left unmetered because every meter was in use.
    pub meters_exhausted: u64,
}

/// Meter indices by row key, over the shared table.
struct Meters {
    table: Arc<MeterTable>,
    /// Key -> (index, committed, peak, owner). The owner is the subscriber
    /// whose records last took the meter (None for prefix-wide rows): a
    /// coupon moved from A to B in one batch is taken by B and then
    /// dropped from A's keys, in either order, and only its owner may
    /// release it.
    ids: HashMap<String, (u32, u64, u64, Option<IpAddr>)>,
    free: Vec<u32>,
    /// Released during the batch being applied: the flows that used them
    /// keep their decisions until the batch is announced
    /// ([`TablesWriter::announce`]), so they are not handed to another
    /// row before then ([`Meters::reuse_released`]).
    released: Vec<u32>,
    next: u32,
}

impl Meters {
    /// The meter of `key` with `rate`, allocated or updated.
    fn assign(
        &mut self,
        key: String,
        rate: policy::Rate,
        owner: Option<IpAddr>,
        stats: &mut MirrorStats,
    ) -> Option<u32> {
        let (c, p) = (rate.committed_bps(), rate.peak_bps());
        if let Some(e) = self.ids.get_mut(&key) {
            if (e.1, e.2) != (c, p) {
                self.table.set(e.0, c, p);
            }
            *e = (e.0, c, p, owner);
            return Some(e.0);
        }
        let i = match self.free.pop() {
            Some(i) => i,
            None if self.next < self.table.capacity() => {
                self.next += 1;
                self.next - 1
            }
            None => {
                stats.meters_exhausted += 1;
                return None;
            }
        };
        self.table.set(i, c, p);
        self.ids.insert(key, (i, c, p, owner));
        stats.meters = self.ids.len() as u32;
        Some(i)
    }

    /// Makes the meters released by the announced batch available again:
    /// every flow still metered by one of them revalidates, and so is
    /// re-classified, before its next packet is metered.
    fn reuse_released(&mut self) {
        self.free.append(&mut self.released);
    }

    /// Frees `key`'s meter if `by` owns it (see [`Meters::ids`]), once the
    /// batch is announced.
    fn release(&mut self, key: &str, by: Option<IpAddr>, stats: &mut MirrorStats) {
        if self.ids.get(key).is_some_and(|e| e.3 == by) {
            if let Some((i, ..)) = self.ids.remove(key) {
                self.released.push(i);
            }
            stats.meters = self.ids.len() as u32;
        }
    }
}

/// The tables' writer and what maps policy names to table indices.
pub struct Mirror {
    writer: TablesWriter,
    meters: Meters,
    /// Meter keys held per subscriber, and by the prefix-wide rows.
    sub_meters: HashMap<IpAddr, Vec<String>>,
    prefix_meters: Vec<String>,
    /// Subscribers whose last re-derivation the tables refused: their
    /// records may be out of step, so they are re-derived whole.
    out_of_step: HashSet<IpAddr>,
    /// Tier name -> index in the snapshot's tier list.
    tiers: HashMap<String, u16>,
    free_tiers: Vec<u16>,
    stats: MirrorStats,
}

impl Mirror {
    /// Builds the tables and copies `state` into them; rates get meters of
    /// `meters`.
    pub fn load(
        cfg: TablesConfig,
        meters: Arc<MeterTable>,
        state: &PolicyState,
    ) -> Result<Mirror, TableError> {
        let mut m = Mirror {
            writer: TablesWriter::new(cfg)?,
            meters: Meters {
                table: meters,
                ids: HashMap::new(),
                free: Vec::new(),
                released: Vec::new(),
                next: 0,
            },
            sub_meters: HashMap::new(),
            out_of_step: HashSet::new(),
            prefix_meters: Vec::new(),
            tiers: HashMap::new(),
            free_tiers: Vec::new(),
            stats: MirrorStats::default(),
        };
        m.publish(state)?;
        let subscribers = state
            .coupons()
            .map(|c| (c.subscriber(), Rows::COUPONS))
            .chain(state.logins().map(|l| (l.subscriber(), Rows::LOGIN)))
            .collect();
        // A subscriber that does not fit is counted, as in `sync`: the
        // appliance starts with what fits rather than not at all.
        m.sync(state, &Touched::new(subscribers, false));
        Ok(m)
    }

    /// A handle for one worker.
    pub fn reader(&self) -> TablesReader {
        self.writer.reader()
    }

    pub fn writer(&self) -> &TablesWriter {
        &self.writer
    }

    pub fn stats(&self) -> &MirrorStats {
        &self.stats
    }

    /// Brings the tables in line with `state` after a batch that touched
    /// `touched`. Never fails: see the module doc.
    pub fn sync(&mut self, state: &PolicyState, touched: &Touched) {
        self.stats.syncs += 1;
        // The snapshot first: a login naming a new tier needs its index.
        if touched.prefix_policy {
            if let Err(e) = self.publish(state) {
                self.failed(format!("prefix snapshot not published: {e}"));
            }
        }
        // A tier's rate is metered per login: when prefix-wide rows change
        // (a tier's rate may have), the logins that have or need a meter
        // are re-derived too. O(logins), on tier changes only.
        let mut extra = Vec::new();
        if touched.prefix_policy {
            extra.extend(
                state
                    .logins()
                    .filter(|l| {
                        self.sub_meters.contains_key(&l.subscriber())
                            || state
                                .tier(l.tier())
                                .is_some_and(|t| t.decision().rate().is_some())
                    })
                    .map(|l| (l.subscriber(), Rows::LOGIN)),
            );
        }
        // Each subscriber once: the extra logins merged into the batch's.
        let merged;
        let all: &[(IpAddr, Rows)] = if extra.is_empty() {
            &touched.subscribers
        } else {
            extra.extend_from_slice(&touched.subscribers);
            merged = Touched::new(extra, false);
            &merged.subscribers
        };
        let mut refused = 0u64;
        let mut first = None;
        // The epoch moves once, after the batch (the caller acknowledges
        // it after this returns).
        self.writer.defer_epoch();
        for (i, &(s, rows)) in all.iter().enumerate() {
            if let Some(&(ahead, rows)) = all.get(i + PREFETCH_AHEAD) {
                self.writer.prefetch(fast_tables(rows), ahead);
            }
            // A coupon changed in place needs its one record rewritten,
            // unless an earlier failure left the subscriber out of step (it
            // is then re-derived whole, which retries what failed).
            let direct = rows
                .in_place
                .and_then(|i| touched.in_place.get(i as usize))
                .filter(|_| !self.out_of_step.contains(&s));
            let ops = match direct {
                Some(c) => vec![Op::Upsert {
                    table: Table::Coupon,
                    subscriber: s,
                    binding: coupon_binding(c),
                }],
                None => self.ops_for(state, s, rows),
            };
            self.stats.subscribers += 1;
            match self.writer.apply(&ops) {
                Ok(()) => {
                    self.stats.ops += ops.len() as u64;
                    if direct.is_none() && !self.out_of_step.is_empty() {
                        self.out_of_step.remove(&s);
                    }
                }
                Err(e) => {
                    refused += 1;
                    self.out_of_step.insert(s);
                    first.get_or_insert_with(|| format!("subscriber {s}: {e}"));
                }
            }
        }
        self.writer.announce();
        self.meters.reuse_released();
        if let Some(why) = first {
            // One line per batch, however many subscribers it refused.
            let why = if refused > 1 {
                format!("{why} (and {} more subscribers of this batch)", refused - 1)
            } else {
                why
            };
            self.stats.errors += refused - 1;
            self.failed(why);
        }
    }

    fn failed(&mut self, why: String) {
        log::error!("fast tables out of step with the policy: {why}");
        self.stats.errors += 1;
        self.stats.last_error = Some(why);
    }

    /// The table operations that make `s`'s records of the tables in
    /// `rows` equal to the state's; its other records, and their meters,
    /// are left as they are.
    fn ops_for(&mut self, state: &PolicyState, s: IpAddr, rows: Rows) -> Vec<Op> {
        let mut ops = Vec::new();
        // The meters of the rows not re-derived stay the subscriber's.
        let mut keys: Vec<String> = match self.sub_meters.get(&s) {
            Some(old) if rows != Rows::ALL => old
                .iter()
                .filter(|k| {
                    if k.starts_with("c:") {
                        !rows.coupons
                    } else {
                        !rows.login
                    }
                })
                .cloned()
                .collect(),
            _ => Vec::new(),
        };
        if rows.coupons {
            self.coupon_ops(state, s, &mut ops, &mut keys);
        }
        if rows.login {
            self.login_ops(state, s, &mut ops, &mut keys);
        }
        let old = if keys.is_empty() {
            self.sub_meters.remove(&s)
        } else {
            self.sub_meters.insert(s, keys.clone())
        };
        for k in old.unwrap_or_default() {
            if !keys.contains(&k) {
                self.meters.release(&k, Some(s), &mut self.stats);
            }
        }
        ops
    }

    /// The operations for `s`'s coupon records; new meter keys go to `keys`.
    fn coupon_ops(
        &mut self,
        state: &PolicyState,
        s: IpAddr,
        ops: &mut Vec<Op>,
        keys: &mut Vec<String>,
    ) {
        let mut want: Vec<Binding> = Vec::new();
        for c in state.coupons_of(s) {
            let mut b = coupon_binding(c);
            if let Some(rate) = c.decision().rate() {
                let key = format!("c:{}", c.id());
                b.meter = self
                    .meters
                    .assign(key.clone(), rate, Some(s), &mut self.stats);
                keys.push(key);
            }
            want.push(b);
        }
        for old in self.writer.bindings(Table::Coupon, s) {
            if !want.iter().any(|b| b.only_to == old.only_to) {
                ops.push(Op::RemoveOne {
                    table: Table::Coupon,
                    subscriber: s,
                    only_to: old.only_to,
                });
            }
        }
        ops.extend(want.into_iter().map(|binding| Op::Upsert {
            table: Table::Coupon,
            subscriber: s,
            binding,
        }));
    }

    /// The operation for `s`'s login record; its meter key goes to `keys`.
    fn login_ops(
        &mut self,
        state: &PolicyState,
        s: IpAddr,
        ops: &mut Vec<Op>,
        keys: &mut Vec<String>,
    ) {
        let login = state.login(s).and_then(|l| {
            let tier = *self.tiers.get(l.tier())?;
            let rate = state.tier(l.tier()).and_then(|t| t.decision().rate());
            Some((tier, rate))
        });
        match login {
            Some((tier, rate)) => {
                let meter = rate.and_then(|r| {
                    let key = format!("l:{s}");
                    keys.push(key.clone());
                    self.meters.assign(key, r, Some(s), &mut self.stats)
                });
                ops.push(Op::Upsert {
                    table: Table::Login,
                    subscriber: s,
                    binding: Binding {
                        grant: Grant::Tier(tier),
                        meter,
                        only_to: None,
                    },
                })
            }
            None => ops.push(Op::Remove {
                table: Table::Login,
                subscriber: s,
            }),
        }
    }

    /// Compiles the prefix-wide rows into a snapshot and publishes it.
    fn publish(&mut self, state: &PolicyState) -> Result<(), TableError> {
        // Stable tier indices: a live tier keeps its index.
        let live: HashMap<&str, ()> = state.tiers().map(|t| (t.name(), ())).collect();
        let gone: Vec<String> = self
            .tiers
            .keys()
            .filter(|n| !live.contains_key(n.as_str()))
            .cloned()
            .collect();
        for n in gone {
            if let Some(i) = self.tiers.remove(&n) {
                self.free_tiers.push(i);
            }
        }
        for t in state.tiers() {
            if !self.tiers.contains_key(t.name()) {
                let i = match self.free_tiers.pop() {
                    Some(i) => i,
                    None => u16::try_from(self.tiers.len()).map_err(|_| TableError::Config {
                        what: "tiers",
                        value: self.tiers.len() as u64,
                        expected: "at most 65536",
                    })?,
                };
                self.tiers.insert(t.name().to_string(), i);
            }
        }
        let n = self.tiers.values().map(|&i| usize::from(i) + 1).max();
        let mut tiers = vec![FastDecision::default(); n.unwrap_or(0)];
        for t in state.tiers() {
            if let Some(slot) = self
                .tiers
                .get(t.name())
                .and_then(|&i| tiers.get_mut(usize::from(i)))
            {
                *slot = fast(t.decision());
            }
        }
        let mut keys = Vec::new();
        let mut sp = sp_prefixes(state);
        for (e, id, rate) in sp.iter_mut() {
            if let Some(r) = rate {
                let key = format!("s:{id}");
                e.decision.meter = self.meters.assign(key.clone(), *r, None, &mut self.stats);
                keys.push(key);
            }
        }
        let mut default = fast(state.default_decision());
        if let Some(r) = state.default_decision().rate() {
            default.meter = self.meters.assign("d".into(), r, None, &mut self.stats);
            keys.push("d".into());
        }
        for k in std::mem::replace(&mut self.prefix_meters, keys.clone()) {
            if !keys.contains(&k) {
                self.meters.release(&k, None, &mut self.stats);
            }
        }
        let p = PrefixPolicy {
            sp_prefixes: sp.into_iter().map(|(e, _, _)| e).collect(),
            eligibility: state
                .eligibility_rules()
                .map(|r| EligibilityRule {
                    prefix: prefix(r.dst()),
                    port: r.port().map(policy::Port::get),
                    eligible: true,
                })
                .collect(),
            default_eligible: state.eligibility_rules().len() == 0,
            tiers,
            default,
        };
        self.writer.publish(&p)?;
        self.stats.publishes += 1;
        Ok(())
    }
}

/// A policy decision as the fast path applies it.
pub fn fast(d: &policy::Decision) -> FastDecision {
    let a = d.actions();
    FastDecision {
        level: d.level().number(),
        actions: ActionSet {
            dscp: d.dscp().and_then(|v| Dscp::new(v.value())),
            dst_port: a.dst_port.map(policy::Port::get),
            dst_addr: a.dst_addr,
            mss_clamp: a.mss_clamp.map(policy::Mss::get),
        },
        meter: None,
    }
}

fn prefix(p: policy::Prefix) -> Prefix {
    let net = p.net();
    Prefix::new(net.network(), net.prefix_len())
}

fn coupon_binding(c: &policy::CouponBinding) -> Binding {
    let d = fast(c.decision());
    let only_to = Restriction {
        prefix: c.dst().map(prefix),
        port: c.port().map(policy::Port::get),
    };
    Binding {
        grant: Grant::Level {
            level: d.level,
            actions: d.actions,
        },
        meter: None,
        only_to: (only_to != Restriction::default()).then_some(only_to),
    }
}

/// The SP allocations as prefix entries, address allocations merged with
/// host-length prefix ones as the module doc says.
fn sp_prefixes(state: &PolicyState) -> Vec<(SpPrefix, String, Option<policy::Rate>)> {
    // (prefix, port) -> (decision, from an address allocation, id, rate)
    type Row = (FastDecision, bool, String, Option<policy::Rate>);
    let mut by_prefix: HashMap<(Prefix, Option<u16>), Row> = HashMap::new();
    let mut addrs: HashMap<IpAddr, ()> = HashMap::new();
    for a in state.sp_allocations() {
        let port = a.port().map(policy::Port::get);
        let (p, is_addr) = match a.target() {
            policy::SpMatch::Ip(ip) => {
                addrs.insert(ip, ());
                (Prefix::new(ip, if ip.is_ipv4() { 32 } else { 128 }), true)
            }
            policy::SpMatch::Prefix(p) => (prefix(p), false),
        };
        let row = (
            fast(a.decision()),
            is_addr,
            a.id().to_string(),
            a.decision().rate(),
        );
        match by_prefix.entry((p, port)) {
            std::collections::hash_map::Entry::Occupied(mut o) => {
                if is_addr {
                    o.insert(row);
                }
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(row);
            }
        }
    }
    // An address allocation for any port beats a host-prefix one on a port.
    for ip in addrs.keys() {
        let host = Prefix::new(*ip, if ip.is_ipv4() { 32 } else { 128 });
        let any = match by_prefix.get(&(host, None)) {
            Some(r) if r.1 => r.clone(),
            _ => continue,
        };
        for ((p, port), e) in by_prefix.iter_mut() {
            if *p == host && port.is_some() && !e.1 {
                *e = any.clone();
            }
        }
    }
    let mut v: Vec<(SpPrefix, String, Option<policy::Rate>)> = by_prefix
        .into_iter()
        .map(|((prefix, port), (decision, _, id, rate))| {
            (
                SpPrefix {
                    prefix,
                    port,
                    decision,
                },
                id,
                rate,
            )
        })
        .collect();
    // A stable order: the snapshot is the same for the same policy.
    v.sort_by_key(|e| (e.0.prefix.addr, e.0.prefix.len, e.0.port));
    v
}

#[cfg(test)]
mod tests;
