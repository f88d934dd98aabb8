//! Sluice priority coupons: signed claims, keys, in-band redemption with
//! proof of possession, and the customer's client. Pure Rust, no DPDK; only
//! [`client`] opens sockets.
//!
//! An operator's server issues a signed coupon to a customer; the
//! customer's client redeems it in-band (a UDP datagram through the
//! appliance) with a proof of possession; the appliance verifies it with
//! [`verify_redemption`] and binds it. The state that needs memory
//! (revocations, redemption counts, the nonce replay cache, bindings) is the
//! appliance's, not this crate's.
//!
//! # Decisions
//! - **Token**: PASETO v4.public (Ed25519) via `pasetors`. Payload = JSON
//!   [`Claims`] (strict: unknown fields refused, every rule checked on
//!   deserialization). Footer = JSON `{"kid":"<PASERK k4.pid of the issuer
//!   public key>"}`. Verification reads the kid from the untrusted footer,
//!   looks it up (`UnknownKey`), verifies the signature with that key
//!   (`BadSignature`; the footer is signed too), parses the claims
//!   (`Malformed`), then checks time against the caller's `now`
//!   (`NotYetValid`, `Expired`). pasetors' registered-claims validation is
//!   not used. Payloads are signed, not encrypted: anyone holding a coupon
//!   can read it.
//! - **Keys**: Ed25519, stored as PASERK strings. Issuer secret keys are
//!   `<dir>/<unix-created>-<pid8>.key` (`k4.secret`, mode 0600, refused at
//!   load if others can read them); trusted public-only keys are `*.pub`
//!   (`k4.public`). Several keys are live at once for rotation: the newest
//!   secret key signs, every key verifies. A new key's `created` is bumped
//!   past the newest existing one so "newest" is never a tie.
//! - **Holder key**: Ed25519; its public key is the `holder` claim
//!   (`k4.public`). Made by the client (`sluice-client keygen`) or by the
//!   issuer, who then puts the secret key in the install [`Bundle`].
//! - **Proof of possession**: a second v4.public token signed by the holder
//!   key, payload `{"cid","src","ts","nonce"}`, whose PASETO implicit
//!   assertion is the coupon token: a proof cannot be moved to another
//!   coupon. `src` binds it to the sender's address, `ts` to a time window,
//!   the nonce (16 random bytes) lets the appliance refuse replays.
//! - **Wire**: `SLUICE-REDEEM/1\n` + `{"coupon","pop"}` in one UDP datagram
//!   of at most [`MAX_REDEEM_BYTES`] = 1400 bytes ([`issue`] refuses a
//!   coupon that could not fit); the answer is `SLUICE-STATUS/1\n` + a JSON
//!   [`StatusResponse`], unauthenticated (it informs, it grants nothing).
//!   Default UDP port [`DEFAULT_REDEEM_PORT`] = 7466.
//! - **Windows**: weekly UTC windows gate when a binding is active, not
//!   whether a coupon can be redeemed; [`verify_coupon`] ignores them.
//! - **Errors**: a refused coupon or redemption is a [`Refusal`] (a stable
//!   counter name plus a human reason); everything else (I/O, bad input to
//!   `issue`) is a `thiserror` type that names the bad value.
//!
//! # Layout
//! - [`refusal`]: [`Refusal`], the stable reasons.
//! - [`claims`]: [`Claims`] and its parts ([`Mode`], [`Scope`], [`Basis`],
//!   [`Rate`]), validation, [`host_matches`].
//! - [`window`]: [`Window`] parsing and display, [`active_at`],
//!   [`next_change`].
//! - [`keys`]: [`KeyRing`] (issuer keys, rotation, files) and [`HolderKey`].
//! - [`token`]: [`issue`], [`verify_coupon`], [`peek_claims`].
//! - [`pop`]: [`Proof`], [`sign_proof`], [`verify_proof`].
//! - [`wire`]: [`RedeemRequest`], [`StatusResponse`], [`Echo`].
//! - [`redeem`]: [`verify_redemption`], [`Redemption`].
//! - [`bundle`]: [`Bundle`], the install file.
//! - [`time`]: unix time, week position, UTC formatting.
//! - [`client`]: the customer's client (key, installed coupons, redeem,
//!   local forwarder); `src/bin/sluice-client.rs` is its thin binary.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bundle;
pub mod claims;
pub mod client;
pub mod keys;
pub mod pop;
pub mod redeem;
pub mod refusal;
pub mod time;
pub mod token;
pub mod window;
pub mod wire;

pub use bundle::{Bundle, BundleError};
pub use claims::{
    host_matches, Basis, BasisKind, Claims, ClaimsError, Mode, Rate, Scope, LEVEL_NAMES,
};
pub use keys::{HolderKey, KeyError, KeyInfo, KeyRing};
pub use pop::{new_nonce, sign_proof, verify_proof, Proof};
pub use redeem::{verify_redemption, Redemption};
pub use refusal::Refusal;
pub use token::{issue, peek_claims, verify_coupon, IssueError};
pub use window::{active_at, next_change, Window, WindowError};
pub use wire::{
    Echo, RedeemRequest, Status, StatusResponse, WireError, DEFAULT_REDEEM_PORT, MAX_REDEEM_BYTES,
};
