//! DNS answer snooping: learn hostname → address mappings from the DNS
//! answers that cross the appliance, so that a coupon scoped to a hostname
//! pattern (`cdn.example.org`, `*.video.example`) applies to the addresses
//! those names currently resolve to.
//!
//! Pure Rust, no sockets: [`parse_answer`] takes a UDP payload (source port
//! 53), [`DnsCache`] keeps what was learned until its TTL runs out, and
//! [`host_matches`] is the one definition of a hostname pattern.
//!
//! # What is trusted
//! The *content* of an answer is believed: a subscriber who can forge an
//! answer can point a zero-rated hostname at any address. So the caller must
//! only feed answers whose source is a configured resolver, arriving on the
//! port that faces it (where anti-spoofing holds). Within an answer, only
//! what lies on the question's CNAME chain is learned (see [`parse_answer`]);
//! unrelated records riding along are ignored, as a resolver would.
//!
//! # Limits
//! - Answers are not matched to queries (no ID or port tracking).
//! - UDP only; a client that retries over TCP after a truncated answer is not
//!   seen. A truncated (TC) answer is still used: the records the server
//!   included are whole (servers truncate at record boundaries and fix the
//!   counts), so each one is true, only the set may be incomplete. A message
//!   whose bytes end before its counts say is damaged, not truncated, and is
//!   refused.
//! - At most [`MAX_RECORDS`] answer records are considered and CNAME chains
//!   are followed for at most [`MAX_CHAIN`] hops; the authority and
//!   additional sections are never parsed.
//! - Names must be plain hostnames (letters, digits, `-`, `_`); a record with
//!   any other byte in its name is skipped, so a label can never smuggle a
//!   dot into a pattern match.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use simple_dns::rdata::RData;
use simple_dns::{Name, Packet, CLASS};

/// Answer records considered per message; later ones are ignored.
pub const MAX_RECORDS: u16 = 64;
/// CNAME hops followed from the question name.
pub const MAX_CHAIN: usize = 8;
/// Shortest time an entry is kept (seconds). A TTL of 0 still means the
/// client is about to connect to that address, so the coupon must apply for
/// that long.
pub const MIN_TTL: u32 = 5;
/// Longest time an entry is kept (seconds), however long the TTL.
pub const MAX_TTL: u32 = 86_400;

const HEADER_LEN: usize = 12;
const FLAG_QR: u16 = 0x8000;
const FLAG_TC: u16 = 0x0200;

/// Why an answer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("DNS message is a query (QR=0), expected a response")]
    NotResponse,
    #[error("DNS opcode {0}, expected 0 (QUERY)")]
    NotQuery(u8),
    #[error("DNS rcode {0}, expected 0 (NOERROR)")]
    ErrorRcode(u8),
    #[error("DNS question count {0}, expected 1")]
    QuestionCount(u16),
    #[error("malformed DNS message: {0}")]
    Malformed(String),
}

/// One hostname → address mapping taken from an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Learned {
    /// Lowercase, no trailing dot.
    pub name: String,
    pub addr: IpAddr,
    /// Seconds, as sent (the minimum along the CNAME chain), not yet clamped.
    pub ttl: u32,
}

/// What one DNS answer teaches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    pub names: Vec<Learned>,
    /// The TC bit was set: `names` may be a subset of the real answer.
    pub truncated: bool,
}

/// An answer record that matters here: (owner, data, TTL), names normalised.
enum Rec {
    Addr(String, IpAddr, u32),
    Alias(String, String, u32),
}

