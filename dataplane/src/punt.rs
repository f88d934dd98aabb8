//! Packets the workers hand to the control thread, and frames it sends back.
//!
//! Two kinds of control packet cross the appliance:
//! - **consumed**: a coupon redemption request, UDP to the configured
//!   redemption port of *any* destination address, seen on the subscriber
//!   side. The appliance is a transparent bump with no address of its own,
//!   so the client addresses the redemption to a host beyond it (its
//!   gateway, the service) and the appliance answers in that host's name.
//!   The request is not forwarded.
//! - **copied**: DNS answers (UDP from port 53) seen on the upstream side,
//!   which the control thread snoops to learn the addresses of hostnames a
//!   coupon is scoped to. The original is forwarded untouched.
//!
//! Both travel over one bounded lock-free ring ([`PuntRings::to_control`]);
//! a full ring drops the punt (a consumed packet is freed, a copy is not
//! made) and counts it, so a flood of control packets never slows a
//! worker or grows memory. Replies go the other way over
//! [`PuntRings::replies`]; any worker takes them and sends them out of
//! the subscriber port (at level 0 on a shaped port), counted as
//! `injected`.
use crossbeam_queue::ArrayQueue;

use crate::dpdk::Mbuf;

/// Packets waiting for the control thread, and replies waiting for a
/// worker (counted in the pool budget, `Config::mbufs_needed`).
pub const RING_SLOTS: usize = sluice_control::config::PUNT_RING_SLOTS;

/// The level [`crate::worker::Pipeline::process_burst`] gives a packet the
/// control thread consumes (it leaves the burst for the punt ring).
pub const PUNT_CONSUME: u8 = u8::MAX - 1;

/// The rings shared by the workers and the control thread.
pub struct PuntRings {
    pub to_control: ArrayQueue<Punted>,
    pub replies: ArrayQueue<Mbuf>,
}

/// A packet for the control thread.
pub struct Punted {
    pub mbuf: Mbuf,
    /// Consumed (a redemption) or a copy (a DNS answer).
    pub consumed: bool,
}

impl Default for PuntRings {
    fn default() -> Self {
        PuntRings {
            to_control: ArrayQueue::new(RING_SLOTS),
            replies: ArrayQueue::new(RING_SLOTS),
        }
    }
}

impl PuntRings {
    /// Frees whatever is still queued (shutdown: before the pool is
    /// counted).
    pub fn clear(&self) -> usize {
        let mut n = 0;
        while self.to_control.pop().is_some() {
            n += 1;
        }
        while self.replies.pop().is_some() {
            n += 1;
        }
        n
    }
}

/// What a worker punts: which UDP packets, seen in which direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PuntRules {
    /// UDP destination port of redemption requests (subscriber side);
    /// 0: none.
    pub redeem_port: u16,
    /// Copy DNS answers (upstream side, UDP source port 53).
    pub snoop_dns: bool,
}

/// What a worker does with a parsed UDP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PuntAction {
    Forward,
    Consume,
    Copy,
}

impl PuntRules {
    pub fn is_off(&self) -> bool {
        self.redeem_port == 0 && !self.snoop_dns
    }

    /// The action for a UDP packet with these ports travelling upstream
    /// (from the subscriber) or not.
    #[inline]
    pub fn action(&self, upstream: bool, src_port: u16, dst_port: u16) -> PuntAction {
        if upstream {
            if self.redeem_port != 0 && dst_port == self.redeem_port {
                return PuntAction::Consume;
            }
        } else if self.snoop_dns && src_port == 53 {
            return PuntAction::Copy;
        }
        PuntAction::Forward
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redemptions_are_consumed_only_from_the_subscriber_side_and_dns_copied_only_from_upstream() {
        let r = PuntRules {
            redeem_port: 7466,
            snoop_dns: true,
        };
        assert_eq!(r.action(true, 40000, 7466), PuntAction::Consume);
        assert_eq!(r.action(false, 40000, 7466), PuntAction::Forward);
        assert_eq!(r.action(false, 53, 40000), PuntAction::Copy);
        assert_eq!(r.action(true, 53, 40000), PuntAction::Forward);
        assert_eq!(r.action(true, 40000, 53), PuntAction::Forward);
        let off = PuntRules {
            redeem_port: 0,
            snoop_dns: false,
        };
        assert!(off.is_off());
        assert_eq!(off.action(true, 1, 0), PuntAction::Forward);
        assert_eq!(off.action(false, 53, 1), PuntAction::Forward);
    }
}
