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
//!   feature of the appliance or a tool this machine lacks.
//! - [`bench`]: measuring tools round by round and building the reports of
//!   the bridge scenarios.
//! - [`pipeline`]: the full-pipeline scenarios (`pipeline`, `congestion`).
//! - [`process`]: spawning a tool, timing its output lines, stopping it.
//! - [`sluice`], [`testpmd`], [`qos_sched`]: each tool's command line and
//!   the parsing of its counters.
//! - [`sluice_report`]: Sluice's `--stats-json` report: rx → tx latency,
//!   queueing-delay histograms per level.
//! - [`pktgen`]: Sluice on memif driven by Pktgen-DPDK, where installed.
//! - [`stats`]: steady-state rates, medians, ratios and units.
//! - [`machine`]: CPU, kernel, DPDK version, TSC rate, git revision.
//! - [`report`]: text and Markdown tables, the RESULTS.md record.
//! - [`svg`]: the frame-size chart and the delay CDF.
//! - [`corpus`]: frames with real headers, the mixed pipeline corpus and
//!   the policy rows it meets, and a pcap writer.
//! - [`micro`]: the in-process parse + rewrite micro-benchmark.
//! - [`lookup`]: the in-process flow/policy lookup benchmark at scale.
//! - [`updates`]: an update storm through the control socket during the
//!   full pipeline (loss, updates/s, ack → effect).
//! - [`control_path`]: the control thread's steps per binding update, timed
//!   in process.
#![deny(unsafe_code)]

pub mod bench;
pub mod control_path;
pub mod corpus;
pub mod lookup;
pub mod machine;
pub mod micro;
pub mod pipeline;
pub mod pktgen;
pub mod process;
pub mod qos_sched;
pub mod report;
pub mod scenario;
pub mod sluice;
pub mod sluice_report;
pub mod stats;
pub mod svg;
pub mod testpmd;
pub mod updates;
