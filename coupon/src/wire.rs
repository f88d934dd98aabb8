//! The in-band wire formats, one UDP payload each.
//!
//! Redemption request (client → appliance, at most [`MAX_REDEEM_BYTES`]):
//!
//! ```text
//! SLUICE-REDEEM/1\n{"coupon":"v4.public...","pop":"v4.public..."}
//! ```
//!
//! Status response (appliance → client, at most [`MAX_STATUS_BYTES`]):
//!
//! ```text
//! SLUICE-STATUS/1\n{"coupon":"cp-1","nonce":"...","status":"granted","reason":null,
//!                   "detail":"...","level":3,"until":1767225600}
//! ```
//!
//! 1400 bytes keeps a request in one unfragmented datagram on any path with
//! an MTU of 1500 and room for tunnel headers; [`crate::issue`] refuses
//! coupons that could not fit. Status responses are not authenticated: they
//! tell the client what happened, they grant nothing.

use serde::{Deserialize, Serialize};

use crate::claims::MAX_LEVEL;
use crate::refusal::Refusal;

/// Largest redemption request, in bytes (magic line included).
pub const MAX_REDEEM_BYTES: usize = 1400;
/// Largest status response, in bytes (magic line included).
pub const MAX_STATUS_BYTES: usize = 1400;
/// The first line of a redemption request.
pub const REDEEM_MAGIC: &[u8] = b"SLUICE-REDEEM/1\n";
/// The first line of a status response.
pub const STATUS_MAGIC: &[u8] = b"SLUICE-STATUS/1\n";
/// The UDP port the appliance listens on for redemptions by default.
pub const DEFAULT_REDEEM_PORT: u16 = 7466;

/// A datagram that is not a valid request or response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Over the size limit.
    #[error("{len} bytes: over the {max}-byte limit")]
    TooLarge {
        /// The datagram's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Does not start with the expected magic line.
    #[error("does not start with {expected:?}")]
    BadMagic {
        /// The expected magic line.
        expected: &'static str,
    },
    /// The JSON does not parse or has the wrong shape.
    #[error("bad JSON: {0}")]
    Json(String),
    /// Parses but breaks a rule.
    #[error("{0}")]
    Invalid(String),
}

fn split_magic<'a>(
    bytes: &'a [u8],
    magic: &'static [u8],
    max: usize,
) -> Result<&'a [u8], WireError> {
    if bytes.len() > max {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    bytes.strip_prefix(magic).ok_or(WireError::BadMagic {
        expected: if magic == REDEEM_MAGIC {
            "SLUICE-REDEEM/1\\n"
        } else {
            "SLUICE-STATUS/1\\n"
        },
    })
}

fn with_magic(magic: &[u8], json: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(magic.len() + json.len());
    out.extend_from_slice(magic);
    out.extend_from_slice(&json);
    out
}

/// A redemption request: the coupon token and a proof of possession.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedeemRequest {
    /// The coupon token (`v4.public...`).
    pub coupon: String,
    /// The proof of possession token (`v4.public...`).
    pub pop: String,
}

impl RedeemRequest {
    /// The datagram. (No size check: [`crate::issue`] guarantees that a
    /// coupon it signed fits with any proof.)
    pub fn encode(&self) -> Vec<u8> {
        // Serializing two strings cannot fail.
        with_magic(REDEEM_MAGIC, serde_json::to_vec(self).unwrap_or_default())
    }

    /// Parses a datagram; never panics.
    pub fn decode(bytes: &[u8]) -> Result<RedeemRequest, WireError> {
        let json = split_magic(bytes, REDEEM_MAGIC, MAX_REDEEM_BYTES)?;
        serde_json::from_slice(json).map_err(|e| WireError::Json(e.to_string()))
    }
}

/// Whether the redemption was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The coupon is bound.
    Granted,
    /// It is not; `reason` says why.
    Refused,
}

/// The appliance's answer to a redemption request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusResponse {
    /// The coupon id, when the request named one.
    pub coupon: Option<String>,
    /// The request's proof nonce, echoed, when it had one.
    pub nonce: Option<String>,
    /// Granted or refused.
    pub status: Status,
    /// Why it was refused (null when granted).
    pub reason: Option<Refusal>,
    /// Human-readable detail.
    pub detail: String,
    /// The granted level (null when refused).
    pub level: Option<u8>,
    /// Unix seconds until which the binding holds (null when refused).
    pub until: Option<u64>,
}

