//! The coupon's claims: what the coupon grants, to whom, where and when.
//!
//! [`Claims`] is the PASETO payload, JSON, strict: unknown fields are
//! refused, and deserialization runs [`Claims::validate`], so a `Claims`
//! that came off the wire is always valid. Values built in code are
//! validated again by [`crate::issue`].

use std::net::IpAddr;

use ipnet::IpNet;
use pasetors::keys::AsymmetricPublicKey;
use pasetors::version4::V4;
use serde::{Deserialize, Serialize};

use crate::window::Window;

/// Sluice's eight priority levels, 0 highest (the index is the level).
pub const LEVEL_NAMES: [&str; 8] = [
    "network-control",
    "voice",
    "interactive",
    "premium",
    "standard",
    "best-effort",
    "bulk",
    "scavenger",
];
/// The lowest priority level.
pub const MAX_LEVEL: u8 = 7;
/// At most this many entries in each scope list.
pub const MAX_SCOPE_ENTRIES: usize = 16;
/// At most this many windows.
pub const MAX_WINDOWS: usize = 8;
/// Longest coupon id.
pub const MAX_ID_LEN: usize = 64;
/// Longest customer name.
pub const MAX_CUSTOMER_LEN: usize = 128;
/// Longest basis note.
pub const MAX_NOTE_LEN: usize = 128;

/// How the appliance treats matching traffic. A coupon has at least one,
/// at most one of each kind. JSON: `{"port": 8443}`, `{"addr": "192.0.2.9"}`,
/// `{"dscp": 46}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Remap the TCP/UDP destination port to the port serving the level.
    Port(u16),
    /// Remap the destination IP to a priority endpoint.
    Addr(IpAddr),
    /// Set the DSCP (0..=63).
    Dscp(u8),
}

impl Mode {
    fn kind(&self) -> &'static str {
        match self {
            Mode::Port(_) => "port",
            Mode::Addr(_) => "addr",
            Mode::Dscp(_) => "dscp",
        }
    }
}

/// Which traffic the coupon applies to. Empty lists mean "no restriction
/// of that kind".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// Lowercase DNS names, or `*.suffix` for any name strictly under
    /// `suffix` (see [`host_matches`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Destination prefixes, without host bits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefixes: Vec<IpNet>,
    /// Destination ports (non-zero).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
}

impl Scope {
    /// Whether the scope restricts nothing.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.prefixes.is_empty() && self.ports.is_empty()
    }
}

/// Why the operator granted the coupon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BasisKind {
    /// Who the customer is (a subscription, a loyalty tier).
    Customer,
    /// What is being consumed (a title, a stream).
    Content,
    /// A purchase.
    Transaction,
    /// A time-bound promotion.
    Temporal,
}

/// The commercial basis of the coupon, for accounting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Basis {
    /// The kind of basis.
    pub kind: BasisKind,
    /// Value in minor currency units (cents).
    pub amount: u64,
    /// Free text, at most 128 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A rate limit for the bound traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Committed rate, bits per second, > 0.
    pub committed_bps: u64,
    /// Peak rate, bits per second, >= `committed_bps`.
    pub peak_bps: u64,
}

/// The claims a coupon carries. Field docs give the rules [`validate`]
/// enforces.
///
/// [`validate`]: Claims::validate
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawClaims")]
pub struct Claims {
    /// 1–64 characters of `[A-Za-z0-9._-]`.
    pub id: String,
    /// 1–128 characters.
    pub customer: String,
    /// 0..=7 (see [`LEVEL_NAMES`]).
    pub level: u8,
    /// Non-empty, at most one of each kind.
    pub modes: Vec<Mode>,
    /// Which traffic; an `addr` mode needs `hosts` or `prefixes`.
    #[serde(default, skip_serializing_if = "Scope::is_empty")]
    pub scope: Scope,
    /// Why it was granted.
    pub basis: Basis,
    /// Unix seconds; valid from this second on.
    pub not_before: u64,
    /// Unix seconds; invalid from this second on (> `not_before`).
    pub expires: u64,
    /// Weekly UTC windows in which the coupon is active (empty: always); at
    /// most 8.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<Window>,
    /// How many times it may be redeemed, >= 1.
    #[serde(default = "one")]
    pub max_redemptions: u32,
    /// Optional rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    /// The holder's public key, PASERK `k4.public`; redemptions must carry a
    /// proof of possession signed by its secret key.
    pub holder: String,
}

