//! Coupon tokens: PASETO v4.public, payload = JSON [`Claims`], footer =
//! JSON `{"kid":"<k4.pid of the issuer key>"}`.
//!
//! Verification reads the key id from the untrusted footer, looks the key
//! up, verifies the signature (which covers the footer too), and only then
//! parses the claims and checks the time with the caller's `now`. pasetors'
//! registered-claims validation is not used: our claims are our own.

use pasetors::token::{Public, UntrustedToken};
use pasetors::version4::{PublicToken, V4};
use serde::{Deserialize, Serialize};

use crate::claims::{Claims, ClaimsError};
use crate::keys::KeyRing;
use crate::pop::max_request_len;
use crate::refusal::Refusal;
use crate::wire::MAX_REDEEM_BYTES;

/// Tokens longer than this are malformed without further parsing (a
/// redemption request must fit in [`MAX_REDEEM_BYTES`] anyway).
pub const MAX_TOKEN_BYTES: usize = 4096;

/// The footer of a coupon token.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Footer {
    kid: String,
}

/// Why [`issue`] refused to sign.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The claims break a rule.
    #[error("invalid claims: {0}")]
    Claims(#[from] ClaimsError),
    /// The ring has no secret key.
    #[error("the key ring has no secret key to sign with (generate one first)")]
    NoSigningKey,
    /// The token would not fit in a redemption request.
    #[error("coupon {id:?}: a redemption request would be {bytes} bytes, over the {max}-byte limit (MAX_REDEEM_BYTES); shorten the scope, windows, customer or note")]
    TooLarge {
        /// The coupon id.
        id: String,
        /// The worst-case request size.
        bytes: usize,
        /// [`MAX_REDEEM_BYTES`].
        max: usize,
    },
    /// Signing failed.
    #[error("signing coupon {id:?} failed: {detail}")]
    Signing {
        /// The coupon id.
        id: String,
        /// What pasetors said.
        detail: String,
    },
}

/// Signs `claims` with the ring's newest secret key and returns the token.
/// Refuses invalid claims, and claims whose token would make a redemption
/// request (with the largest possible proof of possession) exceed
/// [`MAX_REDEEM_BYTES`].
pub fn issue(ring: &KeyRing, claims: &Claims) -> Result<String, IssueError> {
    claims.validate()?;
    let (info, secret) = ring.signer().ok_or(IssueError::NoSigningKey)?;
    let payload = serde_json::to_vec(claims).map_err(|e| IssueError::Signing {
        id: claims.id.clone(),
        detail: e.to_string(),
    })?;
    let footer = serde_json::to_vec(&Footer {
        kid: info.kid.clone(),
    })
    .map_err(|e| IssueError::Signing {
        id: claims.id.clone(),
        detail: e.to_string(),
    })?;
    let token = PublicToken::sign(secret, &payload, Some(&footer), None).map_err(|e| {
        IssueError::Signing {
            id: claims.id.clone(),
            detail: format!("{e:?}"),
        }
    })?;
    let bytes = max_request_len(&token, &claims.id);
    if bytes > MAX_REDEEM_BYTES {
        return Err(IssueError::TooLarge {
            id: claims.id.clone(),
            bytes,
            max: MAX_REDEEM_BYTES,
        });
    }
    Ok(token)
}

pub(crate) fn parse_untrusted(token: &str) -> Result<UntrustedToken<Public, V4>, Refusal> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Refusal::Malformed);
    }
    UntrustedToken::<Public, V4>::try_from(token).map_err(|_| Refusal::Malformed)
}

/// Verifies a coupon token: returns its claims and the id of the key that
/// signed it. Refusals, in the order checked: `Malformed` (not a v4.public
/// token, or no/bad footer), `UnknownKey`, `BadSignature`, `Malformed`
/// (claims do not parse or break a rule), `NotYetValid` (`now <
/// not_before`), `Expired` (`now >= expires`).
///
/// Windows are not checked here: they gate when a binding is active, not
/// whether the coupon may be redeemed (see [`crate::active_at`]).
pub fn verify_coupon(ring: &KeyRing, token: &str, now: u64) -> Result<(Claims, String), Refusal> {
    let untrusted = parse_untrusted(token)?;
    let footer: Footer =
        serde_json::from_slice(untrusted.untrusted_footer()).map_err(|_| Refusal::Malformed)?;
    let key = ring.public(&footer.kid).ok_or(Refusal::UnknownKey)?;
    let trusted =
        PublicToken::verify(key, &untrusted, None, None).map_err(|_| Refusal::BadSignature)?;
    let claims: Claims = serde_json::from_str(trusted.payload()).map_err(|_| Refusal::Malformed)?;
    if now < claims.not_before {
        return Err(Refusal::NotYetValid);
    }
    if now >= claims.expires {
        return Err(Refusal::Expired);
    }
    Ok((claims, footer.kid))
}

