//! The appliance's pure check of an in-band redemption request.

use std::net::IpAddr;

use crate::claims::Claims;
use crate::keys::KeyRing;
use crate::pop::verify_parsed;
use crate::refusal::Refusal;
use crate::token::{parse_untrusted, verify_coupon};
use crate::wire::RedeemRequest;

/// A redemption that passed every stateless check. The caller still checks
/// revocation, the redemption count and nonce replay, then binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redemption {
    /// The coupon's verified claims.
    pub claims: Claims,
    /// The id of the issuer key that signed it.
    pub kid: String,
    /// The coupon token as received.
    pub token: String,
    /// The proof's nonce (for the replay cache and the status echo).
    pub nonce: String,
    /// The proof's timestamp, unix seconds.
    pub ts: u64,
}

/// Verifies a redemption datagram received from `src` at `now` (unix
/// seconds). Refusals, in the order checked:
///
/// 1. `Malformed`: the datagram or either token does not parse;
/// 2. the coupon, as [`verify_coupon`]: `UnknownKey`, `BadSignature`,
///    `Malformed`, `NotYetValid`, `Expired`;
/// 3. `BadProof`: the proof is not signed by the coupon's holder key for
///    this coupon token (`Malformed` if it is signed but not a proof);
/// 4. `BadProof`: the proof's `cid` is not the coupon's id;
/// 5. `AddressMismatch`: the proof names another source address (a sniffed
///    request replayed from elsewhere); IPv4-mapped IPv6 equals IPv4;
/// 6. `StaleTimestamp`: `|now - ts| > max_skew_secs`.
pub fn verify_redemption(
    ring: &KeyRing,
    payload: &[u8],
    src: IpAddr,
    now: u64,
    max_skew_secs: u64,
) -> Result<Redemption, Refusal> {
    let req = RedeemRequest::decode(payload).map_err(|_| Refusal::Malformed)?;
    let pop = parse_untrusted(&req.pop)?;
    let (claims, kid) = verify_coupon(ring, &req.coupon, now)?;
    let proof = verify_parsed(&claims.holder, &req.coupon, &pop)?;
    if proof.cid != claims.id {
        return Err(Refusal::BadProof);
    }
    if proof.src.to_canonical() != src.to_canonical() {
        return Err(Refusal::AddressMismatch);
    }
    if now.abs_diff(proof.ts) > max_skew_secs {
        return Err(Refusal::StaleTimestamp);
    }
    Ok(Redemption {
        claims,
        kid,
        token: req.coupon,
        nonce: proof.nonce,
        ts: proof.ts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::HolderKey;
    use crate::pop::{new_nonce, sign_proof, Proof};
    use crate::token::tests::{fixture, NOW};
    use proptest::prelude::*;
    use std::sync::OnceLock;

    const SRC: &str = "192.0.2.7";
    const SKEW: u64 = 30;

    fn src() -> IpAddr {
        SRC.parse().unwrap()
    }

    fn request_with(edit: impl FnOnce(&mut Proof), token: &str, holder: &HolderKey) -> Vec<u8> {
        let f = fixture();
        let mut p = Proof {
            cid: f.claims.id.clone(),
            src: src(),
            ts: NOW,
            nonce: new_nonce().unwrap(),
        };
        edit(&mut p);
        let pop = sign_proof(holder, token, &p).unwrap();
        RedeemRequest {
            coupon: token.to_string(),
            pop,
        }
        .encode()
    }

    fn good_request() -> &'static Vec<u8> {
        static R: OnceLock<Vec<u8>> = OnceLock::new();
        R.get_or_init(|| {
            let f = fixture();
            request_with(|_| {}, &f.token, &f.holder)
        })
    }

    #[test]
    fn a_good_redemption_passes() {
        let f = fixture();
        let r = verify_redemption(&f.ring, good_request(), src(), NOW, SKEW).unwrap();
        assert_eq!(r.claims, f.claims);
        assert_eq!(r.token, f.token);
        assert_eq!(r.ts, NOW);
        assert_eq!(r.nonce.len(), 22);
        assert_eq!(Some(r.kid), f.ring.signing_key().map(|k| k.kid));
        // An IPv4-mapped source is the same address.
        let mapped: IpAddr = format!("::ffff:{SRC}").parse().unwrap();
        assert!(verify_redemption(&f.ring, good_request(), mapped, NOW, SKEW).is_ok());
    }

    #[test]
    fn a_request_replayed_from_another_address_is_an_address_mismatch() {
        let f = fixture();
        let other: IpAddr = "198.51.100.66".parse().unwrap();
        assert_eq!(
            verify_redemption(&f.ring, good_request(), other, NOW, SKEW),
            Err(Refusal::AddressMismatch)
        );
    }

    #[test]
    fn timestamps_beyond_the_skew_are_stale() {
        let f = fixture();
        let r = |now| verify_redemption(&f.ring, good_request(), src(), now, SKEW);
        assert!(r(NOW + SKEW).is_ok());
        assert!(r(NOW - SKEW).is_ok());
        assert_eq!(r(NOW + SKEW + 1), Err(Refusal::StaleTimestamp));
        assert_eq!(r(NOW - SKEW - 1), Err(Refusal::StaleTimestamp));
    }

    #[test]
    fn a_proof_for_another_coupon_is_a_bad_proof() {
        let f = fixture();
        // Signed for coupon B's token, sent with coupon A: the implicit
        // assertion differs.
        let mut b = f.claims.clone();
        b.id = "cp-0002".to_string();
        let token_b = crate::issue(&f.ring, &b).unwrap();
        let req_b = RedeemRequest::decode(&request_with(|_| {}, &token_b, &f.holder)).unwrap();
        let mixed = RedeemRequest {
            coupon: f.token.clone(),
            pop: req_b.pop,
        };
        assert_eq!(
            verify_redemption(&f.ring, &mixed.encode(), src(), NOW, SKEW),
            Err(Refusal::BadProof)
        );
        // Right token, wrong cid inside.
        let wrong_cid = request_with(|p| p.cid = "cp-0002".to_string(), &f.token, &f.holder);
        assert_eq!(
            verify_redemption(&f.ring, &wrong_cid, src(), NOW, SKEW),
            Err(Refusal::BadProof)
        );
        // Signed by someone else.
        let thief = HolderKey::generate().unwrap();
        let stolen = request_with(|_| {}, &f.token, &thief);
        assert_eq!(
            verify_redemption(&f.ring, &stolen, src(), NOW, SKEW),
            Err(Refusal::BadProof)
        );
    }

    #[test]
    fn coupon_checks_come_before_the_proof() {
        let f = fixture();
        assert_eq!(
            verify_redemption(&KeyRing::new(), good_request(), src(), NOW, SKEW),
            Err(Refusal::UnknownKey)
        );
        assert_eq!(
            verify_redemption(&f.ring, good_request(), src(), f.claims.expires, u64::MAX),
            Err(Refusal::Expired)
        );
        assert_eq!(
            verify_redemption(&f.ring, b"SLUICE-REDEEM/1\n{}", src(), NOW, SKEW),
            Err(Refusal::Malformed)
        );
    }

    proptest! {
        #[test]
        fn flipping_any_bit_of_a_request_is_refused(pos in 0usize..2048, bit in 0u8..8) {
            let f = fixture();
            let mut b = good_request().clone();
            let pos = pos % b.len();
            b[pos] ^= 1 << bit;
            let r = verify_redemption(&f.ring, &b, src(), NOW, SKEW);
            // JSON allows some flips that do not change meaning (none here:
            // no whitespace), so every flip must be refused.
            prop_assert!(r.is_err(), "byte {} bit {}", pos, bit);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let f = fixture();
            prop_assert!(verify_redemption(&f.ring, &bytes, src(), NOW, SKEW).is_err());
        }
    }
}
