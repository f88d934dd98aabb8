//! `sluice-perf`: the benchmark runner. It runs the Sluice appliance and a
//! peer (dpdk-testpmd, DPDK's qos_sched example) in the same invocation,
//! on the same cores, devices and pool settings, so that every figure is
//! also a ratio against that peer, and it appends what it measured (with
//! the machine, the git revision and the exact commands) to RESULTS.md.
//!
//! It builds nothing of Sluice's: it finds the `sluice` binary next to its
//! own executable, or is told where it is.
//!
//! # Layout
//! - [`scenario`]: the named benchmarks, including those that wait for a
//!   feature of the appliance.
//! - [`bench`]: measuring tools round by round and building the reports.
//! - [`process`]: spawning a tool, timing its output lines, stopping it.
//! - [`sluice`], [`testpmd`], [`qos_sched`]: each tool's command line and
//!   the parsing of its counters.
//! - [`stats`]: steady-state rates, medians, ratios and units.
//! - [`machine`]: CPU, kernel, DPDK version, TSC rate, git revision.
//! - [`report`]: text and Markdown tables, the RESULTS.md record.
//! - [`svg`]: the frame-size chart.
//! - [`corpus`]: TCP/IPv4 frames with real headers, and a pcap writer.
//! - [`micro`]: the in-process parse + rewrite micro-benchmark.
//! - [`lookup`]: the in-process flow/policy lookup benchmark at scale.
//! - [`updates`]: an update storm through the control socket during the
//!   full pipeline (loss, updates/s, ack → effect).
#![deny(unsafe_code)]

pub mod bench;
pub mod corpus;
pub mod lookup;
pub mod machine;
pub mod micro;
pub mod process;
pub mod qos_sched;
pub mod report;
pub mod scenario;
pub mod sluice;
pub mod stats;
pub mod svg;
pub mod testpmd;
pub mod updates;
