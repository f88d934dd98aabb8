//! Sluice's control plane. Pure Rust, no DPDK.
//!
//! # Layout
//! - [`config`]: the strict TOML configuration, its defaults, validation and
//!   the EAL argument list derived from it.
//! - [`client`]: the client side of the control socket (`sluicectl`):
//!   connection, request building, batched CSV import, human formatting.
//! - [`server`]: the control socket (Unix domain, mode 0600, line-delimited
//!   JSON) served by one `mio` thread over a [`policy::Policy`].
//! - [`coupons`]: signed priority coupons on the appliance: keys, the
//!   durable ledger (issued, redeemed, revoked), in-band redemption and its
//!   answers, and the `coupon` rows each redeemed coupon gives.
//! - [`dns`]: DNS answers snooped on the wire, for hostname-scoped coupons.
//! - [`policy`]: the policy model (coupons, logins and tiers, service
//!   provider allocations, eligibility), atomic batches, the reference
//!   classifier, the line-delimited JSON control protocol, the durable
//!   journal and snapshot, and CSV import.
#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod coupons;
pub mod dns;
pub mod policy;
pub mod server;
