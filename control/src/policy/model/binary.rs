//! The policy's rows in a compact binary form: what a snapshot holds
//! (`store.rs`, format 2) and what a journal record holds (a batch's
//! changes, [`put_change`]).
//!
//! Writing a million coupons as JSON took ~250 ms per compaction, and an
//! update storm paid for it in every row it journaled; in this form it
//! takes ~75 ms (~60 of them encoding, ~10 the `fsync`) and a third of the
//! space (24 bytes for a storm coupon against ~80), `sluice-perf control`.
//! Decoding validates every row as the JSON decoding does (the same
//! checks, through the same constructors), so a snapshot cannot make the
//! policy hold a row a request could not.
//!
//! Encoding, little-endian throughout: a string is `u16` length + UTF-8
//! bytes; an address is `4` + 4 bytes or `6` + 16 bytes; a prefix is an
//! address + `u8` length; an option is `0`, or `1` + the value; a level is
//! its number (`u8`). The rows' members follow in their JSON order. A
//! change is its op (`0` add, `1` update, `2` remove) and table (`0`
//! coupon, `1` login, `2` tier, `3` sp, `4` eligibility, `5` default), then
//! the row, or for a removal the key: an id or name as a string, a login's
//! subscriber address, an eligibility rule's prefix and optional port, the
//! default's nothing.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::Actions;
use super::{
    check_default, check_name_ref, check_unicast, Change, CouponBinding, Decision, Dscp, DscpMark,
    EligibilityRule, Entry, Key, Level, LoginBinding, ModelError, Mss, Port, Prefix, Rate,
    SpAllocation, SpMatch, Table, Tier,
};