/// Parses a DNS response (a UDP payload) and returns the addresses learned
/// for the question name, every alias on its CNAME chain, and the chain's
/// end. For `www.v.example CNAME edge.cdn.net` + `edge.cdn.net A 1.2.3.4`
/// both names get 1.2.3.4, each with the minimum TTL from it to the address.
pub fn parse_answer(payload: &[u8]) -> Result<Answer, DnsError> {
    let header = payload.get(..HEADER_LEN).ok_or_else(|| {
        DnsError::Malformed(format!("{} bytes, shorter than the header", payload.len()))
    })?;
    let word = |i: usize| u16::from_be_bytes([header[i], header[i + 1]]);
    let flags = word(2);
    if flags & FLAG_QR == 0 {
        return Err(DnsError::NotResponse);
    }
    let opcode = ((flags >> 11) & 0xf) as u8;
    if opcode != 0 {
        return Err(DnsError::NotQuery(opcode));
    }
    let rcode = (flags & 0xf) as u8;
    if rcode != 0 {
        return Err(DnsError::ErrorRcode(rcode));
    }
    if word(4) != 1 {
        return Err(DnsError::QuestionCount(word(4)));
    }
    // Make the parser stop after the question and the first MAX_RECORDS
    // answers: this bounds work and allocation (the crate reserves room for
    // every counted record), and a quirk in a section we never read cannot
    // refuse the message.
    let mut msg = payload.to_vec();
    msg[6..8].copy_from_slice(&word(6).min(MAX_RECORDS).to_be_bytes());
    msg[8..12].fill(0);
    let packet = Packet::parse(&msg).map_err(|e| DnsError::Malformed(e.to_string()))?;

    let qname = packet.questions.first().and_then(|q| hostname(&q.qname));
    let records: Vec<Rec> = packet
        .answers
        .iter()
        .filter(|rr| rr.class == CLASS::IN)
        .filter_map(|rr| {
            // RFC 2181 §8: a TTL with the top bit set means zero.
            let ttl = if rr.ttl > i32::MAX as u32 { 0 } else { rr.ttl };
            let owner = hostname(&rr.name)?;
            match &rr.rdata {
                RData::A(a) => Some(Rec::Addr(owner, Ipv4Addr::from(a.address).into(), ttl)),
                RData::AAAA(a) => Some(Rec::Addr(owner, Ipv6Addr::from(a.address).into(), ttl)),
                RData::CNAME(c) => Some(Rec::Alias(owner, hostname(&c.0)?, ttl)),
                _ => None,
            }
        })
        .collect();
    let names = qname.map(|q| follow_chain(q, &records)).unwrap_or_default();
    Ok(Answer {
        names,
        truncated: flags & FLAG_TC != 0,
    })
}

/// Walks `qname`'s CNAME chain through `records` and emits every address
/// found on it for each name at or before the address's owner.
fn follow_chain(qname: String, records: &[Rec]) -> Vec<Learned> {
    // chain[i] = (name, TTL of the CNAME leading from it to chain[i + 1]).
    let mut chain: Vec<(String, u32)> = vec![(qname, u32::MAX)];
    while chain.len() <= MAX_CHAIN {
        let last = &chain[chain.len() - 1].0;
        let next = records.iter().find_map(|r| match r {
            Rec::Alias(owner, target, ttl) if owner == last => Some((target, *ttl)),
            _ => None,
        });
        let Some((target, ttl)) = next else { break };
        if chain.iter().any(|(n, _)| n == target) {
            break; // a CNAME loop: what was walked so far still stands
        }
        let end = chain.len() - 1;
        chain[end].1 = ttl;
        chain.push((target.clone(), u32::MAX));
    }
    let mut out = Vec::new();
    for (i, (owner, _)) in chain.iter().enumerate() {
        for r in records {
            let Rec::Addr(name, addr, ttl) = r else {
                continue;
            };
            let mut ttl = *ttl;
            if name != owner {
                continue;
            }
            // The owner, then back towards the question: each alias's TTL is
            // bounded by its own CNAME's.
            for (j, (alias, cname_ttl)) in chain[..=i].iter().enumerate().rev() {
                if j < i {
                    ttl = ttl.min(*cname_ttl);
                }
                out.push(Learned {
                    name: alias.clone(),
                    addr: *addr,
                    ttl,
                });
            }
        }
    }
    out
}

/// A DNS name as a lowercase hostname without trailing dot, or `None` if it
/// is the root or has a byte outside letters, digits, `-` and `_`.
fn hostname(name: &Name) -> Option<String> {
    let mut out = String::new();
    for label in name.as_bytes() {
        if label.is_empty()
            || !label
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        {
            return None;
        }
        if !out.is_empty() {
            out.push('.');
        }
        out.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
    }
    (!out.is_empty()).then_some(out)
}