fn one() -> u32 {
    1
}

/// The wire shape of [`Claims`], before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClaims {
    id: String,
    customer: String,
    level: u8,
    modes: Vec<Mode>,
    #[serde(default)]
    scope: Scope,
    basis: Basis,
    not_before: u64,
    expires: u64,
    #[serde(default)]
    windows: Vec<Window>,
    #[serde(default = "one")]
    max_redemptions: u32,
    #[serde(default)]
    rate: Option<Rate>,
    holder: String,
}

impl TryFrom<RawClaims> for Claims {
    type Error = ClaimsError;

    fn try_from(r: RawClaims) -> Result<Self, Self::Error> {
        let c = Claims {
            id: r.id,
            customer: r.customer,
            level: r.level,
            modes: r.modes,
            scope: r.scope,
            basis: r.basis,
            not_before: r.not_before,
            expires: r.expires,
            windows: r.windows,
            max_redemptions: r.max_redemptions,
            rate: r.rate,
            holder: r.holder,
        };
        c.validate()?;
        Ok(c)
    }
}

/// A claim that breaks a rule: names the field, the value and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("claims field `{field}`: {reason}")]
pub struct ClaimsError {
    /// The field, e.g. `scope.prefixes`.
    pub field: &'static str,
    /// The bad value and what was expected.
    pub reason: String,
}

fn bad(field: &'static str, reason: impl Into<String>) -> ClaimsError {
    ClaimsError {
        field,
        reason: reason.into(),
    }
}

/// Whether `s` is a coupon id: 1–64 characters of `[A-Za-z0-9._-]`.
pub fn valid_id(s: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `s` is a valid host pattern: a lowercase DNS name (labels of
/// `[a-z0-9_-]`, 1–63 characters, not starting or ending with `-`; at most
/// 253 characters; no trailing dot) or `*.` followed by one.
pub fn valid_host_pattern(s: &str) -> bool {
    let name = s.strip_prefix("*.").unwrap_or(s);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        })
}

/// Whether host `name` matches `pattern`: equal, or for `*.suffix`, any name
/// strictly under `suffix` (`*.example.com` matches `a.example.com` and
/// `a.b.example.com`, not `example.com`). Case-insensitive; a trailing dot
/// on either side is ignored.
pub fn host_matches(pattern: &str, name: &str) -> bool {
    let pattern = pattern.strip_suffix('.').unwrap_or(pattern);
    let name = name.strip_suffix('.').unwrap_or(name);
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            // `name` = non-empty head + "." + suffix.
            let Some(cut) = name.len().checked_sub(suffix.len() + 1) else {
                return false;
            };
            cut > 0
                && name.is_char_boundary(cut)
                && name.as_bytes()[cut] == b'.'
                && name[cut + 1..].eq_ignore_ascii_case(suffix)
        }
        None => pattern.eq_ignore_ascii_case(name),
    }
}

/// Parses a PASERK `k4.public` string.
pub(crate) fn parse_public(s: &str) -> Option<AsymmetricPublicKey<V4>> {
    AsymmetricPublicKey::<V4>::try_from(s).ok()
}