/// The coupon id and nonce of a request, read **without verification**,
/// only to echo them in a status response (so the client can match a
/// refusal to its request).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Echo {
    /// The coupon id from the coupon's (unverified) payload.
    pub coupon: Option<String>,
    /// The nonce from the proof's (unverified) payload.
    pub nonce: Option<String>,
}

impl Echo {
    /// Whatever can be read from `payload`; empty parts where it cannot.
    pub fn of(payload: &[u8]) -> Echo {
        let Ok(req) = RedeemRequest::decode(payload) else {
            return Echo::default();
        };
        #[derive(Deserialize)]
        struct Id {
            id: String,
        }
        #[derive(Deserialize)]
        struct Nonce {
            nonce: String,
        }
        let payload_of = |token: &str| {
            crate::token::parse_untrusted(token)
                .ok()
                .map(|t| t.untrusted_payload().to_vec())
        };
        let coupon = payload_of(&req.coupon)
            .and_then(|p| serde_json::from_slice::<Id>(&p).ok())
            .map(|i| i.id)
            .filter(|id| crate::claims::valid_id(id));
        let nonce = payload_of(&req.pop)
            .and_then(|p| serde_json::from_slice::<Nonce>(&p).ok())
            .map(|n| n.nonce)
            .filter(|n| n.len() <= 64);
        Echo { coupon, nonce }
    }
}

impl StatusResponse {
    /// A grant of `level` until `until` for coupon `coupon`.
    pub fn granted(
        coupon: &str,
        nonce: Option<&str>,
        level: u8,
        until: u64,
        detail: impl Into<String>,
    ) -> StatusResponse {
        StatusResponse {
            coupon: Some(coupon.to_string()),
            nonce: nonce.map(str::to_string),
            status: Status::Granted,
            reason: None,
            detail: detail.into(),
            level: Some(level),
            until: Some(until),
        }
    }

    /// A refusal, echoing what the request let us read.
    pub fn refused(echo: &Echo, reason: Refusal, detail: impl Into<String>) -> StatusResponse {
        StatusResponse {
            coupon: echo.coupon.clone(),
            nonce: echo.nonce.clone(),
            status: Status::Refused,
            reason: Some(reason),
            detail: detail.into(),
            level: None,
            until: None,
        }
    }

    /// The datagram. A `detail` too long for [`MAX_STATUS_BYTES`] is cut
    /// (at a character boundary, marked with `…`).
    pub fn encode(&self) -> Vec<u8> {
        let mut s = self.clone();
        loop {
            let out = with_magic(STATUS_MAGIC, serde_json::to_vec(&s).unwrap_or_default());
            if out.len() <= MAX_STATUS_BYTES || s.detail.is_empty() {
                return out;
            }
            let keep = s.detail.chars().count() / 2;
            s.detail = s.detail.chars().take(keep).collect::<String>() + "…";
            if keep == 0 {
                s.detail.clear();
            }
        }
    }

