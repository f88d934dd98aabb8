//! Sluice's control plane. Pure Rust, no DPDK.
//!
//! # Layout
//! - [`config`]: the strict TOML configuration, its defaults, validation and
//!   the EAL argument list derived from it.
//! - [`policy`]: the policy model (coupons, logins and tiers, service
//!   provider allocations, eligibility), atomic batches, the reference
//!   classifier, the line-delimited JSON control protocol, the durable
//!   journal and snapshot, and CSV import.
#![forbid(unsafe_code)]

pub mod config;
pub mod policy;
