//! Proof of possession: a second PASETO v4.public token, signed by the
//! holder's secret key, payload JSON `{"cid","src","ts","nonce"}`, with the
//! coupon token as the PASETO **implicit assertion**. The assertion is
//! signed but not carried, so a proof verifies only next to the coupon it
//! was made for.

use std::net::{IpAddr, Ipv6Addr};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use pasetors::token::{Public, UntrustedToken};
use pasetors::version4::{PublicToken, V4};
use serde::{Deserialize, Serialize};

use crate::claims::parse_public;
use crate::keys::{HolderKey, KeyError};
use crate::refusal::Refusal;
use crate::token::parse_untrusted;
use crate::wire::RedeemRequest;

/// Random bytes in a nonce.
pub const NONCE_BYTES: usize = 16;

/// The claims of a proof of possession.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proof {
    /// The coupon id this proof is for.
    pub cid: String,
    /// The source address the client sends from.
    pub src: IpAddr,
    /// Unix seconds when the proof was made.
    pub ts: u64,
    /// 16 random bytes, base64url without padding (22 characters).
    pub nonce: String,
}

/// A fresh random nonce: 16 bytes, base64url without padding.
pub fn new_nonce() -> Result<String, KeyError> {
    let mut b = [0u8; NONCE_BYTES];
    getrandom::fill(&mut b).map_err(|_| KeyError::Random)?;
    Ok(URL_SAFE_NO_PAD.encode(b))
}

fn valid_nonce(n: &str) -> bool {
    n.len() == 22
        && URL_SAFE_NO_PAD
            .decode(n)
            .is_ok_and(|b| b.len() == NONCE_BYTES)
}

/// Signs `proof` with the holder key, bound to `coupon_token`.
pub fn sign_proof(
    holder: &HolderKey,
    coupon_token: &str,
    proof: &Proof,
) -> Result<String, KeyError> {
    let payload = serde_json::to_vec(proof).map_err(|e| KeyError::Signing(e.to_string()))?;
    PublicToken::sign(
        holder.secret(),
        &payload,
        None,
        Some(coupon_token.as_bytes()),
    )
    .map_err(|e| KeyError::Signing(format!("{e:?}")))
}

/// Verifies a proof for `coupon_token` against the holder's public key
/// (PASERK `k4.public`, the coupon's `holder` claim). `Malformed` if it is
/// not a v4.public token without footer or its payload is not a proof;
/// `BadProof` if the signature does not verify (wrong key, or made for
/// another coupon).
pub fn verify_proof(holder_public: &str, coupon_token: &str, pop: &str) -> Result<Proof, Refusal> {
    verify_parsed(holder_public, coupon_token, &parse_untrusted(pop)?)
}

pub(crate) fn verify_parsed(
    holder_public: &str,
    coupon_token: &str,
    pop: &UntrustedToken<Public, V4>,
) -> Result<Proof, Refusal> {
    if !pop.untrusted_footer().is_empty() {
        return Err(Refusal::Malformed);
    }
    let key = parse_public(holder_public).ok_or(Refusal::Malformed)?;
    let trusted = PublicToken::verify(&key, pop, None, Some(coupon_token.as_bytes()))
        .map_err(|_| Refusal::BadProof)?;
    let proof: Proof = serde_json::from_str(trusted.payload()).map_err(|_| Refusal::Malformed)?;
    if !valid_nonce(&proof.nonce) {
        return Err(Refusal::Malformed);
    }
    Ok(proof)
}