    /// Parses a datagram; never panics. Checks consistency: granted has a
    /// level (0..=7) and no reason, refused has a reason.
    pub fn decode(bytes: &[u8]) -> Result<StatusResponse, WireError> {
        let json = split_magic(bytes, STATUS_MAGIC, MAX_STATUS_BYTES)?;
        let s: StatusResponse =
            serde_json::from_slice(json).map_err(|e| WireError::Json(e.to_string()))?;
        match s.status {
            Status::Granted if s.reason.is_some() => Err(WireError::Invalid(
                "granted with a reason: expected reason null".to_string(),
            )),
            Status::Granted if s.level.is_none_or(|l| l > MAX_LEVEL) => Err(WireError::Invalid(
                format!("granted with level {:?}: expected 0..=7", s.level),
            )),
            Status::Refused if s.reason.is_none() => {
                Err(WireError::Invalid("refused without a reason".to_string()))
            }
            _ => Ok(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_round_trips() {
        let r = RedeemRequest {
            coupon: "v4.public.abc".to_string(),
            pop: "v4.public.def".to_string(),
        };
        let b = r.encode();
        assert!(b.starts_with(b"SLUICE-REDEEM/1\n{\"coupon\":\"v4.public.abc\",\"pop\":"));
        assert_eq!(RedeemRequest::decode(&b), Ok(r));
    }

    #[test]
    fn request_decoding_is_strict() {
        assert!(matches!(
            RedeemRequest::decode(b"SLUICE-STATUS/1\n{}"),
            Err(WireError::BadMagic { .. })
        ));
        assert!(matches!(
            RedeemRequest::decode(
                br#"SLUICE-REDEEM/1
{"coupon":"a","pop":"b","x":1}"#
            ),
            Err(WireError::Json(_))
        ));
        let mut big = REDEEM_MAGIC.to_vec();
        big.resize(MAX_REDEEM_BYTES + 1, b' ');
        assert!(matches!(
            RedeemRequest::decode(&big),
            Err(WireError::TooLarge {
                len: 1401,
                max: 1400
            })
        ));
    }

    #[test]
    fn status_round_trips_with_nulls() {
        let g = StatusResponse::granted("cp-1", Some("n"), 3, 1_767_225_600, "bound");
        assert_eq!(StatusResponse::decode(&g.encode()), Ok(g));
        let r = StatusResponse::refused(&Echo::default(), Refusal::Expired, "expired");
        let b = r.encode();
        let text = String::from_utf8(b.clone()).unwrap();
        assert_eq!(
            text,
            "SLUICE-STATUS/1\n{\"coupon\":null,\"nonce\":null,\"status\":\"refused\",\"reason\":\"expired\",\"detail\":\"expired\",\"level\":null,\"until\":null}"
        );
        assert_eq!(StatusResponse::decode(&b), Ok(r));
    }

    #[test]
    fn inconsistent_status_is_refused() {
        for bad in [
            r#"{"coupon":null,"nonce":null,"status":"granted","reason":"expired","detail":"","level":1,"until":1}"#,
            r#"{"coupon":null,"nonce":null,"status":"granted","reason":null,"detail":"","level":8,"until":1}"#,
            r#"{"coupon":null,"nonce":null,"status":"refused","reason":null,"detail":"","level":null,"until":null}"#,
            r#"{"coupon":null,"nonce":null,"status":"refused","reason":"nope","detail":"","level":null,"until":null}"#,
        ] {
            let b = [STATUS_MAGIC, bad.as_bytes()].concat();
            assert!(StatusResponse::decode(&b).is_err(), "{bad}");
        }
    }

    #[test]
    fn long_details_are_cut_to_fit() {
        let r = StatusResponse::refused(&Echo::default(), Refusal::Malformed, "\u{1}".repeat(5000));
        let b = r.encode();
        assert!(b.len() <= MAX_STATUS_BYTES);
        assert!(StatusResponse::decode(&b).is_ok());
    }

    #[test]
    fn echo_reads_ids_from_a_real_request() {
        let f = crate::token::tests::fixture();
        let nonce = crate::pop::new_nonce().unwrap();
        let proof = crate::pop::Proof {
            cid: f.claims.id.clone(),
            src: "192.0.2.1".parse().unwrap(),
            ts: 1,
            nonce: nonce.clone(),
        };
        let pop = crate::pop::sign_proof(&f.holder, &f.token, &proof).unwrap();
        let req = RedeemRequest {
            coupon: f.token.clone(),
            pop,
        };
        assert_eq!(
            Echo::of(&req.encode()),
            Echo {
                coupon: Some(f.claims.id.clone()),
                nonce: Some(nonce)
            }
        );
        assert_eq!(Echo::of(b"junk"), Echo::default());
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
            let _ = RedeemRequest::decode(&bytes);
            let _ = StatusResponse::decode(&bytes);
            let _ = Echo::of(&bytes);
            let mut r = REDEEM_MAGIC.to_vec();
            r.extend_from_slice(&bytes);
            let _ = RedeemRequest::decode(&r);
            let _ = Echo::of(&r);
            let mut s = STATUS_MAGIC.to_vec();
            s.extend_from_slice(&bytes);
            let _ = StatusResponse::decode(&s);
        }

        #[test]
        fn status_round_trips(
            coupon in proptest::option::of("[a-z0-9-]{1,64}"),
            nonce in proptest::option::of("[A-Za-z0-9_-]{22}"),
            granted in any::<bool>(),
            reason in 0usize..12,
            detail in "\\PC{0,200}",
            level in 0u8..=7,
            until in any::<u64>(),
        ) {
            let s = if granted {
                StatusResponse::granted(coupon.as_deref().unwrap_or("x"), nonce.as_deref(), level, until, detail)
            } else {
                StatusResponse::refused(&Echo { coupon, nonce }, Refusal::ALL[reason], detail)
            };
            prop_assert_eq!(StatusResponse::decode(&s.encode()), Ok(s));
        }
    }
}