/// Whether hostname `name` matches `pattern`. Case-insensitive, a trailing
/// dot on either is ignored. `*.suffix` matches any name strictly under
/// `suffix` (one or more labels), not `suffix` itself; any other pattern
/// matches exactly.
pub fn host_matches(pattern: &str, name: &str) -> bool {
    let pattern = pattern.strip_suffix('.').unwrap_or(pattern).as_bytes();
    let name = name.strip_suffix('.').unwrap_or(name).as_bytes();
    match pattern.strip_prefix(b"*.") {
        Some(suffix) if !suffix.is_empty() => {
            name.len() > suffix.len() + 1
                && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                && name[name.len() - suffix.len() - 1] == b'.'
        }
        _ => pattern.eq_ignore_ascii_case(name),
    }
}

/// Counters for [`DnsCache`]. Refusals are counted by [`DnsCache::snoop`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsStats {
    /// Answers learned from.
    pub answers: u64,
    /// Of those, answers with the TC bit set.
    pub truncated: u64,
    pub refused_not_response: u64,
    pub refused_not_query: u64,
    pub refused_rcode: u64,
    pub refused_question_count: u64,
    pub refused_malformed: u64,
    /// (name, address) entries created or extended.
    pub records_learned: u64,
    /// Live entries dropped (or not admitted) because the cache was full.
    pub evictions: u64,
    /// Entries dropped because their time ran out.
    pub expired: u64,
}

/// Hostname → addresses learned from answers, each with its own expiry
/// (unix seconds). Holds at most `max_entries` (name, address) pairs; when
/// full, the soonest-expiring pair gives way, and a newcomer that would
/// expire no later than it is not admitted.
#[derive(Debug, Clone)]
pub struct DnsCache {
    max_entries: usize,
    names: BTreeMap<String, BTreeMap<IpAddr, u64>>,
    /// Every entry, soonest-expiring first.
    by_expiry: BTreeSet<(u64, String, IpAddr)>,
    stats: DnsStats,
}

impl DnsCache {
    /// A cache of at most `max_entries` (name, address) pairs; 0 keeps none.
    pub fn new(max_entries: usize) -> Self {
        Self {
            max_entries,
            names: BTreeMap::new(),
            by_expiry: BTreeSet::new(),
            stats: DnsStats::default(),
        }
    }

    /// Parses `payload` and learns from it, counting a refusal by reason.
    pub fn snoop(
        &mut self,
        payload: &[u8],
        now: u64,
    ) -> Result<Vec<(String, IpAddr, u64)>, DnsError> {
        match parse_answer(payload) {
            Ok(answer) => Ok(self.learn(&answer, now)),
            Err(e) => {
                *match e {
                    DnsError::NotResponse => &mut self.stats.refused_not_response,
                    DnsError::NotQuery(_) => &mut self.stats.refused_not_query,
                    DnsError::ErrorRcode(_) => &mut self.stats.refused_rcode,
                    DnsError::QuestionCount(_) => &mut self.stats.refused_question_count,
                    DnsError::Malformed(_) => &mut self.stats.refused_malformed,
                } += 1;
                Err(e)
            }
        }
    }

    /// Learns `answer` at time `now` (unix seconds), TTLs clamped to
    /// [[`MIN_TTL`], [`MAX_TTL`]]. Returns the (name, address, expires_at)
    /// entries that are new or now expire later than before.
    pub fn learn(&mut self, answer: &Answer, now: u64) -> Vec<(String, IpAddr, u64)> {
        self.stats.answers += 1;
        self.stats.truncated += u64::from(answer.truncated);
        let mut changed = Vec::new();
        for l in &answer.names {
            let expires = now.saturating_add(u64::from(l.ttl.clamp(MIN_TTL, MAX_TTL)));
            let old = self
                .names
                .get(&l.name)
                .and_then(|a| a.get(&l.addr))
                .copied();
            match old {
                Some(old) if old >= expires => continue,
                Some(old) => {
                    self.by_expiry.remove(&(old, l.name.clone(), l.addr));
                }
                None if !self.make_room(expires, now) => continue,
                None => {}
            }
            self.names
                .entry(l.name.clone())
                .or_default()
                .insert(l.addr, expires);
            self.by_expiry.insert((expires, l.name.clone(), l.addr));
            self.stats.records_learned += 1;
            changed.push((l.name.clone(), l.addr, expires));
        }
        changed
    }