/// Reads a coupon's claims **without verifying the signature** (a v4.public
/// payload is readable by anyone). For the client, which has no issuer
/// key, to check the shape and show what it holds; never for a decision.
/// Also returns the footer's key id.
pub fn peek_claims(token: &str) -> Result<(Claims, String), Refusal> {
    let untrusted = parse_untrusted(token)?;
    let footer: Footer =
        serde_json::from_slice(untrusted.untrusted_footer()).map_err(|_| Refusal::Malformed)?;
    let claims: Claims =
        serde_json::from_slice(untrusted.untrusted_payload()).map_err(|_| Refusal::Malformed)?;
    Ok((claims, footer.kid))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::claims::tests::sample;
    use crate::claims::Mode;
    use crate::keys::HolderKey;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    pub(crate) const NOW: u64 = 1_767_225_600 + 86_400;

    /// A ring with one key and a token for `sample` claims, shared by the
    /// property tests (key generation is cheap; this keeps cases fast and
    /// deterministic in what they mutate).
    pub(crate) struct Fixture {
        pub ring: KeyRing,
        pub holder: HolderKey,
        pub claims: Claims,
        pub token: String,
    }

    pub(crate) fn fixture() -> &'static Fixture {
        static F: OnceLock<Fixture> = OnceLock::new();
        F.get_or_init(|| {
            let holder = HolderKey::generate().unwrap();
            let mut ring = KeyRing::new();
            ring.insert_secret(&HolderKey::generate().unwrap().secret_paserk(), 1)
                .unwrap();
            let claims = sample(&holder);
            let token = issue(&ring, &claims).unwrap();
            Fixture {
                ring,
                holder,
                claims,
                token,
            }
        })
    }

    #[test]
    fn issued_coupon_verifies_to_the_same_claims() {
        let f = fixture();
        assert!(f.token.starts_with("v4.public."));
        let (claims, kid) = verify_coupon(&f.ring, &f.token, NOW).unwrap();
        assert_eq!(claims, f.claims);
        assert_eq!(Some(kid), f.ring.signing_key().map(|k| k.kid));
        assert_eq!(peek_claims(&f.token).unwrap().0, f.claims);
    }

    #[test]
    fn time_bounds_are_checked_with_the_given_clock() {
        let f = fixture();
        let c = &f.claims;
        assert_eq!(
            verify_coupon(&f.ring, &f.token, c.not_before - 1).unwrap_err(),
            Refusal::NotYetValid
        );
        assert!(verify_coupon(&f.ring, &f.token, c.not_before).is_ok());
        assert!(verify_coupon(&f.ring, &f.token, c.expires - 1).is_ok());
        assert_eq!(
            verify_coupon(&f.ring, &f.token, c.expires).unwrap_err(),
            Refusal::Expired
        );
    }

    #[test]
    fn unknown_issuer_key_is_refused_as_unknown_key() {
        let f = fixture();
        let mut other = KeyRing::new();
        other
            .insert_secret(&HolderKey::generate().unwrap().secret_paserk(), 1)
            .unwrap();
        assert_eq!(
            verify_coupon(&other, &f.token, NOW).unwrap_err(),
            Refusal::UnknownKey
        );
        assert_eq!(
            verify_coupon(&KeyRing::new(), &f.token, NOW).unwrap_err(),
            Refusal::UnknownKey
        );
    }

    #[test]
    fn footer_naming_another_trusted_key_fails_the_signature() {
        // A forger re-labels the token with the id of another key the
        // appliance trusts: the signature no longer verifies.
        let f = fixture();
        let other = HolderKey::generate().unwrap();
        let mut ring = KeyRing::new();
        let signer = f.ring.signing_key().unwrap();
        ring.insert_public(&f.ring.public_paserk(&signer.kid).unwrap(), 1)
            .unwrap();
        let other_info = ring.insert_public(&other.public_paserk(), 2).unwrap();
        let (head, _) = f.token.rsplit_once('.').unwrap();
        let footer = serde_json::to_vec(&Footer {
            kid: other_info.kid,
        })
        .unwrap();
        use base64::Engine as _;
        let forged = format!(
            "{head}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(footer)
        );
        assert_eq!(
            verify_coupon(&ring, &forged, NOW).unwrap_err(),
            Refusal::BadSignature
        );
    }

    #[test]
    fn a_token_without_footer_is_malformed() {
        let f = fixture();
        let (head, _) = f.token.rsplit_once('.').unwrap();
        assert_eq!(
            verify_coupon(&f.ring, head, NOW).unwrap_err(),
            Refusal::Malformed
        );
    }

    #[test]
    fn rotation_keeps_old_tokens_valid_and_signs_with_the_new_key() {
        let tmp = tempfile::tempdir().unwrap();
        let old = KeyRing::generate_at(tmp.path(), 100).unwrap();
        let holder = HolderKey::generate().unwrap();
        let claims = sample(&holder);
        let old_token = issue(&KeyRing::load(tmp.path()).unwrap(), &claims).unwrap();
        let new = KeyRing::generate_at(tmp.path(), 200).unwrap();
        let ring = KeyRing::load(tmp.path()).unwrap();
        assert_eq!(verify_coupon(&ring, &old_token, NOW).unwrap().1, old.kid);
        let new_token = issue(&ring, &claims).unwrap();
        assert_eq!(verify_coupon(&ring, &new_token, NOW).unwrap().1, new.kid);
        assert_eq!(peek_claims(&new_token).unwrap().1, new.kid);
    }

    #[test]
    fn issue_refuses_invalid_claims_and_empty_rings() {
        let f = fixture();
        let mut c = f.claims.clone();
        c.level = 9;
        assert!(matches!(issue(&f.ring, &c), Err(IssueError::Claims(e)) if e.field == "level"));
        assert!(matches!(
            issue(&KeyRing::new(), &f.claims),
            Err(IssueError::NoSigningKey)
        ));
    }

    #[test]
    fn issue_refuses_claims_too_big_for_a_redemption_request() {
        let f = fixture();
        let mut c = f.claims.clone();
        c.customer = "c".repeat(128);
        c.basis.note = Some("n".repeat(128));
        c.scope.hosts = (0..16)
            .map(|i| format!("host-{i:02}.example.com"))
            .collect();
        c.modes.push(Mode::Addr("2001:db8::1".parse().unwrap()));
        let e = issue(&f.ring, &c).unwrap_err();
        assert!(matches!(e, IssueError::TooLarge { max: 1400, .. }), "{e}");
        assert!(e.to_string().contains("cp-0001"));
    }

    proptest! {
        #[test]
        fn flipping_any_bit_of_a_coupon_invalidates_it(pos in 0usize..4096, bit in 0u8..8) {
            let f = fixture();
            let mut bytes = f.token.clone().into_bytes();
            let pos = pos % bytes.len();
            bytes[pos] ^= 1 << bit;
            if let Ok(s) = std::str::from_utf8(&bytes) {
                let r = verify_coupon(&f.ring, s, NOW);
                prop_assert!(
                    matches!(r, Err(Refusal::Malformed | Refusal::UnknownKey | Refusal::BadSignature)),
                    "byte {} bit {}: {:?}", pos, bit, r
                );
            }
        }

        #[test]
        fn truncations_never_verify(len in 0usize..4096) {
            let f = fixture();
            let len = len % f.token.len();
            let r = verify_coupon(&f.ring, &f.token[..len], NOW);
            prop_assert!(
                matches!(r, Err(Refusal::Malformed | Refusal::BadSignature)),
                "len {}: {:?}", len, r
            );
        }

        #[test]
        fn garbage_never_panics(s in "\\PC{0,300}", tail in "[A-Za-z0-9_-]{0,300}") {
            let f = fixture();
            prop_assert!(verify_coupon(&f.ring, &s, NOW).is_err());
            let s2 = format!("v4.public.{tail}");
            let r = verify_coupon(&f.ring, &s2, NOW);
            prop_assert!(matches!(r, Err(Refusal::Malformed | Refusal::BadSignature | Refusal::UnknownKey)));
            let _ = peek_claims(&s);
            let _ = peek_claims(&s2);
        }
    }

    #[test]
    fn every_single_bit_flip_of_a_coupon_is_refused() {
        // Exhaustive, not sampled: the token is ~1 KB, 8 flips per byte.
        let f = fixture();
        let bytes = f.token.as_bytes();
        for pos in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.to_vec();
                b[pos] ^= 1 << bit;
                if let Ok(s) = std::str::from_utf8(&b) {
                    assert!(
                        verify_coupon(&f.ring, s, NOW).is_err(),
                        "byte {pos} bit {bit}"
                    );
                }
            }
        }
    }
}