impl Claims {
    /// Checks every rule in the field docs; the error names the first bad
    /// field.
    pub fn validate(&self) -> Result<(), ClaimsError> {
        if !valid_id(&self.id) {
            return Err(bad(
                "id",
                format!("{:?}: expected 1-64 characters of [A-Za-z0-9._-]", self.id),
            ));
        }
        let customer_len = self.customer.chars().count();
        if customer_len == 0 || customer_len > MAX_CUSTOMER_LEN || self.customer.trim().is_empty() {
            return Err(bad(
                "customer",
                format!(
                    "{:?}: expected 1-{MAX_CUSTOMER_LEN} characters, not blank",
                    self.customer
                ),
            ));
        }
        if self.level > MAX_LEVEL {
            return Err(bad(
                "level",
                format!("{}: expected 0..={MAX_LEVEL}", self.level),
            ));
        }
        self.validate_modes()?;
        self.validate_scope()?;
        if let Some(note) = &self.basis.note {
            if note.chars().count() > MAX_NOTE_LEN {
                return Err(bad(
                    "basis.note",
                    format!(
                        "{} characters: expected at most {MAX_NOTE_LEN}",
                        note.chars().count()
                    ),
                ));
            }
        }
        if self.not_before >= self.expires {
            return Err(bad(
                "expires",
                format!(
                    "{} is not after not_before {}",
                    self.expires, self.not_before
                ),
            ));
        }
        if self.windows.len() > MAX_WINDOWS {
            return Err(bad(
                "windows",
                format!(
                    "{} windows: expected at most {MAX_WINDOWS}",
                    self.windows.len()
                ),
            ));
        }
        if self.max_redemptions == 0 {
            return Err(bad("max_redemptions", "0: expected at least 1"));
        }
        if let Some(rate) = self.rate {
            if rate.committed_bps == 0 || rate.committed_bps > rate.peak_bps {
                return Err(bad(
                    "rate",
                    format!(
                        "committed_bps {} / peak_bps {}: expected 0 < committed_bps <= peak_bps",
                        rate.committed_bps, rate.peak_bps
                    ),
                ));
            }
        }
        if parse_public(&self.holder).is_none() {
            return Err(bad(
                "holder",
                format!("{:?}: expected a PASERK k4.public key", self.holder),
            ));
        }
        Ok(())
    }