    /// Frees one slot if full; false if the newcomer should not be admitted.
    fn make_room(&mut self, expires: u64, now: u64) -> bool {
        if self.by_expiry.len() < self.max_entries {
            return true;
        }
        match self.by_expiry.first() {
            Some(&(soonest, _, _)) if soonest <= now => self.expire(now) > 0,
            Some(&(soonest, _, _)) if soonest < expires => {
                if let Some((_, name, addr)) = self.by_expiry.pop_first() {
                    self.forget(&name, addr);
                }
                self.stats.evictions += 1;
                true
            }
            _ => {
                self.stats.evictions += 1;
                false
            }
        }
    }

    fn forget(&mut self, name: &str, addr: IpAddr) {
        if let Some(addrs) = self.names.get_mut(name) {
            addrs.remove(&addr);
            if addrs.is_empty() {
                self.names.remove(name);
            }
        }
    }

    /// Live addresses (expiring after `now`) of every name matching
    /// `pattern` (see [`host_matches`]), each with its latest expiry, sorted
    /// by address.
    pub fn lookup_pattern(&self, pattern: &str, now: u64) -> Vec<(IpAddr, u64)> {
        let mut found: BTreeMap<IpAddr, u64> = BTreeMap::new();
        let mut add = |addrs: &BTreeMap<IpAddr, u64>| {
            for (&addr, &expires) in addrs.iter().filter(|(_, &e)| e > now) {
                let e = found.entry(addr).or_insert(expires);
                *e = (*e).max(expires);
            }
        };
        if pattern.starts_with("*.") {
            self.names
                .iter()
                .filter(|(name, _)| host_matches(pattern, name))
                .for_each(|(_, addrs)| add(addrs));
        } else {
            let exact = pattern.strip_suffix('.').unwrap_or(pattern);
            if let Some(addrs) = self.names.get(&exact.to_ascii_lowercase()) {
                add(addrs);
            }
        }
        found.into_iter().collect()
    }

    /// Drops every entry expiring at or before `now`; returns how many.
    pub fn expire(&mut self, now: u64) -> usize {
        let mut dropped = 0;
        while self.by_expiry.first().is_some_and(|(e, _, _)| *e <= now) {
            if let Some((_, name, addr)) = self.by_expiry.pop_first() {
                self.forget(&name, addr);
                dropped += 1;
            }
        }
        self.stats.expired += dropped as u64;
        dropped
    }

    /// (name, address) entries held, live or not yet expired away.
    pub fn len(&self) -> usize {
        self.by_expiry.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_expiry.is_empty()
    }

    pub fn stats(&self) -> &DnsStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use simple_dns::rdata::{A, AAAA, CNAME};
    use simple_dns::{Label, PacketFlag, Question, ResourceRecord, OPCODE, RCODE, TYPE};

