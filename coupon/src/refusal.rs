//! Why a coupon or a redemption is refused.
//!
//! The names are stable snake_case strings: they are counter labels on the
//! appliance and the `reason` of a status response, so never rename one.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A refusal. The pure checks in this crate produce `Malformed`, `UnknownKey`,
/// `BadSignature`, `NotYetValid`, `Expired`, `AddressMismatch`,
/// `StaleTimestamp` and `BadProof`; the ones that need state (`Revoked`,
/// `RedemptionLimit`, `Replayed`, `NoBinding`) are produced by the appliance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// The request, a token or a payload does not parse.
    Malformed,
    /// The coupon names an issuer key the appliance does not trust.
    UnknownKey,
    /// The coupon's signature does not verify with the named key.
    BadSignature,
    /// The coupon's `not_before` is still in the future.
    NotYetValid,
    /// The coupon's `expires` has passed.
    Expired,
    /// The operator revoked the coupon.
    Revoked,
    /// The coupon was already redeemed `max_redemptions` times.
    RedemptionLimit,
    /// The proof of possession names another source address than the
    /// packet came from.
    AddressMismatch,
    /// The proof of possession's timestamp is too far from the appliance's
    /// clock.
    StaleTimestamp,
    /// The proof of possession's nonce was seen before.
    Replayed,
    /// The proof of possession is not signed by the coupon's holder, or is
    /// for another coupon.
    BadProof,
    /// There is no binding to act on (e.g. a status query for a coupon that
    /// is not bound).
    NoBinding,
}

impl Refusal {
    /// Every refusal, in declaration order (for counter arrays).
    pub const ALL: [Refusal; 12] = [
        Refusal::Malformed,
        Refusal::UnknownKey,
        Refusal::BadSignature,
        Refusal::NotYetValid,
        Refusal::Expired,
        Refusal::Revoked,
        Refusal::RedemptionLimit,
        Refusal::AddressMismatch,
        Refusal::StaleTimestamp,
        Refusal::Replayed,
        Refusal::BadProof,
        Refusal::NoBinding,
    ];

    /// The stable snake_case name (counter label, wire `reason`).
    pub const fn name(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::UnknownKey => "unknown_key",
            Refusal::BadSignature => "bad_signature",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::Expired => "expired",
            Refusal::Revoked => "revoked",
            Refusal::RedemptionLimit => "redemption_limit",
            Refusal::AddressMismatch => "address_mismatch",
            Refusal::StaleTimestamp => "stale_timestamp",
            Refusal::Replayed => "replayed",
            Refusal::BadProof => "bad_proof",
            Refusal::NoBinding => "no_binding",
        }
    }

    /// The index of this refusal in [`Refusal::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Malformed => "the request, token or payload is not well formed",
            Refusal::UnknownKey => "the coupon is signed by an issuer key that is not trusted here",
            Refusal::BadSignature => "the coupon's signature does not verify with its issuer key",
            Refusal::NotYetValid => "the coupon is not valid yet (before its not_before)",
            Refusal::Expired => "the coupon has expired",
            Refusal::Revoked => "the coupon has been revoked",
            Refusal::RedemptionLimit => "the coupon has been redeemed its maximum number of times",
            Refusal::AddressMismatch => {
                "the proof of possession was made for another source address than the packet's"
            }
            Refusal::StaleTimestamp => {
                "the proof of possession's timestamp is too far from the appliance's clock"
            }
            Refusal::Replayed => "the proof of possession's nonce has been used before",
            Refusal::BadProof => {
                "the proof of possession is not signed by the coupon's holder key or is for another coupon"
            }
            Refusal::NoBinding => "there is no binding for this coupon",
        })
    }
}

/// A string that is not a refusal name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown refusal {0:?}: expected one of malformed, unknown_key, bad_signature, not_yet_valid, expired, revoked, redemption_limit, address_mismatch, stale_timestamp, replayed, bad_proof, no_binding")]
pub struct UnknownRefusal(pub String);

impl FromStr for Refusal {
    type Err = UnknownRefusal;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Refusal::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| UnknownRefusal(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_indexed_and_match_serde() {
        for (i, r) in Refusal::ALL.into_iter().enumerate() {
            assert_eq!(r.index(), i);
            assert_eq!(r.name().parse::<Refusal>(), Ok(r));
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.name()));
            assert!(!r.to_string().is_empty());
        }
        let mut names: Vec<_> = Refusal::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Refusal::ALL.len());
        assert!("nope".parse::<Refusal>().is_err());
    }
}
