//! Classification: which treatment a new flow gets.
//!
//! Today the treatment comes from the static `[[rules]]` of the config,
//! first match wins; the policy tables (coupons, logins, service-provider
//! allocations) will take this place and keep the same contract: a
//! [`FlowKey`] in, an [`ActionSet`] (and the rule that produced it) out,
//! run once per flow, never per packet of an established flow.
//!
//! Rules apply to flows that start on the subscriber side
//! ([`Direction::Upstream`]); their replies get the inverse rewrite from the
//! flow table. Decisions made here, written down once:
//! - Address and port remaps apply to TCP and UDP only. Those are the
//!   protocols whose replies the flow table can match and rewrite back; an
//!   ICMP echo remapped to another host would come back from an address
//!   the sender never pinged. DSCP applies to any IP packet.
//! - A remap to the value the packet already carries is no rewrite.
use sluice_control::config::{IpNet, RuleConfig};

use crate::packet::parse::addr_bits;
use crate::packet::{ActionSet, Dscp, FlowKey, IpVersion, Parsed, PROTO_TCP, PROTO_UDP};
use crate::stats::Direction;

/// An address prefix as (family, network bits, mask), compared in two
/// word operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Prefix {
    version: IpVersion,
    net: u128,
    mask: u128,
}

impl Prefix {
    fn new(net: IpNet) -> Prefix {
        let (version, bits) = addr_bits(net.network());
        let width = if version == IpVersion::V4 { 32 } else { 128 };
        let host_bits = width - net.prefix_len() as u32;
        let mask = if host_bits >= 128 {
            0
        } else {
            (u128::MAX << host_bits) & (u128::MAX >> (128 - width))
        };
        Prefix {
            version,
            net: bits & mask,
            mask,
        }
    }

    #[inline]
    fn contains(&self, version: IpVersion, addr: u128) -> bool {
        self.version == version && addr & self.mask == self.net
    }
}

/// At most this many DSCP-only rules are matched per packet instead of
/// through the flow table (see [`StaticRules::stateless`]).
pub const STATELESS_MAX_RULES: usize = 4;

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    src: Option<Prefix>,
    dst: Option<Prefix>,
    proto: Option<u8>,
    dst_port: Option<u16>,
    /// No condition at all: matches every packet.
    any: bool,
    pub actions: ActionSet,
}

impl Rule {
    /// Compiles a validated config rule.
    pub fn from_config(r: &RuleConfig) -> Rule {
        Rule {
            any: r.src.is_none() && r.dst.is_none() && r.protocol.is_none() && r.dst_port.is_none(),
            name: r.name.clone(),
            src: r.src.map(Prefix::new),
            dst: r.dst.map(Prefix::new),
            proto: r.protocol.map(|p| p.number()),
            dst_port: r.dst_port,
            actions: ActionSet {
                // Config validation bounds DSCP to 0..=63.
                dscp: r.dscp.and_then(Dscp::new),
                dst_port: r.remap_port,
                dst_addr: r.remap_ip,
                mss_clamp: r.mss,
            },
        }
    }

    #[inline]
    fn matches(&self, k: &FlowKey) -> bool {
        self.proto.is_none_or(|p| p == k.proto)
            && self.dst_port.is_none_or(|p| p == k.dst_port)
            && self.dst.is_none_or(|d| d.contains(k.version, k.dst))
            && self.src.is_none_or(|s| s.contains(k.version, k.src))
    }

    /// [`Rule::matches`] on a packet's fields; `key` is its flow key, which
    /// only a rule with an address prefix reads (absent: no such rule).
    #[inline(always)]
    fn matches_parsed(&self, p: &Parsed, key: Option<&FlowKey>) -> bool {
        if self.any {
            return true;
        }
        self.proto.is_none_or(|x| x == p.proto())
            && self.dst_port.is_none_or(|x| x == p.dst_port())
            && self
                .dst
                .is_none_or(|d| key.is_some_and(|k| d.contains(k.version, k.dst)))
            && self
                .src
                .is_none_or(|s| key.is_some_and(|k| s.contains(k.version, k.src)))
    }

    fn has_prefix(&self) -> bool {
        self.src.is_some() || self.dst.is_some()
    }
}

/// The static rule list, first match wins.
#[derive(Debug, Clone)]
pub struct StaticRules {
    rules: Vec<Rule>,
    /// [`StaticRules::stateless`], decided once.
    stateless: bool,
    /// Some rule matches on an address prefix.
    needs_addrs: bool,
}

impl Default for StaticRules {
    fn default() -> StaticRules {
        StaticRules::from_config(&[])
    }
}