    fn reply(qname: &str) -> Packet<'_> {
        let mut p = Packet::new_reply(7);
        let name = Name::new_unchecked(qname);
        p.questions
            .push(Question::new(name, TYPE::A.into(), CLASS::IN.into(), false));
        p
    }

    fn a<'a>(owner: &'a str, ip: [u8; 4], ttl: u32) -> ResourceRecord<'a> {
        let rdata = RData::A(A {
            address: u32::from_be_bytes(ip),
        });
        ResourceRecord::new(Name::new_unchecked(owner), CLASS::IN, ttl, rdata)
    }

    fn cname<'a>(owner: &'a str, target: &'a str, ttl: u32) -> ResourceRecord<'a> {
        let rdata = RData::CNAME(CNAME(Name::new_unchecked(target)));
        ResourceRecord::new(Name::new_unchecked(owner), CLASS::IN, ttl, rdata)
    }

    fn learned(name: &str, addr: &str, ttl: u32) -> Learned {
        Learned {
            name: name.into(),
            addr: addr.parse().unwrap(),
            ttl,
        }
    }

    fn parse(p: &Packet) -> Result<Answer, DnsError> {
        parse_answer(&p.build_bytes_vec_compressed().unwrap())
    }

    #[test]
    fn a_and_aaaa_records_are_learned_lowercased() {
        let mut p = reply("CDN.Example.org.");
        p.answers.push(a("cdn.example.ORG", [192, 0, 2, 1], 300));
        p.answers.push(a("cdn.example.org", [192, 0, 2, 2], 200));
        let v6 = RData::AAAA(AAAA {
            address: "2001:db8::1".parse::<Ipv6Addr>().unwrap().into(),
        });
        let cdn = Name::new_unchecked("cdn.example.org");
        p.answers.push(ResourceRecord::new(cdn, CLASS::IN, 100, v6));
        let answer = parse(&p).unwrap();
        assert_eq!(
            answer.names,
            vec![
                learned("cdn.example.org", "192.0.2.1", 300),
                learned("cdn.example.org", "192.0.2.2", 200),
                learned("cdn.example.org", "2001:db8::1", 100),
            ]
        );
        assert!(!answer.truncated);
    }

    #[test]
    fn cname_chain_gives_every_alias_the_address_with_the_chain_min_ttl() {
        let mut p = reply("www.video.example");
        p.answers.push(cname("www.video.example", "v.cdn.net", 600));
        p.answers.push(cname("v.cdn.net", "edge.cdn.net", 30));
        p.answers.push(a("edge.cdn.net", [1, 2, 3, 4], 120));
        assert_eq!(
            parse(&p).unwrap().names,
            vec![
                learned("edge.cdn.net", "1.2.3.4", 120),
                learned("v.cdn.net", "1.2.3.4", 30),
                learned("www.video.example", "1.2.3.4", 30),
            ]
        );
    }

    #[test]
    fn records_off_the_question_chain_are_ignored() {
        let mut p = reply("www.video.example");
        p.answers.push(a("bank.example", [6, 6, 6, 6], 300));
        p.answers.push(a("www.video.example", [1, 2, 3, 4], 300));
        let names = parse(&p).unwrap().names;
        assert_eq!(names, vec![learned("www.video.example", "1.2.3.4", 300)]);
    }

    #[test]
    fn cname_chain_stops_after_max_chain_hops_and_at_loops() {
        let hops: Vec<String> = (0..=MAX_CHAIN + 1)
            .map(|i| format!("n{i}.example"))
            .collect();
        let chain_of = |len: usize| {
            let mut p = reply(&hops[0]);
            for w in hops[..=len].windows(2) {
                p.answers.push(cname(&w[0], &w[1], 60));
            }
            p.answers.push(a(&hops[len], [1, 1, 1, 1], 60));
            parse(&p).unwrap().names.len()
        };
        assert_eq!(chain_of(MAX_CHAIN), MAX_CHAIN + 1);
        assert_eq!(chain_of(MAX_CHAIN + 1), 0);

        let mut p = reply("a.example");
        p.answers.push(cname("a.example", "b.example", 60));
        p.answers.push(cname("b.example", "a.example", 60));
        p.answers.push(a("c.example", [1, 1, 1, 1], 60));
        assert_eq!(parse(&p).unwrap().names, vec![]);
    }

    #[test]
    fn only_the_first_max_records_answers_are_considered() {
        let mut p = reply("many.example");
        for i in 0..100u8 {
            p.answers.push(a("many.example", [10, 0, 0, i], 60));
        }
        assert_eq!(parse(&p).unwrap().names.len(), usize::from(MAX_RECORDS));
    }

    #[test]
    fn names_that_are_not_plain_hostnames_are_skipped() {
        let labels = [
            Label::new_unchecked(&b"evil.video"[..]),
            Label::new_unchecked(&b"example"[..]),
        ];
        let mut p = Packet::new_reply(1);
        let q = Name::new_with_labels(&labels);
        p.questions.push(Question::new(
            q.clone(),
            TYPE::A.into(),
            CLASS::IN.into(),
            false,
        ));
        p.answers.push(ResourceRecord::new(
            q,
            CLASS::IN,
            60,
            RData::A(A { address: 1 }),
        ));
        assert_eq!(parse(&p).unwrap().names, vec![]);
    }

    #[test]
    fn queries_error_rcodes_other_opcodes_and_odd_question_counts_are_refused() {
        let mut q = Packet::new_query(1);
        q.questions.push(reply("x.example").questions.remove(0));
        assert_eq!(parse(&q).unwrap_err(), DnsError::NotResponse);

        let mut nx = reply("x.example");
        *nx.rcode_mut() = RCODE::NameError;
        assert_eq!(parse(&nx).unwrap_err(), DnsError::ErrorRcode(3));

        let mut notify = reply("x.example");
        *notify.opcode_mut() = OPCODE::Notify;
        assert_eq!(parse(&notify).unwrap_err(), DnsError::NotQuery(4));

        assert_eq!(
            parse(&Packet::new_reply(1)).unwrap_err(),
            DnsError::QuestionCount(0)
        );
        assert!(matches!(
            parse_answer(&[0x81; 5]),
            Err(DnsError::Malformed(_))
        ));
    }

    /// `dig www.example.com A` as a resolver sends it: the CNAME target and
    /// the A owner are compression pointers, and an EDNS OPT record follows.
    const DIG_ANSWER: &[u8] = b"\x12\x34\x81\x80\x00\x01\x00\x02\x00\x00\x00\x01\
        \x03www\x07example\x03com\x00\x00\x01\x00\x01\
        \xc0\x0c\x00\x05\x00\x01\x00\x00\x0e\x10\x00\x07\x04edge\xc0\x10\
        \xc0\x2d\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x5d\xb8\xd8\x22\
        \x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00";

    #[test]
    fn captured_answer_with_compression_pointers_parses() {
        assert_eq!(
            parse_answer(DIG_ANSWER).unwrap().names,
            vec![
                learned("edge.example.com", "93.184.216.34", 60),
                learned("www.example.com", "93.184.216.34", 60),
            ]
        );
    }

    #[test]
    fn compression_pointer_loops_are_refused_not_followed() {
        let header = b"\x00\x01\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00";
        // The question name is a pointer to itself.
        let mut msg = header.to_vec();
        msg.extend_from_slice(b"\xc0\x0c\x00\x01\x00\x01");
        assert!(matches!(parse_answer(&msg), Err(DnsError::Malformed(_))));
        // The answer's owner points forward, at bytes pointing back to it.
        let mut msg = header.to_vec();
        msg.extend_from_slice(b"\x01a\x00\x00\x01\x00\x01\xc0\x15\xc0\x13");
        msg.extend_from_slice(b"\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x01\x02\x03\x04");
        assert!(matches!(parse_answer(&msg), Err(DnsError::Malformed(_))));
    }

    #[test]
    fn truncated_answers_keep_their_whole_records_but_cut_bytes_are_refused() {
        let mut p = reply("big.example");
        p.set_flags(PacketFlag::TRUNCATION);
        p.answers.push(a("big.example", [192, 0, 2, 9], 60));
        let bytes = p.build_bytes_vec_compressed().unwrap();
        let answer = parse_answer(&bytes).unwrap();
        assert!(answer.truncated);
        assert_eq!(answer.names, vec![learned("big.example", "192.0.2.9", 60)]);
        for cut in [1, 3, 10] {
            let short = &bytes[..bytes.len() - cut];
            assert!(matches!(parse_answer(short), Err(DnsError::Malformed(_))));
        }
    }

    fn answer(names: &[(&str, &str, u32)]) -> Answer {
        Answer {
            names: names.iter().map(|(n, a, t)| learned(n, a, *t)).collect(),
            truncated: false,
        }
    }

    #[test]
    fn ttls_are_clamped_and_entries_expire() {
        let mut cache = DnsCache::new(10);
        let new = cache.learn(
            &answer(&[
                ("a.example", "10.0.0.1", 0),
                ("b.example", "10.0.0.2", u32::MAX),
            ]),
            1000,
        );
        assert_eq!(
            new,
            vec![
                ("a.example".into(), "10.0.0.1".parse().unwrap(), 1000 + 5),
                (
                    "b.example".into(),
                    "10.0.0.2".parse().unwrap(),
                    1000 + 86_400
                ),
            ]
        );
        assert_eq!(cache.lookup_pattern("a.example", 1004).len(), 1);
        assert_eq!(cache.lookup_pattern("a.example", 1005), vec![]);
        assert_eq!(cache.expire(1005), 1);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.stats().expired, 1);
    }

    #[test]
    fn relearning_reports_only_extensions() {
        let mut cache = DnsCache::new(10);
        let ans = answer(&[("a.example", "10.0.0.1", 60)]);
        assert_eq!(cache.learn(&ans, 100).len(), 1);
        assert_eq!(cache.learn(&ans, 100), vec![]);
        assert_eq!(cache.learn(&ans, 130)[0].2, 190);
        assert_eq!(cache.len(), 1);
        assert_eq!(
            cache.lookup_pattern("A.EXAMPLE.", 100),
            vec![("10.0.0.1".parse().unwrap(), 190)]
        );
        assert_eq!(cache.stats().records_learned, 2);
    }

    #[test]
    fn a_full_cache_evicts_the_soonest_expiring_entry() {
        let mut cache = DnsCache::new(2);
        cache.learn(
            &answer(&[("a.x", "10.0.0.1", 100), ("b.x", "10.0.0.2", 50)]),
            0,
        );
        // Longer-lived newcomer pushes out b.x (expires soonest).
        assert_eq!(
            cache.learn(&answer(&[("c.x", "10.0.0.3", 200)]), 0).len(),
            1
        );
        assert_eq!(cache.lookup_pattern("b.x", 0), vec![]);
        // A newcomer expiring sooner than everything held is not admitted.
        assert_eq!(cache.learn(&answer(&[("d.x", "10.0.0.4", 10)]), 0), vec![]);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.stats().evictions, 2);
        // Expired entries give way without counting as evictions.
        assert_eq!(
            cache.learn(&answer(&[("e.x", "10.0.0.5", 10)]), 150).len(),
            1
        );
        assert_eq!(cache.stats().evictions, 2);
        assert_eq!(cache.stats().expired, 1);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn wildcard_lookup_covers_names_under_the_suffix_only() {
        let mut cache = DnsCache::new(10);
        cache.learn(
            &answer(&[
                ("video.example", "10.0.0.1", 60),
                ("a.video.example", "10.0.0.2", 60),
                ("b.c.video.example", "10.0.0.3", 60),
                ("b.c.video.example", "10.0.0.2", 90),
                ("xvideo.example", "10.0.0.4", 60),
            ]),
            0,
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            cache.lookup_pattern("*.video.example", 0),
            vec![(ip("10.0.0.2"), 90), (ip("10.0.0.3"), 60)]
        );
        assert_eq!(
            cache.lookup_pattern("video.example", 0),
            vec![(ip("10.0.0.1"), 60)]
        );
    }

    #[test]
    fn snoop_counts_refusals_by_reason() {
        let mut cache = DnsCache::new(10);
        assert!(cache.snoop(&[0; 12], 0).is_err());
        assert!(cache.snoop(&[1], 0).is_err());
        assert_eq!(cache.snoop(DIG_ANSWER, 0).unwrap().len(), 2);
        let s = cache.stats();
        assert_eq!(
            (s.refused_not_response, s.refused_malformed, s.answers),
            (1, 1, 1)
        );
    }

    #[test]
    fn host_pattern_table() {
        for (pattern, name, expected) in [
            ("cdn.example.org", "cdn.example.org", true),
            ("cdn.example.org", "CDN.Example.ORG.", true),
            ("cdn.example.org.", "cdn.example.org", true),
            ("cdn.example.org", "a.cdn.example.org", false),
            ("cdn.example.org", "example.org", false),
            ("*.video.example", "a.video.example", true),
            ("*.video.example", "a.b.video.example", true),
            ("*.VIDEO.example.", "A.video.EXAMPLE", true),
            ("*.video.example", "video.example", false),
            ("*.video.example", "xvideo.example", false),
            ("*.video.example", ".video.example", false),
            ("*.video.example", "video.example.com", false),
            ("*.", "anything", false),
            ("*", "anything", false),
            ("", "", true),
        ] {
            assert_eq!(host_matches(pattern, name), expected, "{pattern} vs {name}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_answer(&bytes);
        }

        #[test]
        fn arbitrary_bodies_behind_a_valid_header_never_panic(
            counts in any::<[u8; 6]>(),
            body in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let mut msg = vec![0, 1, 0x81, 0x80, 0, 1];
            msg.extend_from_slice(&counts);
            msg.extend_from_slice(&body);
            let _ = DnsCache::new(4).snoop(&msg, 0);
        }

        #[test]
        fn host_matches_never_panics(p in ".{0,20}", n in ".{0,20}") {
            let _ = host_matches(&p, &n);
        }
    }
}
