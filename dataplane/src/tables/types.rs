//! The plain types of the tables' API: what a binding grants, what a flow
//! is given, prefixes, and the writer's errors. All `Copy` except the
//! policy lists; nothing here touches an atomic.
use std::fmt;
use std::net::IpAddr;

use thiserror::Error;

use crate::packet::parse::addr_bits;
use crate::packet::{ActionSet, IpVersion};

/// The highest priority level.
pub const MAX_LEVEL: u8 = 7;

/// The highest meter index a binding can carry (a binding record keeps it
/// in 24 bits; see the record layout in [`super`]). Prefix-table and tier
/// decisions are not limited.
pub const MAX_BINDING_METER: u32 = (1 << 24) - 2;

/// The level of best effort, what a flow gets when nothing says otherwise
/// (levels are numbered as in the policy model: 0 network control, highest,
/// ..= 7 scavenger).
pub const BEST_EFFORT: u8 = 5;

/// What a flow is given: a priority level, the rewrites of its forward
/// direction, and the meter (rate limiter) its packets are charged to.
/// The default is best effort, no rewrite, unmetered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastDecision {
    /// 0 (highest) ..= [`MAX_LEVEL`]; [`BEST_EFFORT`] by default.
    pub level: u8,
    pub actions: ActionSet,
    /// Index into the worker's meter array; `None` is unmetered.
    pub meter: Option<u32>,
}

impl Default for FastDecision {
    fn default() -> Self {
        FastDecision {
            level: BEST_EFFORT,
            actions: ActionSet::default(),
            meter: None,
        }
    }
}

/// Which step of the precedence produced a decision (for counters and
/// tracing; the worker applies the decision the same way whatever it is).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Source {
    /// Nothing matched: the snapshot's default. Also every flow that did
    /// not start on the subscriber side.
    #[default]
    Default,
    /// A service provider's allocation for the subscriber's own address.
    SpAddress,
    /// A service provider's prefix (longest match on the remote address).
    SpPrefix,
    /// The subscriber's coupon binding.
    Coupon,
    /// The subscriber's login binding.
    Login,
    /// A binding record was being rewritten for longer than the reader's
    /// bounded retry: the default was given with a stamp that is already
    /// stale, so the flow's next packet classifies again.
    Contended,
}

impl Source {
    pub const COUNT: usize = 6;
    pub const ALL: [Source; Source::COUNT] = [
        Source::Default,
        Source::SpAddress,
        Source::SpPrefix,
        Source::Coupon,
        Source::Login,
        Source::Contended,
    ];

    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn name(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::SpAddress => "sp-address",
            Source::SpPrefix => "sp-prefix",
            Source::Coupon => "coupon",
            Source::Login => "login",
            Source::Contended => "contended",
        }
    }
}

/// The three exact-match tables, all keyed by the subscriber's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// Service-provider allocations for one subscriber address.
    SpAddress = 0,
    Coupon = 1,
    Login = 2,
}

impl Table {
    pub const ALL: [Table; 3] = [Table::SpAddress, Table::Coupon, Table::Login];

    pub const fn name(self) -> &'static str {
        match self {
            Table::SpAddress => "sp-address",
            Table::Coupon => "coupon",
            Table::Login => "login",
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An address prefix. Host bits below `len` are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    pub const fn new(addr: IpAddr, len: u8) -> Prefix {
        Prefix { addr, len }
    }

    /// The prefix as (family, masked network bits, length), or an error if
    /// the length exceeds the family's width.
    pub(crate) fn bits(&self) -> Result<(IpVersion, u128, u8), TableError> {
        let (v, a) = addr_bits(self.addr);
        let w = width(v);
        if self.len > w {
            return Err(TableError::PrefixLen {
                addr: self.addr,
                len: self.len,
            });
        }
        Ok((v, a & mask(v, self.len), self.len))
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// The address width of a family, in bits.
#[inline]
pub(crate) const fn width(v: IpVersion) -> u8 {
    match v {
        IpVersion::V4 => 32,
        IpVersion::V6 => 128,
    }
}

/// The network mask of a `len`-bit prefix in `v`'s address bits
/// (`len` at most the family's width).
#[inline]
pub(crate) fn mask(v: IpVersion, len: u8) -> u128 {
    let w = u32::from(width(v));
    let len = u32::from(len).min(w);
    if len == 0 {
        0
    } else {
        (u128::MAX << (128 - len)) >> (128 - w)
    }
}

/// Limits a binding to part of the subscriber's traffic: destinations in
/// `prefix` (same family as the subscriber address) and/or destination
/// port `port`. A flow outside it does not match the binding, and the
/// precedence goes on to the next step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Restriction {
    pub prefix: Option<Prefix>,
    pub port: Option<u16>,
}

/// What a binding grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Its own level and actions.
    Level { level: u8, actions: ActionSet },
    /// Entry `n` of the prefix snapshot's `tiers` (login bandwidth tiers:
    /// re-publishing the snapshot changes every subscriber of a tier at
    /// once). A tier the current snapshot lacks matches nothing.
    Tier(u16),
}

impl Default for Grant {
    fn default() -> Self {
        Grant::Level {
            level: 0,
            actions: ActionSet::default(),
        }
    }
}

/// One exact-match binding: subscriber address -> this.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Binding {
    pub grant: Grant,
    /// The subscriber's own meter; with [`Grant::Tier`] it overrides the
    /// tier's. At most [`MAX_BINDING_METER`].
    pub meter: Option<u32>,
    pub only_to: Option<Restriction>,
}

