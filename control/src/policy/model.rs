//! The policy model: levels, decisions and the entries of each table.
//!
//! Every type here is validated when it is built (`TryFrom` a `*Spec`, the
//! plain shape that JSON and CSV produce), so a value of a model type is
//! always valid: a level is 0..=7, a DSCP 0..=63, a rate has
//! `0 < committed <= peak`, a prefix has no host bits set, and a rewrite
//! target has the family of the traffic it can apply to. The validation
//! error ([`ModelError`]) names the field, relative to the entry, in the
//! same spelling as the JSON field (`decision.rate.peak_bps`).
//!
//! The JSON shape of each entry is the spec's; the model types serialize to
//! exactly that shape, so what `list` returns can be sent back as `add`.
use compact_str::CompactString;
use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU16;
use std::str::FromStr;

use ipnet::IpNet;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use thiserror::Error;

/// A value that failed validation: the field (relative to the entry, dotted
/// for nested fields) and what was wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("`{field}`: {reason}")]
pub struct ModelError {
    pub field: String,
    pub reason: String,
}

impl ModelError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> ModelError {
        ModelError {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same error, one nesting level down (`rate` -> `decision.rate`).
    fn under(mut self, parent: &str) -> ModelError {
        self.field = if self.field.is_empty() {
            parent.to_string()
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }
}

// ---------------------------------------------------------------------------
// Level and DSCP
// ---------------------------------------------------------------------------

/// The eight priority levels, 0 highest. The scheduler serves them in
/// strict priority (with per-level caps); each has a default DSCP, used when
/// a decision says `"dscp": "level"`.
///
/// | n | name | meaning | default DSCP |
/// |---|---|---|---|
/// | 0 | `network-control` | routing and control traffic | CS6 = 48 |
/// | 1 | `voice` | interactive voice (RTP) | EF = 46 |
/// | 2 | `interactive` | video calls, gaming | AF41 = 34 |
/// | 3 | `premium` | paid priority data | AF31 = 26 |
/// | 4 | `standard` | better than best effort | AF21 = 18 |
/// | 5 | `best-effort` | the default | DF = 0 |
/// | 6 | `bulk` | downloads, backups | AF11 = 10 |
/// | 7 | `scavenger` | lower than best effort | LE = 1 (RFC 8622) |
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    NetworkControl = 0,
    Voice = 1,
    Interactive = 2,
    Premium = 3,
    Standard = 4,
    #[default]
    BestEffort = 5,
    Bulk = 6,
    Scavenger = 7,
}

impl Level {
    pub const ALL: [Level; 8] = [
        Level::NetworkControl,
        Level::Voice,
        Level::Interactive,
        Level::Premium,
        Level::Standard,
        Level::BestEffort,
        Level::Bulk,
        Level::Scavenger,
    ];

    /// 0 (highest) ..= 7 (lowest).
    pub const fn number(self) -> u8 {
        self as u8
    }

    pub fn from_number(n: u64) -> Option<Level> {
        usize::try_from(n)
            .ok()
            .and_then(|i| Level::ALL.get(i))
            .copied()
    }

    pub const fn name(self) -> &'static str {
        match self {
            Level::NetworkControl => "network-control",
            Level::Voice => "voice",
            Level::Interactive => "interactive",
            Level::Premium => "premium",
            Level::Standard => "standard",
            Level::BestEffort => "best-effort",
            Level::Bulk => "bulk",
            Level::Scavenger => "scavenger",
        }
    }

    /// The DSCP a decision with `"dscp": "level"` writes.
    pub const fn default_dscp(self) -> Dscp {
        Dscp(match self {
            Level::NetworkControl => 48,
            Level::Voice => 46,
            Level::Interactive => 34,
            Level::Premium => 26,
            Level::Standard => 18,
            Level::BestEffort => 0,
            Level::Bulk => 10,
            Level::Scavenger => 1,
        })
    }

    fn out_of_range(shown: impl fmt::Display) -> String {
        format!(
            "level {shown} is not valid: expected 0..=7 or a name \
             (network-control, voice, interactive, premium, standard, best-effort, bulk, scavenger)"
        )
    }
}

impl FromStr for Level {
    type Err = String;

