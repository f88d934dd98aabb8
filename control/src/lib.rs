//! Sluice's control plane. Pure Rust, no DPDK.
//!
//! # Layout
//! - [`config`]: the strict TOML configuration, its defaults, validation and
//!   the EAL argument list derived from it.
#![forbid(unsafe_code)]

pub mod config;
