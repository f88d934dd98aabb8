//! Sluice's data plane: the DPDK seam, the poll-mode workers and the run loop.
//!
//! # Layout
//! - [`dpdk`]: the only module with `unsafe`: safe owned wrappers (EAL,
//!   mempool, port, rx/tx queue, mbuf, burst, lcore launch) over `dpdk-sys`.
//! - [`stats`]: per-worker counters (single writer, lock-free readers) and
//!   the report printed at shutdown.
//! - [`packet`]: parsing and rewrite actions over `&mut [u8]` (no DPDK).
//! - [`flow`]: the per-worker flow table: each flow's decision and the
//!   reverse rewrite its replies need.
//! - [`classify`]: which treatment a new flow gets (static rules today).
//! - [`worker`]: the per-core poll loop: rx burst, process, tx burst.
//! - [`punt`]: the rings that carry control packets (coupon redemptions,
//!   DNS answers) to the control thread and its replies back.
//! - [`app`]: bring-up (EAL, pool, ports), worker launch, the main lcore's
//!   statistics/stop loop, and the orderly shutdown with the pool leak check.
#![deny(unsafe_code)]

pub mod app;
pub mod classify;
pub mod dpdk;
pub mod flow;
pub mod mirror;
pub mod packet;
pub mod punt;
pub mod sched;
pub mod stats;
pub mod tables;
pub mod worker;