    fn validate_modes(&self) -> Result<(), ClaimsError> {
        if self.modes.is_empty() {
            return Err(bad(
                "modes",
                "empty: expected at least one of port, addr, dscp",
            ));
        }
        for (i, m) in self.modes.iter().enumerate() {
            if self.modes[..i].iter().any(|o| o.kind() == m.kind()) {
                return Err(bad(
                    "modes",
                    format!("{} given twice: at most one of each kind", m.kind()),
                ));
            }
            match *m {
                Mode::Port(0) => return Err(bad("modes", "port 0: expected 1..=65535")),
                Mode::Dscp(d) if d > 63 => {
                    return Err(bad("modes", format!("dscp {d}: expected 0..=63")))
                }
                Mode::Addr(a) if a.is_unspecified() || a.is_multicast() => {
                    return Err(bad(
                        "modes",
                        format!("addr {a}: expected a unicast address"),
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn validate_scope(&self) -> Result<(), ClaimsError> {
        let s = &self.scope;
        for (field, len) in [
            ("scope.hosts", s.hosts.len()),
            ("scope.prefixes", s.prefixes.len()),
            ("scope.ports", s.ports.len()),
        ] {
            if len > MAX_SCOPE_ENTRIES {
                return Err(bad(
                    field,
                    format!("{len} entries: expected at most {MAX_SCOPE_ENTRIES}"),
                ));
            }
        }
        if let Some(h) = s.hosts.iter().find(|h| !valid_host_pattern(h)) {
            return Err(bad(
                "scope.hosts",
                format!("{h:?}: expected a lowercase DNS name or *.suffix"),
            ));
        }
        if let Some(p) = s.prefixes.iter().find(|p| p.trunc() != **p) {
            return Err(bad(
                "scope.prefixes",
                format!("{p}: has host bits set, expected {}", p.trunc()),
            ));
        }
        if s.ports.contains(&0) {
            return Err(bad("scope.ports", "port 0: expected 1..=65535"));
        }
        if self.modes.iter().any(|m| matches!(m, Mode::Addr(_)))
            && s.hosts.is_empty()
            && s.prefixes.is_empty()
        {
            return Err(bad(
                "scope",
                "an addr mode needs scope.hosts or scope.prefixes (which destinations to remap)",
            ));
        }
        Ok(())
    }

    /// The level's name, e.g. `premium`.
    pub fn level_name(&self) -> &'static str {
        LEVEL_NAMES[usize::from(self.level.min(MAX_LEVEL))]
    }

    /// The port mode's port, if any.
    pub fn port(&self) -> Option<u16> {
        self.modes.iter().find_map(|m| match m {
            Mode::Port(p) => Some(*p),
            _ => None,
        })
    }

    /// The addr mode's address, if any.
    pub fn addr(&self) -> Option<IpAddr> {
        self.modes.iter().find_map(|m| match m {
            Mode::Addr(a) => Some(*a),
            _ => None,
        })
    }

    /// The dscp mode's value, if any.
    pub fn dscp(&self) -> Option<u8> {
        self.modes.iter().find_map(|m| match m {
            Mode::Dscp(d) => Some(*d),
            _ => None,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::keys::HolderKey;

    /// A valid claims value for tests, holder = `holder`'s public key.
    pub(crate) fn sample(holder: &HolderKey) -> Claims {
        Claims {
            id: "cp-0001".to_string(),
            customer: "Acme Games".to_string(),
            level: 3,
            modes: vec![Mode::Port(8443), Mode::Dscp(46)],
            scope: Scope {
                hosts: vec!["*.game.example".to_string()],
                prefixes: vec!["198.51.100.0/24".parse().unwrap()],
                ports: vec![443],
            },
            basis: Basis {
                kind: BasisKind::Transaction,
                amount: 499,
                note: Some("evening boost".to_string()),
            },
            not_before: 1_767_225_600,
            expires: 1_767_225_600 + 30 * 86_400,
            windows: vec!["mon-fri 18:00-23:00".parse().unwrap()],
            max_redemptions: 3,
            rate: Some(Rate {
                committed_bps: 20_000_000,
                peak_bps: 40_000_000,
            }),
            holder: holder.public_paserk(),
        }
    }

    fn json_of(c: &Claims) -> serde_json::Value {
        serde_json::to_value(c).unwrap()
    }

    fn parse_err(v: serde_json::Value) -> String {
        serde_json::from_value::<Claims>(v).unwrap_err().to_string()
    }

    #[test]
    fn claims_round_trip_through_json() {
        let c = sample(&HolderKey::generate().unwrap());
        let s = serde_json::to_string(&c).unwrap();
        assert!(s.contains(r#""modes":[{"port":8443},{"dscp":46}]"#), "{s}");
        assert!(s.contains(r#""windows":["mon-fri 18:00-23:00"]"#), "{s}");
        assert_eq!(serde_json::from_str::<Claims>(&s).unwrap(), c);
    }

    #[test]
    fn defaults_apply_and_empty_parts_are_omitted() {
        let mut c = sample(&HolderKey::generate().unwrap());
        c.scope = Scope::default();
        c.windows.clear();
        c.rate = None;
        c.modes = vec![Mode::Dscp(10)];
        let mut v = json_of(&c);
        let o = v.as_object_mut().unwrap();
        assert!(!o.contains_key("scope") && !o.contains_key("windows") && !o.contains_key("rate"));
        o.remove("max_redemptions");
        let back: Claims = serde_json::from_value(v).unwrap();
        assert_eq!(back.max_redemptions, 1);
    }

    #[test]
    fn unknown_fields_are_refused_everywhere() {
        let c = sample(&HolderKey::generate().unwrap());
        for path in [None, Some("scope"), Some("basis"), Some("rate")] {
            let mut v = json_of(&c);
            let o = match path {
                None => v.as_object_mut().unwrap(),
                Some(p) => v[p].as_object_mut().unwrap(),
            };
            o.insert("surprise".to_string(), 1.into());
            assert!(parse_err(v).contains("surprise"), "{path:?}");
        }
    }

    #[test]
    fn each_rule_names_its_field() {
        let h = HolderKey::generate().unwrap();
        type Edit = Box<dyn Fn(&mut Claims)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("id", Box::new(|c| c.id = "has space".into())),
            ("id", Box::new(|c| c.id = String::new())),
            ("id", Box::new(|c| c.id = "x".repeat(65))),
            ("customer", Box::new(|c| c.customer = String::new())),
            ("customer", Box::new(|c| c.customer = "é".repeat(129))),
            ("level", Box::new(|c| c.level = 8)),
            ("modes", Box::new(|c| c.modes.clear())),
            ("modes", Box::new(|c| c.modes.push(Mode::Port(1)))),
            ("modes", Box::new(|c| c.modes = vec![Mode::Port(0)])),
            ("modes", Box::new(|c| c.modes = vec![Mode::Dscp(64)])),
            (
                "scope.hosts",
                Box::new(|c| c.scope.hosts = vec!["Upper.example".into()]),
            ),
            (
                "scope.hosts",
                Box::new(|c| c.scope.hosts = vec!["*.".into()]),
            ),
            (
                "scope.hosts",
                Box::new(|c| c.scope.hosts = vec!["a..b".into()]),
            ),
            (
                "scope.hosts",
                Box::new(|c| c.scope.hosts = vec!["x.example.".into()]),
            ),
            (
                "scope.hosts",
                Box::new(|c| c.scope.hosts = vec!["a.example".into(); 17]),
            ),
            (
                "scope.prefixes",
                Box::new(|c| c.scope.prefixes = vec!["10.0.0.1/8".parse().unwrap()]),
            ),
            ("scope.ports", Box::new(|c| c.scope.ports = vec![0])),
            (
                "scope",
                Box::new(|c| {
                    c.modes = vec![Mode::Addr("192.0.2.9".parse().unwrap())];
                    c.scope.hosts.clear();
                    c.scope.prefixes.clear();
                }),
            ),
            (
                "basis.note",
                Box::new(|c| c.basis.note = Some("n".repeat(129))),
            ),
            ("expires", Box::new(|c| c.expires = c.not_before)),
            (
                "windows",
                Box::new(|c| c.windows = vec!["daily 01:00-02:00".parse().unwrap(); 9]),
            ),
            ("max_redemptions", Box::new(|c| c.max_redemptions = 0)),
            (
                "rate",
                Box::new(|c| {
                    c.rate = Some(Rate {
                        committed_bps: 0,
                        peak_bps: 1,
                    })
                }),
            ),
            (
                "rate",
                Box::new(|c| {
                    c.rate = Some(Rate {
                        committed_bps: 2,
                        peak_bps: 1,
                    })
                }),
            ),
            ("holder", Box::new(|c| c.holder = "k4.public.nope".into())),
        ];
        for (field, mutate) in cases {
            let mut c = sample(&h);
            mutate(&mut c);
            let e = c.validate().unwrap_err();
            assert_eq!(e.field, field, "{e}");
            // Deserialization runs the same check.
            let msg = parse_err(json_of(&c));
            assert!(msg.contains(&format!("`{field}`")), "{msg}");
        }
        // An addr mode with prefixes is fine.
        let mut c = sample(&h);
        c.modes = vec![Mode::Addr("192.0.2.9".parse().unwrap())];
        c.scope.hosts.clear();
        c.validate().unwrap();
    }

    #[test]
    fn host_patterns_match_names_under_the_suffix_only() {
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(host_matches("*.example.com", "a.b.example.com"));
        assert!(host_matches("*.example.com", "A.Example.COM."));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", ".example.com"));
        assert!(!host_matches("*.example.com", "aexample.com"));
        assert!(!host_matches("*.example.com", "a.example.org"));
        assert!(host_matches("example.com", "EXAMPLE.com."));
        assert!(host_matches("example.com.", "example.com"));
        assert!(!host_matches("example.com", "a.example.com"));
        assert!(!host_matches("*.é", "aé"));
    }

    #[test]
    fn host_pattern_syntax() {
        for ok in [
            "example.com",
            "*.example.com",
            "a-b.c_d.example",
            "localhost",
            "*.x",
        ] {
            assert!(valid_host_pattern(ok), "{ok}");
        }
        for bad in [
            "", "*", "*.", "**.x", "a.*.x", "-a.x", "a-.x", "A.x", "a..x", "a.x.", "é.x",
        ] {
            assert!(!valid_host_pattern(bad), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn host_matches_never_panics(p in "\\PC{0,20}", n in "\\PC{0,20}") {
            let _ = host_matches(&p, &n);
        }

        #[test]
        fn claims_parser_never_panics(s in "\\PC{0,200}") {
            let _ = serde_json::from_str::<Claims>(&s);
        }
    }
}