impl StaticRules {
    pub fn from_config(rules: &[RuleConfig]) -> StaticRules {
        let rules: Vec<Rule> = rules.iter().map(Rule::from_config).collect();
        let stateless = rules.len() <= STATELESS_MAX_RULES
            && rules.iter().all(|r| {
                let a = &r.actions;
                a.dst_port.is_none() && a.dst_addr.is_none() && a.mss_clamp.is_none()
            });
        let needs_addrs = rules.iter().any(Rule::has_prefix);
        StaticRules {
            rules,
            stateless,
            needs_addrs,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when per-packet classification is cheaper than a flow-table
    /// lookup and loses nothing: a handful of rules that only set DSCP (no
    /// remap, so no reply needs reverse state; no MSS clamp, which also
    /// applies to the reply's SYN-ACK). The worker then skips the flow
    /// table. With remaps, or once the policy tables classify (hundreds of
    /// cycles per lookup), the flow table is the fast path. Decided when the
    /// rules are compiled.
    #[inline]
    pub fn stateless(&self) -> bool {
        self.stateless
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.name.as_str())
    }

    /// The treatment of a new flow: the index of the first matching rule
    /// and its actions, restricted to what applies to this protocol.
    #[inline]
    pub fn classify(&self, k: &FlowKey) -> Option<(usize, ActionSet)> {
        if k.direction != Direction::Upstream {
            return None;
        }
        let (i, r) = self.rules.iter().enumerate().find(|(_, r)| r.matches(k))?;
        let mut a = r.actions;
        if k.proto != PROTO_TCP && k.proto != PROTO_UDP {
            a.dst_port = None;
            a.dst_addr = None;
        }
        if k.proto != PROTO_TCP {
            a.mss_clamp = None;
        }
        Some((i, a))
    }

    /// The per-packet classification of the stateless mode: the index of
    /// the first rule matching the packet `p` parsed from `buf`, travelling
    /// in `dir`, and that rule's DSCP. For that buffer it agrees with
    /// [`StaticRules::classify`] on `p.flow_key(buf, dir)`; it reads the
    /// addresses only if some rule has a prefix, and builds no
    /// [`ActionSet`]. The rule's other actions are not returned: with
    /// [`StaticRules::stateless`] rules there are none.
    #[inline]
    pub fn classify_dscp(
        &self,
        p: &Parsed,
        buf: &[u8],
        dir: Direction,
    ) -> Option<(usize, Option<Dscp>)> {
        if dir != Direction::Upstream {
            return None;
        }
        let key = if self.needs_addrs {
            Some(p.flow_key(buf, dir)?)
        } else {
            None
        };
        let (i, r) = self
            .rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches_parsed(p, key.as_ref()))?;
        Some((i, r.actions.dscp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_control::config::Protocol;
    use std::net::IpAddr;

    fn key(src: &str, dst: &str, proto: u8, dport: u16, dir: Direction) -> FlowKey {
        let s: IpAddr = src.parse().unwrap();
        let d: IpAddr = dst.parse().unwrap();
        FlowKey::new((s, 40000), (d, dport), proto, 0, dir).unwrap()
    }

    fn rules() -> StaticRules {
        StaticRules::from_config(&[
            RuleConfig {
                name: "web".into(),
                dst: Some("198.18.0.0/24".parse().unwrap()),
                protocol: Some(Protocol::Tcp),
                dst_port: Some(80),
                remap_port: Some(8080),
                ..Default::default()
            },
            RuleConfig {
                name: "endpoint".into(),
                dst: Some("198.18.0.2/32".parse().unwrap()),
                src: Some("10.0.0.0/8".parse().unwrap()),
                remap_ip: Some("198.18.0.3".parse().unwrap()),
                ..Default::default()
            },
            RuleConfig {
                name: "v6-ef".into(),
                dst: Some("2001:db8::/32".parse().unwrap()),
                dscp: Some(46),
                mss: Some(1200),
                ..Default::default()
            },
        ])
    }

    #[test]
    fn first_matching_rule_wins() {
        let r = rules();
        let (i, a) = r
            .classify(&key("10.1.1.1", "198.18.0.2", 6, 80, Direction::Upstream))
            .unwrap();
        assert_eq!((i, a.dst_port, a.dst_addr), (0, Some(8080), None));
        let (i, a) = r
            .classify(&key("10.1.1.1", "198.18.0.2", 6, 443, Direction::Upstream))
            .unwrap();
        assert_eq!(i, 1);
        assert_eq!(a.dst_addr, Some("198.18.0.3".parse().unwrap()));
    }

    #[test]
    fn prefixes_ports_protocols_and_families_must_all_match() {
        let r = rules();
        assert!(r
            .classify(&key("10.1.1.1", "198.18.1.2", 6, 80, Direction::Upstream))
            .is_none());
        assert!(r
            .classify(&key("11.1.1.1", "198.18.0.2", 17, 80, Direction::Upstream))
            .is_none());
        assert!(r
            .classify(&key(
                "2001:db8::1",
                "2001:db9::1",
                6,
                80,
                Direction::Upstream
            ))
            .is_none());
        // An IPv4 address whose bits equal an IPv6 prefix's never matches it.
        assert!(r
            .classify(&key("0.0.0.1", "32.1.13.184", 6, 1, Direction::Upstream))
            .is_none());
        let (i, _) = r
            .classify(&key(
                "2001:db8::1",
                "2001:db8:1::1",
                17,
                5,
                Direction::Upstream,
            ))
            .unwrap();
        assert_eq!(i, 2);
    }

    #[test]
    fn only_flows_from_the_subscriber_side_are_classified() {
        assert!(rules()
            .classify(&key("10.1.1.1", "198.18.0.2", 6, 80, Direction::Downstream))
            .is_none());
    }

    #[test]
    fn remaps_apply_to_tcp_udp_and_mss_to_tcp_only() {
        let r = rules();
        let (_, a) = r
            .classify(&key("10.1.1.1", "198.18.0.2", 1, 0, Direction::Upstream))
            .unwrap();
        assert_eq!(a, ActionSet::default(), "ICMP: no remap");
        let (_, a) = r
            .classify(&key(
                "2001:db8::1",
                "2001:db8::2",
                17,
                5,
                Direction::Upstream,
            ))
            .unwrap();
        assert_eq!((a.dscp, a.mss_clamp), (Dscp::new(46), None));
    }

    #[test]
    fn only_few_dscp_only_rules_are_stateless() {
        let dscp = |name: &str| RuleConfig {
            name: name.into(),
            dscp: Some(46),
            ..Default::default()
        };
        assert!(StaticRules::from_config(&[dscp("a"), dscp("b")]).stateless());
        assert!(!rules().stateless(), "remaps need reverse state");
        let many: Vec<RuleConfig> = (0..=STATELESS_MAX_RULES)
            .map(|i| dscp(&i.to_string()))
            .collect();
        assert!(!StaticRules::from_config(&many).stateless());
    }

    #[test]
    fn the_per_packet_match_agrees_with_the_flow_key_match() {
        use crate::packet::testutil::{self, Spec};
        use crate::packet::{parse, IpVersion as V};

        let dscp = |name: &str, d: u8| RuleConfig {
            name: name.into(),
            dscp: Some(d),
            ..Default::default()
        };
        let sets = [
            vec![dscp("all", 46)],
            vec![
                RuleConfig {
                    dst_port: Some(53),
                    protocol: Some(Protocol::Udp),
                    ..dscp("dns", 34)
                },
                RuleConfig {
                    dst: Some("2001:db8::/32".parse().unwrap()),
                    ..dscp("v6", 10)
                },
                RuleConfig {
                    src: Some("10.0.0.0/8".parse().unwrap()),
                    dst_port: Some(80),
                    ..dscp("web", 18)
                },
                dscp("rest", 0),
            ],
            vec![RuleConfig {
                src: Some("11.0.0.0/8".parse().unwrap()),
                ..dscp("none", 8)
            }],
            vec![RuleConfig {
                protocol: Some(Protocol::Tcp),
                ..Default::default()
            }],
        ];
        let mut tagged = Spec::udp4(false, 20);
        tagged.vlans = vec![(0x8100, 7)];
        let mut icmp = Spec::tcp4(0, vec![], 20);
        icmp.l4 = testutil::L4::Other(1);
        let frames = [
            Spec::tcp4(0, vec![], 10),
            Spec::udp4(false, 20),
            Spec::tcp6(0, vec![], 0),
            Spec::udp6(false, 0),
            tagged,
            icmp,
        ];
        for rules in sets.iter().map(|s| StaticRules::from_config(s)) {
            assert!(rules.stateless());
            for spec in &frames {
                let (f, _) = spec.build();
                let p = parse(&f).unwrap();
                for dir in [Direction::Upstream, Direction::Downstream] {
                    let key = p.flow_key(&f, dir).unwrap();
                    let want = rules.classify(&key).map(|(i, a)| (i, a.dscp));
                    assert_eq!(rules.classify_dscp(&p, &f, dir), want, "{spec:?} {dir:?}");
                }
            }
        }
        // The catch-all and the v6 rule do match something here.
        let (f, _) = Spec::tcp6(0, vec![], 0).build();
        let p = parse(&f).unwrap();
        assert_eq!(p.version(), V::V6);
        let two = StaticRules::from_config(&sets[1]);
        assert_eq!(
            two.classify_dscp(&p, &f, Direction::Upstream),
            Some((1, Dscp::new(10)))
        );
    }

    #[test]
    fn prefix_masks_cover_edge_lengths() {
        let all4 = Prefix::new("0.0.0.0/0".parse().unwrap());
        assert!(all4.contains(IpVersion::V4, 0xffff_ffff));
        assert!(!all4.contains(IpVersion::V6, 0));
        let host6 = Prefix::new("2001:db8::1/128".parse().unwrap());
        assert!(host6.contains(
            IpVersion::V6,
            u128::from("2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap())
        ));
        let all6 = Prefix::new("::/0".parse().unwrap());
        assert!(all6.contains(IpVersion::V6, u128::MAX));
    }
}
