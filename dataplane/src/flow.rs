//! Per-worker flow table (no DPDK). Filled in by the rewrite work (issue 3).