    /// A number `0`..=`7` or a name (`voice`; `_` may stand for `-`, any case).
    fn from_str(s: &str) -> Result<Level, String> {
        let t = s.trim();
        if let Ok(n) = t.parse::<u64>() {
            return Level::from_number(n).ok_or_else(|| Level::out_of_range(n));
        }
        // Compared byte by byte rather than normalized into a new string:
        // every row of a coupon batch names its level.
        let same = |name: &str| {
            name.len() == t.len()
                && name.bytes().zip(t.bytes()).all(|(n, c)| {
                    let c = c.to_ascii_lowercase();
                    n == c || (n == b'-' && c == b'_')
                })
        };
        Level::ALL
            .into_iter()
            .find(|l| same(l.name()))
            .ok_or_else(|| Level::out_of_range(format!("{s:?}")))
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Level {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Level {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Level, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Level;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a level 0..=7 or a level name such as \"voice\"")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Level, E> {
                Level::from_number(n).ok_or_else(|| E::custom(Level::out_of_range(n)))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Level, E> {
                Err(E::custom(Level::out_of_range(n)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Level, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A DiffServ code point, 0..=63.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Dscp(u8);

impl Dscp {
    pub const fn new(v: u8) -> Option<Dscp> {
        if v < 64 {
            Some(Dscp(v))
        } else {
            None
        }
    }

    pub const fn value(self) -> u8 {
        self.0
    }

    fn from_u64(n: u64) -> Result<Dscp, String> {
        u8::try_from(n)
            .ok()
            .and_then(Dscp::new)
            .ok_or_else(|| format!("DSCP {n} is out of range: expected 0..=63 or \"level\""))
    }
}

/// What a decision does to the DSCP: write the level's default, or an
/// explicit value. (No `DscpMark` at all means "leave the DSCP alone".)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DscpMark {
    /// `"level"`: [`Level::default_dscp`] of the decision's level.
    FromLevel,
    Value(Dscp),
}

impl FromStr for DscpMark {
    type Err = String;
    fn from_str(s: &str) -> Result<DscpMark, String> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("level") {
            return Ok(DscpMark::FromLevel);
        }
        match t.parse::<u64>() {
            Ok(n) => Dscp::from_u64(n).map(DscpMark::Value),
            Err(_) => Err(format!(
                "DSCP {s:?} is not valid: expected 0..=63 or \"level\""
            )),
        }
    }
}

impl Serialize for DscpMark {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            DscpMark::FromLevel => s.serialize_str("level"),
            DscpMark::Value(d) => s.serialize_u8(d.value()),
        }
    }
}

impl<'de> Deserialize<'de> for DscpMark {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<DscpMark, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DscpMark;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a DSCP 0..=63 or \"level\"")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<DscpMark, E> {
                Dscp::from_u64(n).map(DscpMark::Value).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<DscpMark, E> {
                Err(E::custom(format!(
                    "DSCP {n} is out of range: expected 0..=63 or \"level\""
                )))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<DscpMark, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------
// Small validated values
// ---------------------------------------------------------------------------

/// A TCP/UDP port, 1..=65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Port(NonZeroU16);

impl Port {
    pub fn new(p: u16) -> Option<Port> {
        NonZeroU16::new(p).map(Port)
    }

    pub const fn get(self) -> u16 {
        self.0.get()
    }

    fn from_u64(field: &str, n: u64) -> Result<Port, ModelError> {
        u16::try_from(n)
            .ok()
            .and_then(Port::new)
            .ok_or_else(|| ModelError::new(field, format!("port {n} is out of range 1..=65535")))
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A TCP MSS clamp, 536..=9000 (536 is the IPv4 minimum every host must
/// accept; 9000 covers jumbo frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Mss(u16);

impl Mss {
    pub const MIN: u16 = 536;
    pub const MAX: u16 = 9000;

    pub fn new(v: u16) -> Option<Mss> {
        (Mss::MIN..=Mss::MAX).contains(&v).then_some(Mss(v))
    }

    pub const fn get(self) -> u16 {
        self.0
    }

    fn from_u64(field: &str, n: u64) -> Result<Mss, ModelError> {
        u16::try_from(n).ok().and_then(Mss::new).ok_or_else(|| {
            ModelError::new(
                field,
                format!("MSS {n} is out of range {}..={}", Mss::MIN, Mss::MAX),
            )
        })
    }
}

/// A canonical IP prefix: no host bits set (`10.0.0.0/8`, never
/// `10.1.2.3/8`, which is rejected rather than silently truncated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix(IpNet);

impl Prefix {
    pub fn new(net: IpNet) -> Option<Prefix> {
        (net.trunc() == net).then_some(Prefix(net))
    }

    /// The prefix of length `len` that contains `addr`.
    pub fn containing(addr: IpAddr, len: u8) -> Option<Prefix> {
        IpNet::new(addr, len).ok().map(|n| Prefix(n.trunc()))
    }

    pub const fn net(self) -> IpNet {
        self.0
    }

    pub fn prefix_len(self) -> u8 {
        self.0.prefix_len()
    }

    pub fn is_ipv4(self) -> bool {
        matches!(self.0, IpNet::V4(_))
    }

    pub fn contains(self, addr: IpAddr) -> bool {
        self.0.contains(&addr)
    }

    fn parse(field: &str, s: &str) -> Result<Prefix, ModelError> {
        let t = s.trim();
        let net: IpNet = t.parse().map_err(|_| {
            ModelError::new(
                field,
                format!(
                    "bad prefix {s:?}: expected ADDRESS/LENGTH such as 10.0.0.0/8 or 2001:db8::/32"
                ),
            )
        })?;
        Prefix::new(net).ok_or_else(|| {
            ModelError::new(
                field,
                format!(
                    "bad prefix {s:?}: host bits are set (did you mean {}?)",
                    net.trunc()
                ),
            )
        })
    }
}

impl FromStr for Prefix {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Prefix, ModelError> {
        Prefix::parse("", s)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Prefix {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Prefix, D::Error> {
        let s = String::deserialize(d)?;
        Prefix::parse("", &s).map_err(|e| de::Error::custom(e.reason))
    }
}

fn family(a: IpAddr) -> &'static str {
    if a.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// An address a binding can name: unicast, not unspecified.
pub(crate) fn parse_addr(field: &str, s: &str) -> Result<IpAddr, ModelError> {
    let a: IpAddr = s.trim().parse().map_err(|_| {
        ModelError::new(
            field,
            format!("bad IP address {s:?}: expected IPv4 (192.0.2.1) or IPv6 (2001:db8::1)"),
        )
    })?;
    check_unicast(field, a)
}

/// [`parse_addr`]'s check on an address already parsed.
fn check_unicast(field: &str, a: IpAddr) -> Result<IpAddr, ModelError> {
    if a.is_unspecified() || a.is_multicast() || a == IpAddr::from([255, 255, 255, 255]) {
        return Err(ModelError::new(
            field,
            format!("IP address {a} is not a unicast host address"),
        ));
    }
    Ok(a)
}

/// Ids, tier names, logins, provider names: 1..=128 bytes, no control
/// characters, no surrounding spaces (so CSV and JSON agree on them).
pub const MAX_NAME_BYTES: usize = 128;

fn check_name(field: &str, s: String) -> Result<String, ModelError> {
    check_name_ref(field, &s)?;
    Ok(s)
}

/// [`check_name`] on a borrowed name.
fn check_name_ref(field: &str, s: &str) -> Result<(), ModelError> {
    if s.is_empty() {
        return Err(ModelError::new(field, "must not be empty"));
    }
    if s.len() > MAX_NAME_BYTES {
        return Err(ModelError::new(
            field,
            format!("is {} bytes long, the limit is {MAX_NAME_BYTES}", s.len()),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(ModelError::new(
            field,
            format!("{s:?} contains a control character"),
        ));
    }
    if s.trim() != s {
        return Err(ModelError::new(
            field,
            format!("{s:?} has leading or trailing spaces"),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Decision
// ---------------------------------------------------------------------------

/// A metering rate. `0 < committed_bps <= peak_bps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RateSpec")]
pub struct Rate {
    committed_bps: u64,
    peak_bps: u64,
}

impl Rate {
    pub fn new(committed_bps: u64, peak_bps: u64) -> Result<Rate, ModelError> {
        if committed_bps == 0 {
            return Err(ModelError::new("committed_bps", "must be > 0"));
        }
        if peak_bps < committed_bps {
            return Err(ModelError::new(
                "peak_bps",
                format!("{peak_bps} is below committed_bps {committed_bps}"),
            ));
        }
        Ok(Rate {
            committed_bps,
            peak_bps,
        })
    }

    pub const fn committed_bps(self) -> u64 {
        self.committed_bps
    }

    pub const fn peak_bps(self) -> u64 {
        self.peak_bps
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSpec {
    pub committed_bps: u64,
    pub peak_bps: u64,
}

impl TryFrom<RateSpec> for Rate {
    type Error = ModelError;
    fn try_from(s: RateSpec) -> Result<Rate, ModelError> {
        Rate::new(s.committed_bps, s.peak_bps)
    }
}

/// The rewrites of a decision, the control-side twin of the dataplane's
/// `ActionSet` (which the lead maps this to, resolving the DSCP with
/// [`Decision::dscp`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Actions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dscp: Option<DscpMark>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<Port>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_addr: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mss_clamp: Option<Mss>,
}

/// What happens to a flow: its level, its rewrites, its rate.
///
/// JSON (flat): `{"level":"voice","dscp":"level","dst_port":5061,
/// "dst_addr":"198.51.100.7","mss_clamp":1400,"rate":{"committed_bps":
/// 1000000,"peak_bps":2000000}}`; only `level` is required.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "DecisionSpec")]
pub struct Decision {
    level: Level,
    actions: Actions,
    rate: Option<Rate>,
}

/// By hand rather than with `#[serde(flatten)]`, which serializes through a
/// map and made journal encoding markedly slower.
impl Serialize for Decision {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let a = &self.actions;
        let mut st = s.serialize_struct("Decision", 7)?;
        st.serialize_field("level", &self.level)?;
        opt_field(&mut st, "dscp", &a.dscp)?;
        opt_field(&mut st, "dst_port", &a.dst_port)?;
        opt_field(&mut st, "dst_addr", &a.dst_addr)?;
        opt_field(&mut st, "mss_clamp", &a.mss_clamp)?;
        opt_field(&mut st, "rate", &self.rate)?;
        st.end()
    }
}

fn opt_field<S: serde::ser::SerializeStruct, T: Serialize>(
    st: &mut S,
    name: &'static str,
    v: &Option<T>,
) -> Result<(), S::Error> {
    match v {
        Some(v) => st.serialize_field(name, v),
        None => st.skip_field(name),
    }
}

impl Decision {
    /// Best effort, no rewrite, no rate: what traffic without a binding gets.
    pub const BEST_EFFORT: Decision = Decision {
        level: Level::BestEffort,
        actions: Actions {
            dscp: None,
            dst_port: None,
            dst_addr: None,
            mss_clamp: None,
        },
        rate: None,
    };

    /// A decision with only a level (no rewrite, no rate).
    pub const fn level_only(level: Level) -> Decision {
        Decision {
            level,
            actions: Actions {
                dscp: None,
                dst_port: None,
                dst_addr: None,
                mss_clamp: None,
            },
            rate: None,
        }
    }

    pub fn new(level: Level, actions: Actions, rate: Option<Rate>) -> Decision {
        Decision {
            level,
            actions,
            rate,
        }
    }

    pub const fn level(&self) -> Level {
        self.level
    }

    pub const fn actions(&self) -> &Actions {
        &self.actions
    }

    pub const fn rate(&self) -> Option<Rate> {
        self.rate
    }

    /// The DSCP to write, resolved: `"level"` becomes the level's default.
    pub fn dscp(&self) -> Option<Dscp> {
        self.actions.dscp.map(|m| match m {
            DscpMark::FromLevel => self.level.default_dscp(),
            DscpMark::Value(d) => d,
        })
    }

    /// `Err` if the decision rewrites the destination to an address of the
    /// other family than `addr` (the rewrite could never apply).
    fn check_family(&self, what: &str, addr_is_v4: bool) -> Result<(), ModelError> {
        match self.actions.dst_addr {
            Some(a) if a.is_ipv4() != addr_is_v4 => Err(ModelError::new(
                "decision.dst_addr",
                format!(
                    "rewrites to {} address {a} but the {what} is {}",
                    family(a),
                    if addr_is_v4 { "IPv4" } else { "IPv6" }
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// The JSON/CSV shape of a [`Decision`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionSpec {
    pub level: Level,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dscp: Option<DscpMark>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mss_clamp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateSpec>,
}

impl TryFrom<DecisionSpec> for Decision {
    type Error = ModelError;
    fn try_from(s: DecisionSpec) -> Result<Decision, ModelError> {
        let dst_port = s
            .dst_port
            .map(|p| Port::from_u64("dst_port", p))
            .transpose()?;
        let dst_addr = s
            .dst_addr
            .as_deref()
            .map(|a| parse_addr("dst_addr", a))
            .transpose()?;
        let mss_clamp = s
            .mss_clamp
            .map(|m| Mss::from_u64("mss_clamp", m))
            .transpose()?;
        let rate = s
            .rate
            .map(Rate::try_from)
            .transpose()
            .map_err(|e| e.under("rate"))?;
        Ok(Decision {
            level: s.level,
            actions: Actions {
                dscp: s.dscp,
                dst_port,
                dst_addr,
                mss_clamp,
            },
            rate,
        })
    }
}

fn decision_from(spec: DecisionSpec) -> Result<Decision, ModelError> {
    Decision::try_from(spec).map_err(|e| e.under("decision"))
}

fn opt_port(field: &str, p: Option<u64>) -> Result<Option<Port>, ModelError> {
    p.map(|p| Port::from_u64(field, p)).transpose()
}

// ---------------------------------------------------------------------------
// Tables
// ---------------------------------------------------------------------------

/// The tables of the policy (and their names on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    Coupon,
    Login,
    Tier,
    Sp,
    Eligibility,
    /// The single default decision; only `update` applies to it.
    Default,
}

impl Table {
    pub const ALL: [Table; 6] = [
        Table::Coupon,
        Table::Login,
        Table::Tier,
        Table::Sp,
        Table::Eligibility,
        Table::Default,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Table::Coupon => "coupon",
            Table::Login => "login",
            Table::Tier => "tier",
            Table::Sp => "sp",
            Table::Eligibility => "eligibility",
            Table::Default => "default",
        }
    }

    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Table {
    type Err = String;
    fn from_str(s: &str) -> Result<Table, String> {
        Table::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown table {s:?}: expected one of coupon, login, tier, sp, eligibility, default"
                )
            })
    }
}

/// A redeemed coupon bound to a subscriber's traffic. Key: `id`. The match
/// (`subscriber`, `dst`, `port`) is unique too, so that two coupons never
/// compete for the same traffic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "CouponSpec")]
pub struct CouponBinding {
    /// Inline up to 24 bytes (`CompactString`): an id is read on every
    /// lookup by id, and a heap string cost each of them a second cache
    /// miss (and each copy of the row an allocation).
    id: CompactString,
    subscriber: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    dst: Option<Prefix>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<Port>,
    decision: Decision,
    /// Unix seconds; the coupon grants nothing from this second on.
    #[serde(skip_serializing_if = "Option::is_none")]
    expires: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CouponSpec {
    pub id: String,
    pub subscriber: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u64>,
    pub decision: DecisionSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
}

/// [`CouponSpec`] with its strings borrowed from the request line where
/// they have no escapes: what a batch's fast path decodes, without two
/// allocations per row. The same members, defaults and checks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CouponRef<'a> {
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    subscriber: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    dst: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    port: Option<u64>,
    decision: DecisionSpec,
    #[serde(default)]
    expires: Option<u64>,
}

impl TryFrom<CouponRef<'_>> for CouponBinding {
    type Error = ModelError;
    /// A coupon from its members as written, validated (in the order the
    /// members' errors have always been reported).
    fn try_from(s: CouponRef<'_>) -> Result<CouponBinding, ModelError> {
        check_name_ref("id", &s.id)?;
        let subscriber = parse_addr("subscriber", &s.subscriber)?;
        let dst = s
            .dst
            .as_deref()
            .map(|d| Prefix::parse("dst", d))
            .transpose()?;
        check_dst_family(dst, subscriber)?;
        let port = opt_port("port", s.port)?;
        let decision = decision_from(s.decision)?;
        CouponBinding::from_parts(&s.id, subscriber, dst, port, decision, s.expires)
    }
}

impl TryFrom<CouponSpec> for CouponBinding {
    type Error = ModelError;
    fn try_from(s: CouponSpec) -> Result<CouponBinding, ModelError> {
        // The same checks: the strings move in, nothing is copied.
        CouponBinding::try_from(CouponRef {
            id: s.id.into(),
            subscriber: s.subscriber.into(),
            dst: s.dst.map(Into::into),
            port: s.port,
            decision: s.decision,
            expires: s.expires,
        })
    }
}

impl CouponBinding {
    /// A coupon from its members, parsed; the checks across them.
    fn from_parts(
        id: &str,
        subscriber: IpAddr,
        dst: Option<Prefix>,
        port: Option<Port>,
        decision: Decision,
        expires: Option<u64>,
    ) -> Result<CouponBinding, ModelError> {
        check_name_ref("id", id)?;
        let id = CompactString::from(id);
        let subscriber = check_unicast("subscriber", subscriber)?;
        check_dst_family(dst, subscriber)?;
        decision.check_family("subscriber", subscriber.is_ipv4())?;
        if expires == Some(0) {
            return Err(ModelError::new(
                "expires",
                "must be unix seconds > 0 (omit it for no expiry)",
            ));
        }
        Ok(CouponBinding {
            id,
            subscriber,
            dst,
            port,
            decision,
            expires,
        })
    }
}

fn check_dst_family(dst: Option<Prefix>, subscriber: IpAddr) -> Result<(), ModelError> {
    match dst {
        Some(d) if d.is_ipv4() != subscriber.is_ipv4() => Err(ModelError::new(
            "dst",
            format!(
                "prefix {d} is not of the subscriber's family ({})",
                family(subscriber)
            ),
        )),
        _ => Ok(()),
    }
}

impl CouponBinding {
    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn subscriber(&self) -> IpAddr {
        self.subscriber
    }
    pub fn dst(&self) -> Option<Prefix> {
        self.dst
    }
    pub fn port(&self) -> Option<Port> {
        self.port
    }
    pub fn decision(&self) -> &Decision {
        &self.decision
    }
    pub fn expires(&self) -> Option<u64> {
        self.expires
    }
    /// Valid at `now` (unix seconds).
    pub fn is_live(&self, now: u64) -> bool {
        self.expires.is_none_or(|e| now < e)
    }
}

/// A subscriber address logged in as `login`, whose customer tier is `tier`.
/// Key: `subscriber` (one login per address).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "LoginSpec")]
pub struct LoginBinding {
    subscriber: IpAddr,
    login: String,
    tier: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginSpec {
    pub subscriber: String,
    pub login: String,
    pub tier: String,
}

impl TryFrom<LoginSpec> for LoginBinding {
    type Error = ModelError;
    fn try_from(s: LoginSpec) -> Result<LoginBinding, ModelError> {
        Ok(LoginBinding {
            subscriber: parse_addr("subscriber", &s.subscriber)?,
            login: check_name("login", s.login)?,
            tier: check_name("tier", s.tier)?,
        })
    }
}

impl LoginBinding {
    pub fn subscriber(&self) -> IpAddr {
        self.subscriber
    }
    pub fn login(&self) -> &str {
        &self.login
    }
    pub fn tier(&self) -> &str {
        &self.tier
    }
}

/// A customer tier: the decision its logged-in subscribers get. Key: `name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "TierSpec")]
pub struct Tier {
    name: String,
    decision: Decision,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierSpec {
    pub name: String,
    pub decision: DecisionSpec,
}

impl TryFrom<TierSpec> for Tier {
    type Error = ModelError;
    fn try_from(s: TierSpec) -> Result<Tier, ModelError> {
        Ok(Tier {
            name: check_name("name", s.name)?,
            decision: decision_from(s.decision)?,
        })
    }
}

impl Tier {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn decision(&self) -> &Decision {
        &self.decision
    }
}

/// What a service-provider allocation matches: the destination (the SP's
/// address) by exact IP ("per-IP") or by prefix ("per-SP", longest prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpMatch {
    Ip(IpAddr),
    Prefix(Prefix),
}

impl SpMatch {
    pub fn is_ipv4(self) -> bool {
        match self {
            SpMatch::Ip(a) => a.is_ipv4(),
            SpMatch::Prefix(p) => p.is_ipv4(),
        }
    }

    pub fn contains(self, addr: IpAddr) -> bool {
        match self {
            SpMatch::Ip(a) => a == addr,
            SpMatch::Prefix(p) => p.contains(addr),
        }
    }

    /// The JSON field this match came from (`ip` or `prefix`).
    pub fn field(self) -> &'static str {
        match self {
            SpMatch::Ip(_) => "ip",
            SpMatch::Prefix(_) => "prefix",
        }
    }
}

impl fmt::Display for SpMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpMatch::Ip(a) => a.fmt(f),
            SpMatch::Prefix(p) => p.fmt(f),
        }
    }
}

/// A service provider's allocation for traffic to its addresses. Key: `id`;
/// the match (`ip`/`prefix`, `port`) is unique too.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "SpSpec")]
pub struct SpAllocation {
    id: String,
    provider: String,
    target: SpMatch,
    port: Option<Port>,
    decision: Decision,
}

impl Serialize for SpAllocation {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("SpAllocation", 5)?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("provider", &self.provider)?;
        match &self.target {
            SpMatch::Ip(a) => st.serialize_field("ip", a)?,
            SpMatch::Prefix(p) => st.serialize_field("prefix", p)?,
        }
        opt_field(&mut st, "port", &self.port)?;
        st.serialize_field("decision", &self.decision)?;
        st.end()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpSpec {
    pub id: String,
    pub provider: String,
    /// Exactly one of `ip` and `prefix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u64>,
    pub decision: DecisionSpec,
}

impl TryFrom<SpSpec> for SpAllocation {
    type Error = ModelError;
    fn try_from(s: SpSpec) -> Result<SpAllocation, ModelError> {
        let id = check_name("id", s.id)?;
        let provider = check_name("provider", s.provider)?;
        let target = match (s.ip.as_deref(), s.prefix.as_deref()) {
            (Some(ip), None) => SpMatch::Ip(parse_addr("ip", ip)?),
            (None, Some(p)) => SpMatch::Prefix(Prefix::parse("prefix", p)?),
            (Some(_), Some(_)) => {
                return Err(ModelError::new(
                    "prefix",
                    "give either `ip` (one address) or `prefix`, not both",
                ))
            }
            (None, None) => {
                return Err(ModelError::new(
                    "ip",
                    "missing: give `ip` (one address) or `prefix`",
                ))
            }
        };
        let port = opt_port("port", s.port)?;
        let decision = decision_from(s.decision)?;
        decision.check_family("allocation's address", target.is_ipv4())?;
        Ok(SpAllocation {
            id,
            provider,
            target,
            port,
            decision,
        })
    }
}

impl SpAllocation {
    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn provider(&self) -> &str {
        &self.provider
    }
    pub fn target(&self) -> SpMatch {
        self.target
    }
    pub fn port(&self) -> Option<Port> {
        self.port
    }
    pub fn decision(&self) -> &Decision {
        &self.decision
    }
}

/// A destination (prefix, optional port) whose traffic coupons and login
/// tiers may prioritise. With no rule at all, every destination is eligible.
/// Key: (`dst`, `port`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "EligibilitySpec")]
pub struct EligibilityRule {
    dst: Prefix,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<Port>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EligibilitySpec {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u64>,
}

impl TryFrom<EligibilitySpec> for EligibilityRule {
    type Error = ModelError;
    fn try_from(s: EligibilitySpec) -> Result<EligibilityRule, ModelError> {
        Ok(EligibilityRule {
            dst: Prefix::parse("dst", &s.dst)?,
            port: opt_port("port", s.port)?,
        })
    }
}

impl EligibilityRule {
    pub fn new(dst: Prefix, port: Option<Port>) -> EligibilityRule {
        EligibilityRule { dst, port }
    }
    pub fn dst(&self) -> Prefix {
        self.dst
    }
    pub fn port(&self) -> Option<Port> {
        self.port
    }
}

/// The default decision: exactly one, always present, changed only by
/// `update`. It applies to both families, so it cannot rewrite the address.
pub fn check_default(d: &Decision) -> Result<(), ModelError> {
    if let Some(a) = d.actions.dst_addr {
        return Err(ModelError::new(
            "dst_addr",
            format!("the default decision applies to every flow of both families and cannot rewrite the destination to {a}"),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Entries, keys, changes
// ---------------------------------------------------------------------------

/// One row of one table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum Entry {
    Coupon(CouponBinding),
    Login(LoginBinding),
    Tier(Tier),
    Sp(SpAllocation),
    Eligibility(EligibilityRule),
    Default(Decision),
}

impl Entry {
    pub fn table(&self) -> Table {
        match self {
            Entry::Coupon(_) => Table::Coupon,
            Entry::Login(_) => Table::Login,
            Entry::Tier(_) => Table::Tier,
            Entry::Sp(_) => Table::Sp,
            Entry::Eligibility(_) => Table::Eligibility,
            Entry::Default(_) => Table::Default,
        }
    }

    pub fn key(&self) -> Key {
        match self {
            Entry::Coupon(c) => Key::Coupon(c.id.to_string()),
            Entry::Login(l) => Key::Login(l.subscriber),
            Entry::Tier(t) => Key::Tier(t.name.clone()),
            Entry::Sp(s) => Key::Sp(s.id.clone()),
            Entry::Eligibility(e) => Key::Eligibility(e.dst, e.port),
            Entry::Default(_) => Key::Default,
        }
    }

    /// Decode one entry of `table` from a deserializer, as
    /// [`Entry::from_json`] decodes its text, but with no field path in the
    /// error: the fast path of a batch request, which on any error is
    /// parsed again entry by entry for a precise one.
    pub(crate) fn deserialize_in<'de, D: Deserializer<'de>>(
        table: Table,
        d: D,
    ) -> Result<Entry, D::Error> {
        fn spec<
            'de,
            S: Deserialize<'de>,
            T: TryFrom<S, Error = ModelError>,
            D: Deserializer<'de>,
        >(
            d: D,
        ) -> Result<T, D::Error> {
            T::try_from(S::deserialize(d)?).map_err(serde::de::Error::custom)
        }
        Ok(match table {
            Table::Coupon => Entry::Coupon(spec::<CouponRef, _, _>(d)?),
            Table::Login => Entry::Login(spec::<LoginSpec, _, _>(d)?),
            Table::Tier => Entry::Tier(spec::<TierSpec, _, _>(d)?),
            Table::Sp => Entry::Sp(spec::<SpSpec, _, _>(d)?),
            Table::Eligibility => Entry::Eligibility(spec::<EligibilitySpec, _, _>(d)?),
            Table::Default => {
                let dec: Decision = spec::<DecisionSpec, _, _>(d)?;
                check_default(&dec).map_err(serde::de::Error::custom)?;
                Entry::Default(dec)
            }
        })
    }

    /// Decode one entry of `table` from its JSON text. The error names the
    /// field path within the entry (`decision.rate.peak_bps`).
    pub fn from_json(table: Table, json: &str) -> Result<Entry, ModelError> {
        Ok(match table {
            Table::Coupon => Entry::Coupon(from_spec::<CouponSpec, _>(json)?),
            Table::Login => Entry::Login(from_spec::<LoginSpec, _>(json)?),
            Table::Tier => Entry::Tier(from_spec::<TierSpec, _>(json)?),
            Table::Sp => Entry::Sp(from_spec::<SpSpec, _>(json)?),
            Table::Eligibility => Entry::Eligibility(from_spec::<EligibilitySpec, _>(json)?),
            Table::Default => {
                let d: Decision = from_spec::<DecisionSpec, _>(json)?;
                check_default(&d)?;
                Entry::Default(d)
            }
        })
    }
}

/// The key of one row: what `get`, `update` and `remove` name.
///
/// JSON: coupon `{"id":"c1"}`, login `{"subscriber":"10.0.0.1"}`, tier
/// `{"name":"gold"}`, sp `{"id":"sp1"}`, eligibility
/// `{"dst":"203.0.113.0/24","port":443}`, default `{}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    Coupon(String),
    Login(IpAddr),
    Tier(String),
    Sp(String),
    Eligibility(Prefix, Option<Port>),
    Default,
}

impl Key {
    pub fn table(&self) -> Table {
        match self {
            Key::Coupon(_) => Table::Coupon,
            Key::Login(_) => Table::Login,
            Key::Tier(_) => Table::Tier,
            Key::Sp(_) => Table::Sp,
            Key::Eligibility(..) => Table::Eligibility,
            Key::Default => Table::Default,
        }
    }

    /// The key's main field name (where a "no such entry" error points).
    pub fn field(&self) -> &'static str {
        match self {
            Key::Coupon(_) | Key::Sp(_) => "id",
            Key::Login(_) => "subscriber",
            Key::Tier(_) => "name",
            Key::Eligibility(..) => "dst",
            Key::Default => "",
        }
    }

    /// Decode a key of `table` from its JSON text.
    pub fn from_json(table: Table, json: &str) -> Result<Key, ModelError> {
        let spec: KeySpec = from_json_path(json)?;
        Key::from_spec(table, spec)
    }

    fn from_spec(table: Table, s: KeySpec) -> Result<Key, ModelError> {
        let allowed: &[&str] = match table {
            Table::Coupon | Table::Sp => &["id"],
            Table::Login => &["subscriber"],
            Table::Tier => &["name"],
            Table::Eligibility => &["dst", "port"],
            Table::Default => &[],
        };
        for (name, present) in [
            ("id", s.id.is_some()),
            ("subscriber", s.subscriber.is_some()),
            ("name", s.name.is_some()),
            ("dst", s.dst.is_some()),
            ("port", s.port.is_some()),
        ] {
            if present && !allowed.contains(&name) {
                return Err(ModelError::new(
                    name,
                    format!(
                        "not a key field of table {table}; its key is {}",
                        if allowed.is_empty() {
                            "empty ({})".to_string()
                        } else {
                            allowed.join(", ")
                        }
                    ),
                ));
            }
        }
        let need = |v: Option<String>, f: &str| {
            v.ok_or_else(|| ModelError::new(f, format!("missing: the key of table {table}")))
        };
        Ok(match table {
            Table::Coupon => Key::Coupon(check_name("id", need(s.id, "id")?)?),
            Table::Sp => Key::Sp(check_name("id", need(s.id, "id")?)?),
            Table::Tier => Key::Tier(check_name("name", need(s.name, "name")?)?),
            Table::Login => Key::Login(parse_addr(
                "subscriber",
                &need(s.subscriber, "subscriber")?,
            )?),
            Table::Eligibility => Key::Eligibility(
                Prefix::parse("dst", &need(s.dst, "dst")?)?,
                opt_port("port", s.port)?,
            ),
            Table::Default => Key::Default,
        })
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Coupon(id) => write!(f, "coupon {id:?}"),
            Key::Login(a) => write!(f, "login binding for {a}"),
            Key::Tier(n) => write!(f, "tier {n:?}"),
            Key::Sp(id) => write!(f, "sp allocation {id:?}"),
            Key::Eligibility(p, None) => write!(f, "eligibility rule {p}"),
            Key::Eligibility(p, Some(port)) => write!(f, "eligibility rule {p} port {port}"),
            Key::Default => f.write_str("the default decision"),
        }
    }
}

impl Serialize for Key {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let spec = match self {
            Key::Coupon(id) | Key::Sp(id) => KeySpec {
                id: Some(id.clone()),
                ..KeySpec::default()
            },
            Key::Login(a) => KeySpec {
                subscriber: Some(a.to_string()),
                ..KeySpec::default()
            },
            Key::Tier(n) => KeySpec {
                name: Some(n.clone()),
                ..KeySpec::default()
            },
            Key::Eligibility(p, port) => KeySpec {
                dst: Some(p.to_string()),
                port: port.map(|p| u64::from(p.get())),
                ..KeySpec::default()
            },
            Key::Default => KeySpec::default(),
        };
        spec.serialize(s)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriber: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u64>,
}

/// One change to the policy. A batch is a `&[Change]`, applied atomically.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Change {
    /// Insert a row whose key (and match) is new.
    Add(Entry),
    /// Replace the row with the same key (it must exist).
    Update(Entry),
    /// Delete the row with this key (it must exist).
    Remove(Key),
}

impl Change {
    pub fn table(&self) -> Table {
        match self {
            Change::Add(e) | Change::Update(e) => e.table(),
            Change::Remove(k) => k.table(),
        }
    }

    pub fn op(&self) -> &'static str {
        match self {
            Change::Add(_) => "add",
            Change::Update(_) => "update",
            Change::Remove(_) => "remove",
        }
    }
}

/// `{"op":"add","table":"coupon","entry":{...}}` or
/// `{"op":"remove","table":"coupon","key":{"id":"c1"}}`: the shape of one
/// change in a `batch` request and in the journal.
impl Serialize for Change {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Change", 3)?;
        st.serialize_field("op", self.op())?;
        st.serialize_field("table", &self.table())?;
        match self {
            Change::Add(e) | Change::Update(e) => st.serialize_field("entry", e)?,
            Change::Remove(k) => st.serialize_field("key", k)?,
        }
        st.end()
    }
}

/// Deserialize `json`; on failure, name the path of the bad field. The
/// path is tracked only on the second, failing pass: tracking allocates per
/// field and would double the cost of parsing a big batch.
fn from_json_path<'a, T: Deserialize<'a>>(json: &'a str) -> Result<T, ModelError> {
    if let Ok(v) = serde_json::from_str(json) {
        return Ok(v);
    }
    let mut de = serde_json::Deserializer::from_str(json);
    let v: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        ModelError::new(field, strip_position(&e.into_inner().to_string()))
    })?;
    de.end().map_err(|e| ModelError::new("", e.to_string()))?;
    Ok(v)
}

fn from_spec<'a, S, T>(json: &'a str) -> Result<T, ModelError>
where
    S: Deserialize<'a>,
    T: TryFrom<S, Error = ModelError>,
{
    T::try_from(from_json_path::<S>(json)?)
}

/// serde_json appends " at line 1 column 57" to its messages: the position
/// inside one entry's text is noise once the field path is known.
pub(crate) fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) if msg[i..].contains(" column ") => msg[..i].to_string(),
        _ => msg.to_string(),
    }
}

mod binary;
pub(crate) use binary::{put_change, take_change, take_default, Reader, Rows};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_by_name_and_number_with_their_default_dscp() {
        assert_eq!("voice".parse::<Level>().unwrap(), Level::Voice);
        assert_eq!("Best_Effort".parse::<Level>().unwrap(), Level::BestEffort);
        assert_eq!(
            " NETWORK_control ".parse::<Level>().unwrap(),
            Level::NetworkControl
        );
        assert!("best effort".parse::<Level>().is_err());
        assert!("vöice".parse::<Level>().is_err());
        assert!("voice-".parse::<Level>().is_err());
        assert_eq!("7".parse::<Level>().unwrap(), Level::Scavenger);
        assert!("8".parse::<Level>().unwrap_err().contains("0..=7"));
        assert!("gold".parse::<Level>().is_err());
        let dscp: Vec<u8> = Level::ALL
            .iter()
            .map(|l| l.default_dscp().value())
            .collect();
        assert_eq!(dscp, [48, 46, 34, 26, 18, 0, 10, 1]);
        assert_eq!(Level::default(), Level::BestEffort);
        for l in Level::ALL {
            let j = serde_json::to_string(&l).unwrap();
            assert_eq!(serde_json::from_str::<Level>(&j).unwrap(), l);
            assert_eq!(
                serde_json::from_str::<Level>(&l.number().to_string()).unwrap(),
                l
            );
        }
    }

    #[test]
    fn dscp_level_resolves_to_the_levels_code_point() {
        let d: Decision = serde_json::from_str(r#"{"level":"voice","dscp":"level"}"#).unwrap();
        assert_eq!(d.dscp(), Dscp::new(46));
        let d: Decision = serde_json::from_str(r#"{"level":1,"dscp":10}"#).unwrap();
        assert_eq!(d.dscp(), Dscp::new(10));
        let d: Decision = serde_json::from_str(r#"{"level":1}"#).unwrap();
        assert_eq!(d.dscp(), None);
        assert!(serde_json::from_str::<Decision>(r#"{"level":1,"dscp":64}"#).is_err());
    }

    #[test]
    fn invalid_values_name_their_field() {
        let e = Entry::from_json(
            Table::Coupon,
            r#"{"id":"c","subscriber":"10.0.0.1","decision":{"level":2,"rate":{"committed_bps":5,"peak_bps":4}}}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "decision.rate.peak_bps");
        let e = Entry::from_json(
            Table::Coupon,
            r#"{"id":"c","subscriber":"10.0.0.1","dst":"10.0.0.1/8","decision":{"level":2}}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "dst");
        assert!(e.reason.contains("10.0.0.0/8"), "{e}");
        let e = Entry::from_json(
            Table::Coupon,
            r#"{"id":"c","subscriber":"10.0.0.1","decision":{"level":2,"dst_addr":"2001:db8::1"}}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "decision.dst_addr");
        let e =
            Entry::from_json(Table::Tier, r#"{"name":"gold","decision":{"level":9}}"#).unwrap_err();
        assert_eq!(e.field, "decision.level");
        assert!(e.reason.contains("0..=7"), "{e}");
        let e = Entry::from_json(
            Table::Sp,
            r#"{"id":"s","provider":"p","decision":{"level":2}}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "ip");
        let e =
            Entry::from_json(Table::Default, r#"{"level":2,"dst_addr":"192.0.2.1"}"#).unwrap_err();
        assert_eq!(e.field, "dst_addr");
        let e = Entry::from_json(
            Table::Login,
            r#"{"subscriber":"10.0.0.1","login":"a","tier":"t","x":1}"#,
        )
        .unwrap_err();
        assert!(e.reason.contains("unknown field `x`"), "{e}");
        let e = Entry::from_json(
            Table::Coupon,
            r#"{"id":"c","subscriber":"10.0.0.1","port":0,"decision":{"level":2}}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "port");
        let e = Entry::from_json(
            Table::Tier,
            r#"{"name":"gold","decision":{"level":2,"mss_clamp":100}}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "decision.mss_clamp");
    }

    #[test]
    fn entries_round_trip_through_json() {
        let texts = [
            (
                Table::Coupon,
                r#"{"id":"c1","subscriber":"10.0.0.1","dst":"203.0.113.0/24","port":443,"decision":{"level":"voice","dscp":"level","dst_port":8443,"dst_addr":"198.51.100.1","mss_clamp":1400,"rate":{"committed_bps":1000,"peak_bps":2000}},"expires":1700000000}"#,
            ),
            (
                Table::Sp,
                r#"{"id":"s1","provider":"acme","prefix":"2001:db8::/32","decision":{"level":"premium","dscp":26}}"#,
            ),
            (
                Table::Sp,
                r#"{"id":"s2","provider":"acme","ip":"192.0.2.7","port":5060,"decision":{"level":"voice"}}"#,
            ),
            (
                Table::Login,
                r#"{"subscriber":"10.0.0.2","login":"alice","tier":"gold"}"#,
            ),
            (Table::Eligibility, r#"{"dst":"0.0.0.0/0","port":80}"#),
            (Table::Default, r#"{"level":"best-effort"}"#),
        ];
        for (t, text) in texts {
            let e = Entry::from_json(t, text).unwrap();
            assert_eq!(serde_json::to_string(&e).unwrap(), text);
            let k = e.key();
            let kj = serde_json::to_string(&k).unwrap();
            assert_eq!(Key::from_json(t, &kj).unwrap(), k);
        }
    }
}
