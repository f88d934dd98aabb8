//! Packet parsing and rewriting over `&mut [u8]` (no DPDK). Filled in by the
//! parsing/rewrite work (issue 3).
