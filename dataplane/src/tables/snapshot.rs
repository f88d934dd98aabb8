//! The prefix snapshot: the rarely changed part of the policy (service
//! provider prefixes, eligibility, tiers, the default), compiled by the
//! writer into an immutable value that workers share through an `Arc`.
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::lpm::{Entry, Lpm};
use super::types::{check_decision, FastDecision, Prefix, TableError};
use crate::packet::IpVersion;

/// A service provider's prefix: flows whose remote address (the
/// destination of an upstream flow) is in `prefix`, and whose destination
/// port is `port` when given, get `decision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpPrefix {
    pub prefix: Prefix,
    pub port: Option<u16>,
    pub decision: FastDecision,
}

/// Whether coupon and login bindings apply to flows towards `prefix`
/// (and `port` when given). Longest match wins; see
/// [`PrefixPolicy::default_eligible`] for addresses no rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EligibilityRule {
    pub prefix: Prefix,
    pub port: Option<u16>,
    pub eligible: bool,
}

/// The prefix part of the policy, as the control thread hands it to
/// [`super::TablesWriter::publish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixPolicy {
    pub sp_prefixes: Vec<SpPrefix>,
    pub eligibility: Vec<EligibilityRule>,
    /// Eligibility of destinations no rule covers.
    pub default_eligible: bool,
    /// What [`super::Grant::Tier`] bindings point at.
    pub tiers: Vec<FastDecision>,
    /// What a flow gets when nothing else matches.
    pub default: FastDecision,
}

impl Default for PrefixPolicy {
    /// No prefixes, no tiers, everything eligible, best effort untouched.
    fn default() -> Self {
        PrefixPolicy {
            sp_prefixes: Vec::new(),
            eligibility: Vec::new(),
            default_eligible: true,
            tiers: Vec::new(),
            default: FastDecision::default(),
        }
    }
}

/// Counts live snapshots: one per [`Snapshot`] not yet dropped.
#[derive(Debug)]
struct LiveToken(Arc<AtomicUsize>);

impl LiveToken {
    fn new(count: &Arc<AtomicUsize>) -> LiveToken {
        count.fetch_add(1, Ordering::Relaxed);
        LiveToken(Arc::clone(count))
    }
}

impl Drop for LiveToken {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One published, immutable version of the prefix policy.
#[derive(Debug)]
pub struct Snapshot {
    generation: u64,
    /// The tables' epoch at which it was published (see
    /// [`super::TablesReader::refresh`]).
    pub(super) epoch: u32,
    pub(super) sp: Lpm<FastDecision>,
    pub(super) eligible: Lpm<bool>,
    pub(super) default_eligible: bool,
    pub(super) tiers: Box<[FastDecision]>,
    pub(super) default: FastDecision,
    /// No SP prefix and a default that rewrites nothing: with no binding
    /// either, no flow can be given anything but the default.
    pub(super) inert: bool,
    _live: LiveToken,
}

impl Snapshot {
    /// Compiles `p`, refusing what the fast path could not apply.
    pub(super) fn compile(
        p: &PrefixPolicy,
        generation: u64,
        live: &Arc<AtomicUsize>,
    ) -> Result<Snapshot, TableError> {
        let mut sp: Vec<Entry<FastDecision>> = Vec::with_capacity(p.sp_prefixes.len());
        for e in &p.sp_prefixes {
            check_decision(&e.decision, Some(e.prefix.addr))?;
            sp.push(entry(e.prefix, e.port, e.decision)?);
        }
        let sp = Lpm::build(sp).map_err(|d| {
            duplicate(
                "service-provider prefix",
                p.sp_prefixes[d.index].prefix,
                p.sp_prefixes[d.index].port,
            )
        })?;
        let mut el: Vec<Entry<bool>> = Vec::with_capacity(p.eligibility.len());
        for e in &p.eligibility {
            el.push(entry(e.prefix, e.port, e.eligible)?);
        }
        let eligible = Lpm::build(el).map_err(|d| {
            duplicate(
                "eligibility prefix",
                p.eligibility[d.index].prefix,
                p.eligibility[d.index].port,
            )
        })?;
        for d in p.tiers.iter().chain([&p.default]) {
            check_decision(d, None::<IpAddr>)?;
        }
        Ok(Snapshot {
            generation,
            epoch: 0,
            sp,
            eligible,
            default_eligible: p.default_eligible,
            tiers: p.tiers.clone().into_boxed_slice(),
            default: p.default,
            inert: p.sp_prefixes.is_empty() && p.default.actions == Default::default(),
            _live: LiveToken::new(live),
        })
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The decision of every flow nothing else matches.
    pub fn default(&self) -> &FastDecision {
        &self.default
    }

    /// Whether coupon/login bindings apply towards `addr:port`.
    #[inline]
    pub(super) fn is_eligible(&self, v: IpVersion, addr: u128, port: u16) -> bool {
        if self.eligible.is_empty() {
            return self.default_eligible;
        }
        self.eligible
            .lookup(v, addr, port)
            .copied()
            .unwrap_or(self.default_eligible)
    }

    /// Heap bytes held by this snapshot, roughly.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Snapshot>()
            + self.sp.bytes()
            + self.eligible.bytes()
            + std::mem::size_of_val(&*self.tiers)
    }

    /// Number of service-provider prefix entries.
    pub fn sp_prefixes(&self) -> usize {
        self.sp.len()
    }
}

fn entry<V>(p: Prefix, port: Option<u16>, v: V) -> Result<Entry<V>, TableError> {
    if port == Some(0) {
        return Err(TableError::Zero("prefix port"));
    }
    let (ver, net, len) = p.bits()?;
    Ok((ver, net, len, port, v))
}

fn duplicate(what: &'static str, prefix: Prefix, port: Option<u16>) -> TableError {
    TableError::Duplicate { what, prefix, port }
}