/// A cursor over encoded rows; every read says what was missing or wrong.
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data, at: 0 }
    }

    /// Bytes read so far.
    pub(crate) fn offset(&self) -> usize {
        self.at
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.at == self.data.len()
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        let b = self
            .data
            .get(self.at..self.at.saturating_add(n))
            .ok_or_else(|| format!("truncated: {n} bytes wanted at offset {}", self.at))?;
        self.at += n;
        Ok(b)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.bytes(N)?.try_into().expect("N bytes"))
    }

    pub(crate) fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn str(&mut self) -> Result<&'a str, String> {
        let n = self.u16()?;
        std::str::from_utf8(self.bytes(n.into())?).map_err(|e| format!("bad UTF-8: {e}"))
    }

    fn flag(&mut self) -> Result<bool, String> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            t => Err(format!("bad option tag {t}")),
        }
    }

    fn opt<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, String>,
    ) -> Result<Option<T>, String> {
        if self.flag()? {
            f(self).map(Some)
        } else {
            Ok(None)
        }
    }

    fn ip(&mut self) -> Result<IpAddr, String> {
        match self.u8()? {
            4 => Ok(IpAddr::V4(Ipv4Addr::from(self.array::<4>()?))),
            6 => Ok(IpAddr::V6(Ipv6Addr::from(self.array::<16>()?))),
            t => Err(format!("bad address tag {t}")),
        }
    }

    fn prefix(&mut self) -> Result<Prefix, String> {
        let (addr, len) = (self.ip()?, self.u8()?);
        IpNet::new(addr, len)
            .ok()
            .and_then(Prefix::new)
            .ok_or_else(|| format!("bad prefix {addr}/{len}"))
    }

    fn port(&mut self) -> Result<Port, String> {
        let p = self.u16()?;
        Port::new(p).ok_or_else(|| format!("bad port {p}"))
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Names are at most MAX_NAME_BYTES (checked at construction).
    let n = u16::try_from(s.len()).expect("names are short");
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_ip(out: &mut Vec<u8>, a: IpAddr) {
    match a {
        IpAddr::V4(a) => {
            out.push(4);
            out.extend_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            out.push(6);
            out.extend_from_slice(&a.octets());
        }
    }
}

fn put_prefix(out: &mut Vec<u8>, p: Prefix) {
    put_ip(out, p.net().addr());
    out.push(p.net().prefix_len());
}

fn put_opt<T: Copy>(out: &mut Vec<u8>, v: Option<T>, f: impl FnOnce(&mut Vec<u8>, T)) {
    match v {
        Some(v) => {
            out.push(1);
            f(out, v);
        }
        None => out.push(0),
    }
}

fn put_port(out: &mut Vec<u8>, p: Port) {
    out.extend_from_slice(&p.get().to_le_bytes());
}

fn checked<T>(r: Result<T, ModelError>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
}

/// A row type of the snapshot.
pub(crate) trait Rows: Sized {
    fn put(&self, out: &mut Vec<u8>);
    fn take(r: &mut Reader) -> Result<Self, String>;
}

impl Rows for Decision {
    fn put(&self, out: &mut Vec<u8>) {
        out.push(self.level.number());
        let a = &self.actions;
        match a.dscp {
            None => out.push(0),
            Some(DscpMark::FromLevel) => out.push(1),
            Some(DscpMark::Value(d)) => out.extend_from_slice(&[2, d.value()]),
        }
        put_opt(out, a.dst_port, put_port);
        put_opt(out, a.dst_addr, put_ip);
        put_opt(out, a.mss_clamp, |o, m| {
            o.extend_from_slice(&m.get().to_le_bytes())
        });
        put_opt(out, self.rate, |o, r| {
            o.extend_from_slice(&r.committed_bps().to_le_bytes());
            o.extend_from_slice(&r.peak_bps().to_le_bytes());
        });
    }

    fn take(r: &mut Reader) -> Result<Decision, String> {
        let n = r.u8()?;
        let level = Level::from_number(n.into()).ok_or_else(|| format!("bad level {n}"))?;
        let dscp = match r.u8()? {
            0 => None,
            1 => Some(DscpMark::FromLevel),
            2 => {
                let v = r.u8()?;
                Some(DscpMark::Value(
                    Dscp::new(v).ok_or_else(|| format!("bad DSCP {v}"))?,
                ))
            }
            t => return Err(format!("bad DSCP tag {t}")),
        };
        let dst_port = r.opt(Reader::port)?;
        let dst_addr = r.opt(Reader::ip)?;
        let mss_clamp = r.opt(|r| {
            let m = r.u16()?;
            Mss::new(m).ok_or_else(|| format!("bad MSS {m}"))
        })?;
        let rate = r.opt(|r| {
            let (c, p) = (r.u64()?, r.u64()?);
            checked(Rate::new(c, p))
        })?;
        if let Some(a) = dst_addr {
            checked(check_unicast("dst_addr", a))?;
        }
        Ok(Decision::new(
            level,
            Actions {
                dscp,
                dst_port,
                dst_addr,
                mss_clamp,
            },
            rate,
        ))
    }
}

/// The default decision: a [`Decision`] that passes [`check_default`].
pub(crate) fn take_default(r: &mut Reader) -> Result<Decision, String> {
    let d = Decision::take(r)?;
    checked(check_default(&d))?;
    Ok(d)
}

impl Rows for CouponBinding {
    fn put(&self, out: &mut Vec<u8>) {
        put_str(out, &self.id);
        put_ip(out, self.subscriber);
        put_opt(out, self.dst, put_prefix);
        put_opt(out, self.port, put_port);
        self.decision.put(out);
        put_opt(out, self.expires, |o, e| {
            o.extend_from_slice(&e.to_le_bytes())
        });
    }

    fn take(r: &mut Reader) -> Result<CouponBinding, String> {
        let id = r.str()?;
        let subscriber = r.ip()?;
        let dst = r.opt(Reader::prefix)?;
        let port = r.opt(Reader::port)?;
        let decision = Decision::take(r)?;
        let expires = r.opt(Reader::u64)?;
        checked(CouponBinding::from_parts(
            id, subscriber, dst, port, decision, expires,
        ))
    }
}

impl Rows for LoginBinding {
    fn put(&self, out: &mut Vec<u8>) {
        put_ip(out, self.subscriber);
        put_str(out, &self.login);
        put_str(out, &self.tier);
    }

    fn take(r: &mut Reader) -> Result<LoginBinding, String> {
        let subscriber = checked(check_unicast("subscriber", r.ip()?))?;
        let (login, tier) = (r.str()?, r.str()?);
        checked(check_name_ref("login", login))?;
        checked(check_name_ref("tier", tier))?;
        Ok(LoginBinding {
            subscriber,
            login: login.to_string(),
            tier: tier.to_string(),
        })
    }
}

impl Rows for Tier {
    fn put(&self, out: &mut Vec<u8>) {
        put_str(out, &self.name);
        self.decision.put(out);
    }

    fn take(r: &mut Reader) -> Result<Tier, String> {
        let name = r.str()?;
        checked(check_name_ref("name", name))?;
        Ok(Tier {
            name: name.to_string(),
            decision: Decision::take(r)?,
        })
    }
}

impl Rows for SpAllocation {
    fn put(&self, out: &mut Vec<u8>) {
        put_str(out, &self.id);
        put_str(out, &self.provider);
        match self.target {
            SpMatch::Ip(a) => {
                out.push(0);
                put_ip(out, a);
            }
            SpMatch::Prefix(p) => {
                out.push(1);
                put_prefix(out, p);
            }
        }
        put_opt(out, self.port, put_port);
        self.decision.put(out);
    }

    fn take(r: &mut Reader) -> Result<SpAllocation, String> {
        let (id, provider) = (r.str()?, r.str()?);
        checked(check_name_ref("id", id))?;
        checked(check_name_ref("provider", provider))?;
        let target = match r.u8()? {
            0 => SpMatch::Ip(checked(check_unicast("ip", r.ip()?))?),
            1 => SpMatch::Prefix(r.prefix()?),
            t => return Err(format!("bad target tag {t}")),
        };
        let port = r.opt(Reader::port)?;
        let decision = Decision::take(r)?;
        checked(decision.check_family("allocation's address", target.is_ipv4()))?;
        Ok(SpAllocation {
            id: id.to_string(),
            provider: provider.to_string(),
            target,
            port,
            decision,
        })
    }
}

impl Rows for EligibilityRule {
    fn put(&self, out: &mut Vec<u8>) {
        put_prefix(out, self.dst);
        put_opt(out, self.port, put_port);
    }

    fn take(r: &mut Reader) -> Result<EligibilityRule, String> {
        Ok(EligibilityRule {
            dst: r.prefix()?,
            port: r.opt(Reader::port)?,
        })
    }
}

/// A table's code in the binary forms (stable: written to disk).
fn table_code(t: Table) -> u8 {
    match t {
        Table::Coupon => 0,
        Table::Login => 1,
        Table::Tier => 2,
        Table::Sp => 3,
        Table::Eligibility => 4,
        Table::Default => 5,
    }
}

fn table_of(code: u8) -> Result<Table, String> {
    Ok(match code {
        0 => Table::Coupon,
        1 => Table::Login,
        2 => Table::Tier,
        3 => Table::Sp,
        4 => Table::Eligibility,
        5 => Table::Default,
        t => return Err(format!("bad table code {t}")),
    })
}

fn put_entry(out: &mut Vec<u8>, e: &Entry) {
    match e {
        Entry::Coupon(r) => r.put(out),
        Entry::Login(r) => r.put(out),
        Entry::Tier(r) => r.put(out),
        Entry::Sp(r) => r.put(out),
        Entry::Eligibility(r) => r.put(out),
        Entry::Default(d) => d.put(out),
    }
}

fn take_entry(table: Table, r: &mut Reader) -> Result<Entry, String> {
    Ok(match table {
        Table::Coupon => Entry::Coupon(CouponBinding::take(r)?),
        Table::Login => Entry::Login(LoginBinding::take(r)?),
        Table::Tier => Entry::Tier(Tier::take(r)?),
        Table::Sp => Entry::Sp(SpAllocation::take(r)?),
        Table::Eligibility => Entry::Eligibility(EligibilityRule::take(r)?),
        Table::Default => Entry::Default(take_default(r)?),
    })
}

fn put_key(out: &mut Vec<u8>, k: &Key) {
    match k {
        Key::Coupon(s) | Key::Tier(s) | Key::Sp(s) => put_str(out, s),
        Key::Login(a) => put_ip(out, *a),
        Key::Eligibility(p, port) => {
            put_prefix(out, *p);
            put_opt(out, *port, put_port);
        }
        Key::Default => {}
    }
}

/// A key, checked as [`Key::from_json`] checks it.
fn take_key(table: Table, r: &mut Reader) -> Result<Key, String> {
    let name = |r: &mut Reader, field: &str| -> Result<String, String> {
        let s = r.str()?;
        checked(check_name_ref(field, s))?;
        Ok(s.to_string())
    };
    Ok(match table {
        Table::Coupon => Key::Coupon(name(r, "id")?),
        Table::Sp => Key::Sp(name(r, "id")?),
        Table::Tier => Key::Tier(name(r, "name")?),
        Table::Login => Key::Login(checked(check_unicast("subscriber", r.ip()?))?),
        Table::Eligibility => Key::Eligibility(r.prefix()?, r.opt(Reader::port)?),
        Table::Default => Key::Default,
    })
}

/// Appends one change of a batch (see the module doc).
pub(crate) fn put_change(out: &mut Vec<u8>, c: &Change) {
    let (op, table) = match c {
        Change::Add(e) => (0, e.table()),
        Change::Update(e) => (1, e.table()),
        Change::Remove(k) => (2, k.table()),
    };
    out.extend_from_slice(&[op, table_code(table)]);
    match c {
        Change::Add(e) | Change::Update(e) => put_entry(out, e),
        Change::Remove(k) => put_key(out, k),
    }
}

/// Reads one change, its row or key validated as the JSON decoding
/// validates it (the same constructors and checks).
pub(crate) fn take_change(r: &mut Reader) -> Result<Change, String> {
    let op = r.u8()?;
    let table = table_of(r.u8()?)?;
    Ok(match op {
        0 => Change::Add(take_entry(table, r)?),
        1 => Change::Update(take_entry(table, r)?),
        2 => Change::Remove(take_key(table, r)?),
        t => return Err(format!("bad change op {t}")),
    })
}
