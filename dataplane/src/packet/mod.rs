//! Packet parsing and rewriting over plain byte slices: no DPDK, no
//! allocation, no panics on any input.
//!
//! # Layout
//! - [`parse`](mod@parse): Ethernet with 0-2 VLAN tags, IPv4 (options) or
//!   IPv6 (extension-header chain), TCP/UDP, fragments. Yields a 16-byte
//!   `Copy` [`Parsed`] of offsets and fields, and on demand a [`FlowKey`].
//! - [`rewrite`]: the actions (DSCP, destination/source port, destination/
//!   source address, MSS clamp), each reporting an [`Outcome`], and the
//!   reverse state [`ReverseRewrite`] a flow keeps for its replies. The
//!   fragment, UDP-zero-checksum and IPsec decisions are documented there.
//! - [`checksum`]: RFC 1624 incremental checksum updates.
//!
//! # Per-packet use (one worker)
//! ```
//! use sluice_dataplane::flow::{FlowDecision, FlowTable, FlowTableConfig, Side, NO_METER};
//! use sluice_dataplane::packet::{self, ActionSet, ReverseRewrite};
//! use sluice_dataplane::stats::Direction;
//!
//! fn process(
//!     frame: &mut [u8],
//!     dir: Direction,
//!     now: u64,
//!     flows: &mut FlowTable,
//!     classify: impl Fn(&packet::FlowKey) -> ActionSet,
//! ) {
//!     let Ok(p) = packet::parse(frame) else {
//!         return; // count the ParseError, forward untouched
//!     };
//!     let Some(key) = p.flow_key(frame, dir) else { return };
//!     let report = match flows.lookup(&key, p.tcp_flags(), now) {
//!         Some(hit) if hit.side == Side::Forward => {
//!             let actions = hit.decision.actions(&hit);
//!             packet::apply_forward(frame, &p, &actions)
//!         }
//!         Some(hit) => packet::apply_reverse(frame, &p, hit.reverse),
//!         None => {
//!             let actions = classify(&key);
//!             let reverse = ReverseRewrite::for_forward(&key, &actions);
//!             let decision = FlowDecision::new(&actions, 5, false, NO_METER, Default::default());
//!             // A refused insert (reply key taken) means: no rewrite.
//!             match flows.insert(key, reverse, actions, decision, p.tcp_flags(), now) {
//!                 Ok(_) => packet::apply_forward(frame, &p, &actions),
//!                 Err(_) => Default::default(),
//!             }
//!         }
//!     };
//!     for (_action, _outcome) in report.requested() {
//!         // counters[_action.index()][_outcome.index()] += 1
//!     }
//! }
//! # let mut flows = FlowTable::new(FlowTableConfig::default()).unwrap();
//! # let mut frame = [0u8; 64];
//! # process(&mut frame, Direction::Upstream, 0, &mut flows, |_| ActionSet::default());
//! ```
//!
//! # Fragments, in one place
//! | action        | unfragmented | first fragment | later fragments        |
//! |---------------|--------------|----------------|------------------------|
//! | DSCP          | rewritten    | rewritten      | rewritten              |
//! | port rewrite  | rewritten    | rewritten      | skip, NonFirstFragment |
//! | MSS clamp     | rewritten    | rewritten      | skip, NonFirstFragment |
//! | address       | rewritten    | skip, Fragmented | skip, Fragmented     |
//!
//! Addresses are all-or-none per datagram because reassembly keys on them;
//! see [`rewrite`] for the reasoning. Non-first fragments have flow keys with
//! ports 0: they should not create flow-table entries.
//!
//! # Cost
//! Parse plus one rewrite of a 64-byte TCP/IPv4 packet is some 60-70
//! instructions: [`parse`](parse()) and [`apply_forward`] are inlined into the
//! caller (the IPv4 path; the IPv6 extension-header walk is out of line),
//! untagged IPv4 without options is recognised in a few word compares, the
//! [`Parsed`] result is two words that stay in registers, reads are
//! fixed-size after one length check per header, and a checksum
//! update touches only the changed words (addresses as 32-bit words).
pub mod checksum;
pub mod parse;
pub mod rewrite;

pub use parse::{
    parse, FlowKey, Fragment, IpVersion, ParseError, Parsed, L4, MAX_EXT_HEADERS, PROTO_TCP,
    PROTO_UDP, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN,
};
pub use rewrite::{
    apply_forward, apply_reverse, clamp_mss, set_dscp, set_dst_addr, set_dst_port, set_src_addr,
    set_src_port, Action, ActionSet, AddrRewrite, ApplyReport, Dscp, Outcome, PortRewrite,
    ReverseRewrite,
};

#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod proptests;