/// The largest redemption request a coupon token can make: the request
/// with a proof carrying the longest source address and timestamp. (The
/// proof's size depends only on its payload's length, not on the key.)
pub(crate) fn max_request_len(token: &str, id: &str) -> usize {
    let proof = Proof {
        cid: id.to_string(),
        src: IpAddr::V6(Ipv6Addr::new(
            0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff,
        )),
        ts: u64::MAX,
        nonce: "A".repeat(22),
    };
    let payload_len = serde_json::to_vec(&proof).map_or(usize::MAX / 2, |p| p.len());
    // "v4.public." + base64url(payload || 64-byte signature), no footer.
    let pop_len = PublicToken::HEADER.len() + ((payload_len + 64) * 4).div_ceil(3);
    let req = RedeemRequest {
        coupon: token.to_string(),
        pop: String::new(),
    };
    req.encode().len() + pop_len
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::tests::{fixture, NOW};
    use proptest::prelude::*;
    use std::sync::OnceLock;

    fn proof() -> Proof {
        Proof {
            cid: "cp-0001".to_string(),
            src: "192.0.2.7".parse().unwrap(),
            ts: NOW,
            nonce: new_nonce().unwrap(),
        }
    }

    fn signed() -> &'static (Proof, String) {
        static P: OnceLock<(Proof, String)> = OnceLock::new();
        P.get_or_init(|| {
            let f = fixture();
            let p = proof();
            let pop = sign_proof(&f.holder, &f.token, &p).unwrap();
            (p, pop)
        })
    }

    #[test]
    fn proof_round_trips() {
        let f = fixture();
        let (p, pop) = signed();
        assert_eq!(
            verify_proof(&f.claims.holder, &f.token, pop).as_ref(),
            Ok(p)
        );
    }

    #[test]
    fn nonces_are_fresh_16_byte_base64url() {
        let a = new_nonce().unwrap();
        assert!(valid_nonce(&a));
        assert_ne!(a, new_nonce().unwrap());
    }

    #[test]
    fn a_proof_for_coupon_a_is_refused_with_coupon_b() {
        let f = fixture();
        let (_, pop) = signed();
        let mut other = f.claims.clone();
        other.id = "cp-0002".to_string();
        let token_b = crate::issue(&f.ring, &other).unwrap();
        assert_eq!(
            verify_proof(&f.claims.holder, &token_b, pop),
            Err(Refusal::BadProof)
        );
    }

    #[test]
    fn a_proof_by_another_key_is_refused() {
        let f = fixture();
        let thief = HolderKey::generate().unwrap();
        let pop = sign_proof(&thief, &f.token, &proof()).unwrap();
        assert_eq!(
            verify_proof(&f.claims.holder, &f.token, &pop),
            Err(Refusal::BadProof)
        );
    }

    #[test]
    fn max_request_len_bounds_real_requests() {
        let f = fixture();
        let mut p = proof();
        p.src = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe".parse().unwrap();
        p.ts = u64::MAX - 1;
        let pop = sign_proof(&f.holder, &f.token, &p).unwrap();
        let real = RedeemRequest {
            coupon: f.token.clone(),
            pop,
        }
        .encode()
        .len();
        assert_eq!(real, max_request_len(&f.token, &f.claims.id));
    }

    #[test]
    fn every_single_bit_flip_of_a_proof_is_refused() {
        let f = fixture();
        let (_, pop) = signed();
        for pos in 0..pop.len() {
            for bit in 0..8 {
                let mut b = pop.as_bytes().to_vec();
                b[pos] ^= 1 << bit;
                if let Ok(s) = std::str::from_utf8(&b) {
                    assert!(
                        verify_proof(&f.claims.holder, &f.token, s).is_err(),
                        "byte {pos} bit {bit}"
                    );
                }
            }
        }
    }

    proptest! {
        #[test]
        fn flipping_any_bit_of_a_proof_invalidates_it(pos in 0usize..1024, bit in 0u8..8) {
            let f = fixture();
            let (_, pop) = signed();
            let mut bytes = pop.clone().into_bytes();
            let pos = pos % bytes.len();
            bytes[pos] ^= 1 << bit;
            if let Ok(s) = std::str::from_utf8(&bytes) {
                let r = verify_proof(&f.claims.holder, &f.token, s);
                prop_assert!(
                    matches!(r, Err(Refusal::Malformed | Refusal::BadProof)),
                    "byte {} bit {}: {:?}", pos, bit, r
                );
            }
        }

        #[test]
        fn truncated_proofs_never_verify(len in 0usize..1024) {
            let f = fixture();
            let (_, pop) = signed();
            let r = verify_proof(&f.claims.holder, &f.token, &pop[..len % pop.len()]);
            prop_assert!(matches!(r, Err(Refusal::Malformed | Refusal::BadProof)), "{:?}", r);
        }

        #[test]
        fn garbage_proofs_never_panic(s in "\\PC{0,300}") {
            let f = fixture();
            prop_assert!(verify_proof(&f.claims.holder, &f.token, &s).is_err());
        }
    }
}
