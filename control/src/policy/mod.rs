//! The policy: which treatment each flow gets, the changes that set it, the
//! protocol that carries them and the store that keeps them. Pure logic: no
//! DPDK, no sockets, no threads. The control thread owns one [`Policy`],
//! feeds it request lines, and publishes the resulting [`PolicyState`] to
//! the dataplane tables, which are tested against
//! [`PolicyState::classify`].
//!
//! # Layout
//! - [`model`]: levels, decisions and the rows of each table, validated at
//!   construction (and their binary form, the snapshot's and the journal's:
//!   `model/binary.rs`).
//! - [`state`]: [`PolicyState`], every table in memory; atomic batches;
//!   the reference classifier.
//! - [`protocol`]: the line-delimited JSON requests and responses (its
//!   module doc is the protocol reference, with an example per op).
//! - [`store`]: the journal and snapshot that make accepted changes durable.
//! - [`csv`]: bulk import of one table from CSV.
//!
//! # Tables
//! - **coupon**: a redeemed coupon bound to a subscriber address, optionally
//!   narrowed to a destination prefix and/or port, with an optional expiry.
//! - **login** and **tier**: a subscriber address logged in as a customer
//!   whose tier names a decision.
//! - **sp**: a service provider's allocation for traffic to its own
//!   addresses: one exact address ("per-IP") or a prefix ("per-SP").
//! - **eligibility**: the destinations (prefix, optional port) that coupons
//!   and tiers may prioritise; none at all means every destination.
//! - **default**: the decision for everything else (best effort, no
//!   rewrite, unless changed).
//!
//! # Precedence
//! A flow is classified once, from its first packet on the subscriber side
//! (`src` = subscriber, `dst` = remote end). The first rule that matches
//! decides:
//!
//! 1. **SP allocation on the exact destination address** (`ip`). Among the
//!    allocations on that address, one on the flow's port beats one for any
//!    port.
//! 2. **SP allocation on a destination prefix**, the longest prefix that
//!    has an allocation matching the port (a port-specific allocation beats
//!    a port-less one on the same prefix; a longer prefix beats a port).
//!    A provider pays for its traffic, so its allocations hold for every
//!    subscriber and are not subject to eligibility.
//! 3. If the destination is **not eligible**, the default decision: coupons
//!    and tiers grant nothing there.
//! 4. **Coupon** of the source address that has not expired at the query's
//!    `now`, the most specific: one with a port beats one without; then the
//!    longer destination prefix; a prefix beats no prefix. (The match of a
//!    coupon, subscriber + prefix + port, is unique, so there is never a tie.)
//! 5. **Login** of the source address: its tier's decision.
//! 6. The **default** decision.
//!
//! Port-specific rows (of any table) match TCP and UDP flows only. Expiry
//! is checked at classification (`FlowQuery::now`); expired rows are
//! removed by the control thread with [`PolicyState::expired_coupons`].
//!
//! # Consistency rules (checked when a batch is applied)
//! Keys are unique per table; so are coupon matches and SP matches. A login
//! needs an existing tier, and a tier in use cannot be removed. A rewrite
//! of the destination address must be of the family of the traffic it can
//! apply to (a coupon's subscriber, an allocation's address, every login of
//! a tier); the default decision cannot rewrite the address.
pub mod csv;
pub mod model;
pub mod protocol;
pub mod state;
pub mod store;

use std::path::Path;

pub use model::{
    Actions, Change, CouponBinding, Decision, Dscp, DscpMark, EligibilityRule, Entry, Key, Level,
    LoginBinding, ModelError, Mss, Port, Prefix, Rate, SpAllocation, SpMatch, Table, Tier,
};
pub use protocol::{parse_request, BatchOp, ProtocolError, Request, Response, MAX_LINE_BYTES};
pub use state::{
    Applied, BatchError, FlowQuery, PolicyState, Rows, Source, Staged, TableInfo, Touched,
    MAX_COUPONS_PER_SUBSCRIBER,
};
pub use store::{CommitError, LoadReport, Store, StoreError, StoreOptions, StoreStats};

/// A policy and, unless it lives in memory only, its store: what the
/// control thread holds.
#[derive(Debug)]
pub struct Policy {
    state: PolicyState,
    store: Option<Store>,
}

impl Policy {
    /// A policy that is not persisted (tests, dry runs).
    pub fn in_memory() -> Policy {
        Policy {
            state: PolicyState::new(),
            store: None,
        }
    }

    /// Load the policy stored in `dir` (created if missing).
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<(Policy, LoadReport), StoreError> {
        let (store, state, report) = Store::open(dir, opts)?;
        Ok((
            Policy {
                state,
                store: Some(store),
            },
            report,
        ))
    }

    pub fn state(&self) -> &PolicyState {
        &self.state
    }

    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    /// Apply a batch atomically and, with a store, durably: when this
    /// returns `Ok`, the batch is on disk and may be acknowledged.
    pub fn commit(&mut self, batch: &[Change]) -> Result<Applied, CommitError> {
        self.commit_touched(batch).map(|(a, _)| a)
    }

    /// [`Policy::commit`], also saying what the batch touched in the fast
    /// tables: what the control thread passes on to the mirror.
    pub fn commit_touched(&mut self, batch: &[Change]) -> Result<(Applied, Touched), CommitError> {
        match &mut self.store {
            Some(store) => store.commit_touched(&mut self.state, batch),
            None => Ok(self.state.apply_touched(batch)?),
        }
    }

    /// Parse and execute one request line.
    pub fn handle_line(&mut self, line: &str) -> Response {
        match parse_request(line) {
            Ok(req) => self.execute(req),
            Err(e) => Response::error(e),
        }
    }

    /// Execute one request.
    pub fn execute(&mut self, req: Request) -> Response {
        match req {
            Request::Apply { op, changes } => match self.commit(&changes) {
                Ok(a) => Response::applied(a),
                Err(e) => Response::commit_error(op, e),
            },
            Request::Get { key } => match self.state.get(&key) {
                Some(e) => Response::entry(e),
                None => Response::error(ProtocolError::new(
                    None,
                    format!("key.{}", key.field()),
                    format!("no {key}"),
                )),
            },
            Request::List {
                table,
                offset,
                limit,
            } => Response::list(
                table,
                self.state.len(table),
                self.state.list(table, offset, limit),
            ),
            Request::Stats => Response::stats(
                self.state.seq(),
                self.state.tables(),
                self.store.as_ref().map(Store::stats),
            ),
            Request::Tables => Response::tables(self.state.tables()),
        }
    }
}

#[cfg(test)]
mod tests;