/// One writer operation on an exact-match table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Insert, or replace the binding in place.
    Upsert {
        table: Table,
        subscriber: IpAddr,
        binding: Binding,
    },
    /// Remove every binding of `subscriber` in `table`; removing an absent
    /// key is not an error.
    Remove { table: Table, subscriber: IpAddr },
    /// Remove the binding of `subscriber` with this restriction (in the
    /// coupon table, which keeps one per restriction; elsewhere the same as
    /// `Remove`); absent is not an error.
    RemoveOne {
        table: Table,
        subscriber: IpAddr,
        only_to: Option<Restriction>,
    },
}

/// What an upsert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upserted {
    Inserted,
    Updated,
    /// The same binding was already there: nothing written, no flow
    /// invalidated.
    Unchanged,
}

/// A write the tables refused. The tables are left as they were.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TableError {
    #[error("{table} table full: all {capacity} bindings in use")]
    Full { table: Table, capacity: u32 },
    #[error("{table} table: both index buckets of {subscriber} are full (index overloaded)")]
    BucketsFull { table: Table, subscriber: IpAddr },
    #[error("level {0}: expected 0..={MAX_LEVEL}")]
    Level(u8),
    #[error("binding meter index {0}: expected 0..={MAX_BINDING_METER}")]
    Meter(u32),
    #[error("{0} of 0: expected 1..=65535")]
    Zero(&'static str),
    #[error("{what} {addr} is not of the same address family as {of}")]
    Family {
        what: &'static str,
        addr: IpAddr,
        of: IpAddr,
    },
    #[error("prefix length {len} for {addr}: longer than the address")]
    PrefixLen { addr: IpAddr, len: u8 },
    #[error("{what} {prefix} port {port:?} is listed twice")]
    Duplicate {
        what: &'static str,
        prefix: Prefix,
        port: Option<u16>,
    },
    #[error("{what} {value}: expected {expected}")]
    Config {
        what: &'static str,
        value: u64,
        expected: &'static str,
    },
}

/// A batch that [`super::TablesWriter::apply`] refused: `index` is the
/// first operation that failed. Operations before it were rolled back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("operation {index}: {error}")]
pub struct BatchError {
    pub index: usize,
    pub error: TableError,
}

/// Checks what the fast path relies on in an action set: no zero port or
/// MSS, and a remap address of the family `family_of` (when given).
pub(crate) fn check_actions(a: &ActionSet, family_of: Option<IpAddr>) -> Result<(), TableError> {
    if a.dst_port == Some(0) {
        return Err(TableError::Zero("destination port remap"));
    }
    if a.mss_clamp == Some(0) {
        return Err(TableError::Zero("MSS clamp"));
    }
    if let (Some(addr), Some(of)) = (a.dst_addr, family_of) {
        if addr.is_ipv4() != of.is_ipv4() {
            return Err(TableError::Family {
                what: "destination remap",
                addr,
                of,
            });
        }
    }
    Ok(())
}

/// Checks a decision held in the prefix snapshot.
pub(crate) fn check_decision(
    d: &FastDecision,
    family_of: Option<IpAddr>,
) -> Result<(), TableError> {
    if d.level > MAX_LEVEL {
        return Err(TableError::Level(d.level));
    }
    check_actions(&d.actions, family_of)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_cover_edge_lengths() {
        assert_eq!(mask(IpVersion::V4, 0), 0);
        assert_eq!(mask(IpVersion::V4, 8), 0xff00_0000);
        assert_eq!(mask(IpVersion::V4, 32), 0xffff_ffff);
        assert_eq!(mask(IpVersion::V6, 128), u128::MAX);
        assert_eq!(mask(IpVersion::V6, 1), 1 << 127);
    }

    #[test]
    fn prefix_bits_mask_host_bits_and_reject_long_lengths() {
        let p = Prefix::new("10.1.2.3".parse().unwrap(), 8);
        assert_eq!(p.bits().unwrap(), (IpVersion::V4, 0x0a00_0000, 8));
        assert!(matches!(
            Prefix::new("10.0.0.0".parse().unwrap(), 33).bits(),
            Err(TableError::PrefixLen { len: 33, .. })
        ));
        assert!(Prefix::new("::".parse().unwrap(), 128).bits().is_ok());
    }
}
