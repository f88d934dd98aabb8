//! Signed priority coupons on the appliance: issuing, revoking, redeeming
//! (in band and through the control socket), and turning each redeemed
//! coupon into `coupon` rows of the policy.
//!
//! The pure parts (claims, signatures, proof of possession, the
//! redemption packet) are the `sluice-coupon` crate; this module holds the
//! state they need: the issuer keys, the [`ledger`] (issued, redeemed,
//! revoked: durable), the nonces seen (replay), the hostnames learned from
//! DNS answers, and the counters of every refusal by reason.
//!
//! # From a coupon to bindings
//! A redeemed, unrevoked coupon whose validity (not before, expiry) and
//! time windows hold *now* gives its subscriber address one `coupon` row
//! per restriction: (each scope prefix, and each address learned for a
//! scope hostname) × (each scope port, or any port). The row's decision is
//! the coupon's level with its modes (DSCP, destination port, destination
//! address) and rate. Rows are named `sc/<coupon id>/<subscriber>#<hash of
//! the restriction>`, so they are recognised, and a row expires with the
//! coupon (or with the DNS answer's TTL, whichever is first).
//!
//! [`Coupons::reconcile`] computes those rows for one coupon and commits
//! what differs from the policy as one batch per subscriber. It runs
//! after every redemption and revocation, for every coupon at start-up
//! (repairing a crash between ledger and policy), every second for the
//! coupons whose rows change with time (windows, hostnames; kept in a set,
//! so the sweep costs nothing for the others) or whose last reconcile
//! failed, and after
//! each DNS answer that teaches an address for a subscriber's hostname
//! scope. A subscriber holds at most
//! [`crate::policy::MAX_COUPONS_PER_SUBSCRIBER`] rows; restrictions beyond
//! that, or whose match another row already holds, are left out and
//! counted (`scope_overflow`).
//!
//! # In-band redemption
//! The workers consume UDP packets to `coupons.redeem_port` seen on the
//! subscriber side and copy DNS answers seen upstream. A redemption is
//! verified ([`sluice_coupon::verify_redemption`]: signature, key, times,
//! proof of possession bound to the packet's source address, timestamp
//! skew), then checked against revocation, the redemption limit and the
//! nonces seen within the skew window; it is recorded, bound, and answered
//! with a status packet from the address it was sent to. Every refusal is
//! answered with its reason and counted; a packet too broken to answer is
//! counted as `malformed`. `max_redemptions` counts distinct subscriber
//! addresses: redeeming again from an address that holds the coupon is
//! granted again (the same bindings), not counted twice.
//!
//! Redemption through the control socket (`coupon_redeem`, for a web form
//! or an IVR front end that has authenticated the user itself) names the
//! subscriber address and needs no proof of possession: the socket is
//! root-only.
//!
//! # Requests on the control socket
//! One JSON object per line, as the policy requests; unknown fields are
//! errors; every response has `ok`, and a failure an `error` with the
//! `field` at fault and the `reason`:
//! ```json
//! {"op":"coupon_keygen"}
//! {"op":"coupon_keys"}
//! {"op":"coupon_issue","claims":{"id":"c-1","customer":"alice","level":3,"modes":[{"port":8080}],"scope":{"prefixes":["203.0.113.10/32"],"ports":[80]},"basis":{"kind":"customer","amount":0},"not_before":1795392000,"expires":1795478400,"max_redemptions":1,"holder":"k4.public...."}}
//! {"op":"coupon_revoke","id":"c-1"}
//! {"op":"coupon_list","offset":0,"limit":100}
//! {"op":"coupon_get","id":"c-1"}
//! {"op":"coupon_redeem","token":"v4.public....","subscriber":"198.18.0.1"}
//! {"op":"coupon_stats"}
//! ```
//! ```json
//! {"ok":true,"id":"c-1","kid":"k4.pid....","token":"v4.public...."}
//! {"ok":true,"status":"granted","coupon":"c-1","level":3,"until":1795478400,"bindings":1,"again":false}
//! {"ok":false,"status":"refused","coupon":null,"reason":"expired","error":{"field":"","reason":"expired: ..."}}
//! ```
//! `coupon_list`/`coupon_get` give each coupon's `state` (`valid`,
//! `not_yet_valid`, `outside_window`, `expired`, `revoked`), its
//! redemptions (subscriber, time, `packet` or `socket`) and the bindings it
//! holds now; `stats` (and `coupon_stats`) the grants, the refusals by
//! reason, the answers sent and the DNS names learned.
pub mod ledger;
#[cfg(test)]
mod tests;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Value};
use sluice_coupon::{Claims, KeyRing, Refusal};

use crate::config::CouponsConfig;
use crate::dns::DnsCache;
use crate::policy::{
    Change, CouponBinding, Entry, Key, PolicyState, StoreError, MAX_COUPONS_PER_SUBSCRIBER,
};
use ledger::{CouponRecord, Event, Ledger};

/// The id prefix of the policy rows derived from signed coupons.
pub const ROW_PREFIX: &str = "sc/";

/// DNS-learned rows expire on a multiple of this many seconds (after the
/// answer's TTL, never before).
pub const DNS_ROW_ROUND: u64 = 300;

/// What the coupon manager needs from the control thread: the policy, and
/// a way to commit a batch to it (journal, then the workers' tables).
pub trait Binder {
    fn state(&self) -> &PolicyState;
    fn commit(&mut self, batch: &[Change]) -> Result<(), String>;
}

/// Why the coupon manager could not start.
#[derive(Debug, thiserror::Error)]
pub enum CouponsError {
    #[error("coupon keys in {dir}: {source}")]
    Keys {
        dir: String,
        source: sluice_coupon::KeyError,
    },
    #[error("coupon ledger: {0}")]
    Ledger(#[from] StoreError),
}

/// Counters, all since start.
#[derive(Debug, Default, Clone)]
pub struct CouponCounters {
    pub granted: u64,
    /// Grants to a subscriber that already held the coupon.
    pub regranted: u64,
    pub refused: BTreeMap<&'static str, u64>,
    pub answers_sent: u64,
    pub answers_unsent: u64,
    pub dns_answers: u64,
    pub dns_refused: u64,
    pub dns_learned: u64,
    pub scope_overflow: u64,
    pub commit_errors: u64,
    /// In-band requests over `requests_per_source`: dropped, unanswered.
    pub rate_limited: u64,
    /// DNS answers from a resolver not in `dns_resolvers`: ignored.
    pub dns_untrusted: u64,
    pub issued: u64,
    pub revoked: u64,
}

/// The coupon manager, owned by the control thread.
pub struct Coupons {
    ring: KeyRing,
    keys_dir: std::path::PathBuf,
    ledger: Ledger,
    dns: DnsCache,
    /// Proof-of-possession nonces seen, until when they could still pass
    /// the timestamp check.
    nonces: HashMap<String, u64>,
    max_skew: u64,
    counters: CouponCounters,
    /// Redeemed, unrevoked coupons whose rows change with time (windows,
    /// hostname scopes): what the once-a-second sweep reconciles, so that
    /// it costs nothing for the others however many there are.
    timed: std::collections::BTreeSet<String>,
    /// In-band requests per source address in the current second.
    per_source: HashMap<IpAddr, u32>,
    per_source_second: u64,
    requests_per_source: u32,
    /// Empty: any resolver.
    dns_resolvers: Vec<IpAddr>,
}

/// Whether a coupon's rows change with time.
fn is_timed(r: &CouponRecord) -> bool {
    r.revoked_at.is_none()
        && !r.redemptions.is_empty()
        && r.claims
            .as_ref()
            .is_some_and(|c| !c.windows.is_empty() || !c.scope.hosts.is_empty())
}

/// A redemption's outcome, as the status answer tells it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Granted {
        id: String,
        level: u8,
        until: u64,
        /// Rows bound now (0 while outside a time window, or before DNS
        /// taught a scope hostname's address).
        rows: usize,
        again: bool,
    },
    Refused {
        id: Option<String>,
        reason: Refusal,
        detail: String,
    },
}

fn refused(id: Option<&str>, reason: Refusal, detail: impl Into<String>) -> Outcome {
    Outcome::Refused {
        id: id.map(str::to_owned),
        reason,
        detail: detail.into(),
    }
}

impl Coupons {
    /// Loads the issuer keys (the directory is created 0700 if missing) and
    /// the ledger in `state_dir`.
    pub fn open(
        cfg: &CouponsConfig,
        keys_dir: &Path,
        state_dir: &Path,
    ) -> Result<Coupons, CouponsError> {
        if !keys_dir.exists() {
            use std::os::unix::fs::PermissionsExt;
            let made = std::fs::create_dir_all(keys_dir).and_then(|_| {
                std::fs::set_permissions(keys_dir, std::fs::Permissions::from_mode(0o700))
            });
            if let Err(e) = made {
                return Err(CouponsError::Ledger(StoreError::Io {
                    op: "create the coupon key directory",
                    path: keys_dir.to_owned(),
                    source: e,
                }));
            }
        }
        let ring = KeyRing::load(keys_dir).map_err(|source| CouponsError::Keys {
            dir: keys_dir.display().to_string(),
            source,
        })?;
        if cfg.snoop_dns && cfg.dns_resolvers.is_empty() {
            log::warn!(
                "coupons.snoop_dns is on with no coupons.dns_resolvers: DNS answers from any \
                 server beyond the appliance are believed for hostname-scoped coupons"
            );
        }
        let ledger = Ledger::open(state_dir)?;
        let timed = ledger
            .coupons()
            .filter(|r| is_timed(r))
            .map(|r| r.id.clone())
            .collect();
        Ok(Coupons {
            ring,
            keys_dir: keys_dir.to_owned(),
            ledger,
            dns: DnsCache::new(cfg.dns_entries),
            nonces: HashMap::new(),
            max_skew: cfg.max_skew_secs,
            counters: CouponCounters::default(),
            timed,
            per_source: HashMap::new(),
            per_source_second: 0,
            requests_per_source: cfg.requests_per_source,
            dns_resolvers: cfg.dns_resolvers.clone(),
        })
    }

    /// In memory with the given key ring (tests).
    pub fn in_memory(ring: KeyRing, keys_dir: &Path, max_skew: u64) -> Coupons {
        Coupons {
            ring,
            keys_dir: keys_dir.to_owned(),
            ledger: Ledger::in_memory(),
            dns: DnsCache::new(1024),
            nonces: HashMap::new(),
            max_skew,
            counters: CouponCounters::default(),
            timed: Default::default(),
            per_source: HashMap::new(),
            per_source_second: 0,
            requests_per_source: 10,
            dns_resolvers: Vec::new(),
        }
    }

    /// Whether an in-band request from `src` may be handled now (at most
    /// `requests_per_source` a second per address; the map is emptied
    /// every second, so it holds one second's sources at most).
    pub fn admit(&mut self, src: IpAddr, now: u64) -> bool {
        if now != self.per_source_second {
            self.per_source.clear();
            self.per_source_second = now;
        }
        let n = self.per_source.entry(src).or_default();
        *n += 1;
        if *n > self.requests_per_source {
            self.counters.rate_limited += 1;
            return false;
        }
        true
    }

    /// Keeps [`Coupons::timed`] in step with coupon `id`'s record.
    fn retime(&mut self, id: &str) {
        if self.ledger.get(id).is_some_and(is_timed) {
            self.timed.insert(id.to_owned());
        } else {
            self.timed.remove(id);
        }
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn counters(&self) -> &CouponCounters {
        &self.counters
    }

    fn count_refusal(&mut self, r: Refusal) {
        *self.counters.refused.entry(r.name()).or_default() += 1;
    }

    // -----------------------------------------------------------------
    // Redemption
    // -----------------------------------------------------------------

    /// Redeems an in-band request `payload` that came from `src`.
    pub fn redeem_packet(
        &mut self,
        payload: &[u8],
        src: IpAddr,
        now: u64,
        b: &mut dyn Binder,
    ) -> Outcome {
        let r = match sluice_coupon::verify_redemption(&self.ring, payload, src, now, self.max_skew)
        {
            Ok(r) => r,
            Err(reason) => {
                self.count_refusal(reason);
                return refused(None, reason, reason.to_string());
            }
        };
        if self.nonces.contains_key(&r.nonce) {
            self.count_refusal(Refusal::Replayed);
            return refused(
                Some(&r.claims.id),
                Refusal::Replayed,
                "this redemption (its nonce) was already seen",
            );
        }
        let (nonce, until) = (r.nonce.clone(), r.ts.saturating_add(self.max_skew) + 1);
        let out = self.grant(r.token, r.claims, r.kid, src, now, "packet", b);
        if matches!(out, Outcome::Granted { .. }) {
            // Kept while the timestamp could still pass (then the skew
            // check refuses it anyway). Only grants: a refused request
            // replayed is refused again for the same reason, and holders
            // of refused coupons cannot fill the map.
            self.nonces.insert(nonce, until);
        }
        out
    }

    /// Redeems `token` for `subscriber` through the control socket.
    pub fn redeem_token(
        &mut self,
        token: &str,
        subscriber: IpAddr,
        now: u64,
        b: &mut dyn Binder,
    ) -> Outcome {
        match sluice_coupon::verify_coupon(&self.ring, token, now) {
            Ok((claims, kid)) => {
                self.grant(token.to_owned(), claims, kid, subscriber, now, "socket", b)
            }
            Err(reason) => {
                self.count_refusal(reason);
                refused(None, reason, reason.to_string())
            }
        }
    }

    /// The checks that need state, then the ledger, then the bindings.
    #[allow(clippy::too_many_arguments)]
    fn grant(
        &mut self,
        token: String,
        claims: Claims,
        kid: String,
        subscriber: IpAddr,
        now: u64,
        via: &str,
        b: &mut dyn Binder,
    ) -> Outcome {
        let id = claims.id.clone();
        let rec = self.ledger.get(&id);
        if let Some(at) = rec.and_then(|r| r.revoked_at) {
            self.count_refusal(Refusal::Revoked);
            return refused(
                Some(&id),
                Refusal::Revoked,
                format!("revoked at {}", sluice_coupon::time::format_utc(at)),
            );
        }
        let again = rec.is_some_and(|r| r.redeemed_by(subscriber));
        if !again {
            let used = rec.map_or(0, |r| r.redemptions.len());
            if used >= claims.max_redemptions as usize {
                self.count_refusal(Refusal::RedemptionLimit);
                return refused(
                    Some(&id),
                    Refusal::RedemptionLimit,
                    format!(
                        "already redeemed {used} time(s), the limit is {}",
                        claims.max_redemptions
                    ),
                );
            }
            if let Err(detail) = check_family(&claims, subscriber) {
                self.count_refusal(Refusal::NoBinding);
                return refused(Some(&id), Refusal::NoBinding, detail);
            }
            let ev = Event::Redeemed {
                token,
                claims: claims.clone(),
                kid,
                subscriber,
                at: now,
                via: via.to_owned(),
            };
            if let Err(e) = self.ledger.record(ev) {
                self.counters.commit_errors += 1;
                log::error!("coupon {id}: cannot record the redemption: {e}");
                return refused(
                    Some(&id),
                    Refusal::NoBinding,
                    format!("the appliance cannot record redemptions now: {e}"),
                );
            }
            self.retime(&id);
        }
        let rows = match self.reconcile_one(&id, Some(subscriber), now, b) {
            Ok(n) => n,
            Err(e) => {
                // Recorded: the sweeps retry it.
                self.timed.insert(id.clone());
                log::warn!("coupon {id}: binding {subscriber} failed (retried): {e}");
                0
            }
        };
        if again {
            self.counters.regranted += 1;
        } else {
            self.counters.granted += 1;
        }
        Outcome::Granted {
            id,
            level: claims.level,
            until: claims.expires,
            rows,
            again,
        }
    }

    // -----------------------------------------------------------------
    // Bindings
    // -----------------------------------------------------------------

    /// The rows coupon `rec` should give `subscriber` at `now`.
    fn desired_rows(&self, rec: &CouponRecord, subscriber: IpAddr, now: u64) -> Vec<CouponBinding> {
        let Some(c) = &rec.claims else {
            return Vec::new();
        };
        if rec.revoked_at.is_some()
            || now < c.not_before
            || now >= c.expires
            || !sluice_coupon::active_at(&c.windows, now)
        {
            return Vec::new();
        }
        let fam = |a: IpAddr| a.is_ipv4() == subscriber.is_ipv4();
        // (destination prefix, expiry)
        let mut dsts: Vec<(Option<String>, u64)> = Vec::new();
        for p in c.scope.prefixes.iter().filter(|p| fam(p.addr())) {
            dsts.push((Some(p.to_string()), c.expires));
        }
        if !c.scope.hosts.is_empty() {
            let mut learned: BTreeMap<IpAddr, u64> = BTreeMap::new();
            for h in &c.scope.hosts {
                for (a, exp) in self.dns.lookup_pattern(h, now) {
                    if fam(a) {
                        let e = learned.entry(a).or_default();
                        *e = (*e).max(exp);
                    }
                }
            }
            // Freshest first: those are what the subscriber is about to use.
            let mut learned: Vec<_> = learned.into_iter().collect();
            learned.sort_by_key(|&(a, e)| (std::cmp::Reverse(e), a));
            for (a, e) in learned {
                let len = if a.is_ipv4() { 32 } else { 128 };
                // Rounded up to DNS_ROW_ROUND: a TTL extended by another
                // answer rewrites the row once per period, not per answer.
                let e = e.div_ceil(DNS_ROW_ROUND).saturating_mul(DNS_ROW_ROUND);
                dsts.push((Some(format!("{a}/{len}")), e.min(c.expires)));
            }
        } else if c.scope.prefixes.is_empty() {
            dsts.push((None, c.expires));
        }
        let ports: Vec<Option<u16>> = if c.scope.ports.is_empty() {
            vec![None]
        } else {
            c.scope.ports.iter().map(|&p| Some(p)).collect()
        };
        // A learned address may equal a scope prefix: one row per match.
        let mut seen = std::collections::HashSet::new();
        dsts.retain(|(d, _)| seen.insert(d.clone()));
        let mut rows = Vec::new();
        for (dst, exp) in &dsts {
            for port in &ports {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (dst, port).hash(&mut h);
                let spec = crate::policy::model::CouponSpec {
                    id: format!(
                        "{ROW_PREFIX}{}/{subscriber}#{:08x}",
                        c.id,
                        h.finish() as u32
                    ),
                    subscriber: subscriber.to_string(),
                    dst: dst.clone(),
                    port: port.map(u64::from),
                    decision: decision_spec(c),
                    expires: Some(*exp),
                };
                match CouponBinding::try_from(spec) {
                    Ok(r) => rows.push(r),
                    Err(e) => log::warn!("coupon {}: row not valid: {e}", c.id),
                }
            }
        }
        rows
    }

    /// Brings the rows of coupon `id` (for one subscriber, or all its
    /// subscribers) in line with what it should grant at `now`; returns
    /// the rows it holds afterwards.
    pub fn reconcile_one(
        &mut self,
        id: &str,
        only: Option<IpAddr>,
        now: u64,
        b: &mut dyn Binder,
    ) -> Result<usize, String> {
        let Some(rec) = self.ledger.get(id) else {
            return Ok(0);
        };
        let subs: Vec<IpAddr> = match only {
            Some(s) => vec![s],
            None => rec.redemptions.iter().map(|r| r.subscriber).collect(),
        };
        let prefix = format!("{ROW_PREFIX}{id}/");
        let mut held = 0;
        let mut first_err = None;
        let mut skipped = false;
        for s in subs {
            let want = if rec.redeemed_by(s) {
                self.desired_rows(rec, s, now)
            } else {
                Vec::new()
            };
            let state = b.state();
            let mine: Vec<&CouponBinding> = state
                .coupons_of(s)
                .filter(|r| r.id().starts_with(&prefix))
                .collect();
            let others: Vec<&CouponBinding> = state
                .coupons_of(s)
                .filter(|r| !r.id().starts_with(&prefix))
                .collect();
            let room = MAX_COUPONS_PER_SUBSCRIBER.saturating_sub(others.len());
            let mut keep: Vec<CouponBinding> = Vec::new();
            for w in want {
                let clash = others
                    .iter()
                    .any(|o| o.dst() == w.dst() && o.port() == w.port());
                if clash || keep.len() >= room {
                    self.counters.scope_overflow += 1;
                    // Retried every sweep: the row in the way may go.
                    skipped = true;
                    continue;
                }
                keep.push(w);
            }
            let mut batch = Vec::new();
            for m in &mine {
                if !keep.iter().any(|k| k.id() == m.id()) {
                    batch.push(Change::Remove(Key::Coupon(m.id().to_owned())));
                }
            }
            for k in &keep {
                match mine.iter().find(|m| m.id() == k.id()) {
                    Some(m) if *m == k => {}
                    Some(_) => batch.push(Change::Update(Entry::Coupon(k.clone()))),
                    None => batch.push(Change::Add(Entry::Coupon(k.clone()))),
                }
            }
            // Removals first: a freed match or slot may be what an add needs.
            batch.sort_by_key(|c| !matches!(c, Change::Remove(_)));
            held += keep.len();
            if !batch.is_empty() {
                if let Err(e) = b.commit(&batch) {
                    self.counters.commit_errors += 1;
                    first_err.get_or_insert(e);
                    held -= keep.len();
                }
            }
        }
        if skipped || first_err.is_some() {
            // The sweeps try again.
            self.timed.insert(id.to_owned());
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(held),
        }
    }

    /// Reconciles every coupon (start-up).
    pub fn reconcile_all(&mut self, now: u64, b: &mut dyn Binder) {
        let ids: Vec<String> = self.ledger.coupons().map(|c| c.id.clone()).collect();
        for id in ids {
            if let Err(e) = self.reconcile_one(&id, None, now, b) {
                log::warn!("coupon {id}: {e}");
            }
        }
    }

    /// Once a second: forget old nonces and DNS entries, and reconcile the
    /// coupons whose rows change with time (windows, hostname scopes).
    pub fn sweep(&mut self, now: u64, b: &mut dyn Binder) {
        self.nonces.retain(|_, until| *until >= now);
        self.dns.expire(now);
        // Past their expiry (and its last reconcile) they change no more.
        let ledger = &self.ledger;
        self.timed.retain(|id| {
            ledger
                .get(id)
                .and_then(|r| r.claims.as_ref())
                .is_some_and(|c| now < c.expires.saturating_add(2))
        });
        let ids: Vec<String> = self.timed.iter().cloned().collect();
        for id in ids {
            if let Err(e) = self.reconcile_one(&id, None, now, b) {
                log::warn!("coupon {id}: {e}");
            }
        }
    }

    /// A DNS answer seen crossing the appliance, sent to `subscriber`.
    pub fn dns_answer(
        &mut self,
        payload: &[u8],
        resolver: IpAddr,
        subscriber: IpAddr,
        now: u64,
        b: &mut dyn Binder,
    ) {
        if !self.dns_resolvers.is_empty() && !self.dns_resolvers.contains(&resolver) {
            self.counters.dns_untrusted += 1;
            return;
        }
        let answer = match crate::dns::parse_answer(payload) {
            Ok(a) => a,
            Err(_) => {
                self.counters.dns_refused += 1;
                return;
            }
        };
        self.counters.dns_answers += 1;
        // Only names a live hostname-scoped coupon matches are kept, so the
        // cache holds what coupons need, not everything subscribers resolve.
        let patterns: Vec<&str> = self
            .timed
            .iter()
            .filter_map(|id| self.ledger.get(id)?.claims.as_ref())
            .flat_map(|c| c.scope.hosts.iter().map(String::as_str))
            .collect();
        let mut answer = answer;
        answer.names.retain(|l| {
            patterns
                .iter()
                .any(|p| crate::dns::host_matches(p, &l.name))
        });
        if answer.names.is_empty() {
            return;
        }
        let learned = self.dns.learn(&answer, now);
        if learned.is_empty() {
            return;
        }
        self.counters.dns_learned += learned.len() as u64;
        // The subscriber's hostname-scoped coupons whose patterns match
        // (all redeemed hostname-scoped coupons are in `timed`).
        let ids: Vec<String> = self
            .timed
            .iter()
            .filter_map(|id| self.ledger.get(id))
            .filter(|c| c.revoked_at.is_none() && c.redeemed_by(subscriber))
            .filter(|c| {
                c.claims.as_ref().is_some_and(|cl| {
                    cl.scope.hosts.iter().any(|h| {
                        learned
                            .iter()
                            .any(|(name, _, _)| crate::dns::host_matches(h, name))
                    })
                })
            })
            .map(|c| c.id.clone())
            .collect();
        for id in ids {
            if let Err(e) = self.reconcile_one(&id, Some(subscriber), now, b) {
                log::warn!("coupon {id}: {e}");
            }
        }
    }

    // -----------------------------------------------------------------
    // Operator requests
    // -----------------------------------------------------------------

    /// Handles one `coupon_*` request line (already known to be one);
    /// returns the response object.
    pub fn handle(&mut self, line: &str, now: u64, b: &mut dyn Binder) -> Value {
        match serde_json::from_str::<CouponRequest>(line) {
            Ok(req) => self.execute(req, now, b),
            Err(e) => error("", format!("bad coupon request: {e}")),
        }
    }

    fn execute(&mut self, req: CouponRequest, now: u64, b: &mut dyn Binder) -> Value {
        match req {
            CouponRequest::CouponKeygen {} => match KeyRing::generate(&self.keys_dir) {
                Ok(info) => {
                    // Reload so the ring has the new key (and any added by hand).
                    match KeyRing::load(&self.keys_dir) {
                        Ok(r) => self.ring = r,
                        Err(e) => return error("", format!("reloading keys: {e}")),
                    }
                    json!({"ok": true, "kid": info.kid, "created": info.created})
                }
                Err(e) => error("", format!("generating a key: {e}")),
            },
            CouponRequest::CouponKeys {} => {
                let keys: Vec<Value> = self
                    .ring
                    .keys()
                    .into_iter()
                    .map(|k| json!({"kid": k.kid, "created": k.created, "can_sign": k.can_sign}))
                    .collect();
                json!({"ok": true, "keys": keys})
            }
            CouponRequest::CouponIssue { claims } => {
                let claims: Claims = match serde_json::from_value(claims) {
                    Ok(c) => c,
                    Err(e) => return error("claims", e.to_string()),
                };
                if self.ledger.get(&claims.id).is_some() {
                    return error(
                        "claims.id",
                        format!("coupon {:?} already exists", claims.id),
                    );
                }
                let static_rows =
                    claims.scope.prefixes.len().max(1) * claims.scope.ports.len().max(1);
                if claims.scope.hosts.is_empty() && static_rows > MAX_COUPONS_PER_SUBSCRIBER {
                    return error(
                        "claims.scope",
                        format!(
                            "{} prefixes x {} ports make {static_rows} bindings per subscriber; the limit is {MAX_COUPONS_PER_SUBSCRIBER}",
                            claims.scope.prefixes.len(),
                            claims.scope.ports.len()
                        ),
                    );
                }
                let token = match sluice_coupon::issue(&self.ring, &claims) {
                    Ok(t) => t,
                    Err(e) => return error("claims", e.to_string()),
                };
                let kid = self.ring.signing_key().map(|k| k.kid).unwrap_or_default();
                let ev = Event::Issued {
                    token: token.clone(),
                    claims: claims.clone(),
                    kid: kid.clone(),
                    at: now,
                };
                if let Err(e) = self.ledger.record(ev) {
                    return error("", format!("cannot record the coupon: {e}"));
                }
                self.counters.issued += 1;
                json!({"ok": true, "id": claims.id, "kid": kid, "token": token})
            }
            CouponRequest::CouponRevoke { id } => {
                if !sluice_coupon::claims::valid_id(&id) {
                    return error("id", format!("{id:?} is not a coupon id"));
                }
                if self.ledger.get(&id).is_some_and(|r| r.revoked_at.is_some()) {
                    return error("id", format!("coupon {id:?} is already revoked"));
                }
                if let Err(e) = self.ledger.record(Event::Revoked {
                    id: id.clone(),
                    at: now,
                }) {
                    return error("", format!("cannot record the revocation: {e}"));
                }
                self.counters.revoked += 1;
                self.retime(&id);
                let removed = self.bound_rows(&id, b.state());
                let res = self.reconcile_one(&id, None, now, b);
                let mut v = json!({"ok": true, "id": id, "bindings_removed": removed});
                if let Err(e) = res {
                    // The sweeps retry it.
                    self.timed.insert(id.clone());
                    v["warning"] = json!(format!("bindings are removed at the next sweep: {e}"));
                }
                v
            }
            CouponRequest::CouponList { offset, limit } => {
                let total = self.ledger.len();
                let list: Vec<Value> = self
                    .ledger
                    .coupons()
                    .skip(offset)
                    .take(limit.min(10_000))
                    .map(|r| self.describe(r, b.state(), now))
                    .collect();
                json!({"ok": true, "total": total, "coupons": list})
            }
            CouponRequest::CouponGet { id } => match self.ledger.get(&id) {
                Some(r) => json!({"ok": true, "coupon": self.describe(r, b.state(), now)}),
                None => error("id", format!("no coupon {id:?}")),
            },
            CouponRequest::CouponRedeem { token, subscriber } => {
                let sub: IpAddr = match subscriber.parse() {
                    Ok(a) => a,
                    Err(_) => return error("subscriber", format!("bad IP address {subscriber:?}")),
                };
                let out = self.redeem_token(&token, sub, now, b);
                outcome_json(&out)
            }
            CouponRequest::CouponStats {} => json!({"ok": true, "coupons": self.stats()}),
        }
    }

    fn bound_rows(&self, id: &str, state: &PolicyState) -> usize {
        let prefix = format!("{ROW_PREFIX}{id}/");
        self.ledger.get(id).map_or(0, |r| {
            r.redemptions
                .iter()
                .map(|x| {
                    state
                        .coupons_of(x.subscriber)
                        .filter(|c| c.id().starts_with(&prefix))
                        .count()
                })
                .sum()
        })
    }

    fn describe(&self, r: &CouponRecord, state: &PolicyState, now: u64) -> Value {
        let st = match (&r.claims, r.revoked_at) {
            (_, Some(_)) => "revoked",
            (None, None) => "unknown",
            (Some(c), None) if now >= c.expires => "expired",
            (Some(c), None) if now < c.not_before => "not_yet_valid",
            (Some(c), None) if !sluice_coupon::active_at(&c.windows, now) => "outside_window",
            (Some(_), None) => "valid",
        };
        let mut v = json!({
            "id": r.id,
            "state": st,
            "kid": r.kid,
            "issued_at": r.issued_at,
            "revoked_at": r.revoked_at,
            "redemptions": r.redemptions,
            "bindings": self.bound_rows(&r.id, state),
        });
        if let Some(c) = &r.claims {
            v["customer"] = json!(c.customer);
            v["level"] = json!(c.level);
            v["level_name"] = json!(c.level_name());
            v["modes"] = json!(c.modes);
            v["scope"] = json!(c.scope);
            v["basis"] = json!(c.basis);
            v["not_before"] = json!(c.not_before);
            v["expires"] = json!(c.expires);
            v["windows"] = json!(c.windows);
            v["max_redemptions"] = json!(c.max_redemptions);
            v["rate"] = json!(c.rate);
        }
        v
    }

    /// Counters and sizes for `stats`.
    pub fn stats(&self) -> Value {
        let c = &self.counters;
        let refused: BTreeMap<&str, u64> = Refusal::ALL
            .iter()
            .map(|r| (r.name(), c.refused.get(r.name()).copied().unwrap_or(0)))
            .collect();
        json!({
            "coupons": self.ledger.len(),
            "keys": self.ring.keys().len(),
            "issued": c.issued,
            "revoked": c.revoked,
            "granted": c.granted,
            "regranted": c.regranted,
            "refused": refused,
            "answers_sent": c.answers_sent,
            "answers_unsent": c.answers_unsent,
            "dns": {
                "answers": c.dns_answers,
                "refused": c.dns_refused,
                "learned": c.dns_learned,
                "untrusted": c.dns_untrusted,
                "entries": self.dns.len(),
            },
            "scope_overflow": c.scope_overflow,
            "commit_errors": c.commit_errors,
            "rate_limited": c.rate_limited,
            "nonces": self.nonces.len(),
        })
    }

    /// Counts a malformed in-band packet that could not even be answered.
    pub fn count_unanswerable(&mut self) {
        self.count_refusal(Refusal::Malformed);
    }

    pub fn count_answer(&mut self, sent: bool) {
        if sent {
            self.counters.answers_sent += 1;
        } else {
            self.counters.answers_unsent += 1;
        }
    }
}

/// Refuses a coupon whose address remap or scope cannot apply to a
/// subscriber of this family.
fn check_family(c: &Claims, subscriber: IpAddr) -> Result<(), String> {
    if let Some(a) = c.addr() {
        if a.is_ipv4() != subscriber.is_ipv4() {
            return Err(format!(
                "the coupon remaps to {a}, which a subscriber at {subscriber} cannot reach"
            ));
        }
    }
    let fam = |p: &ipnet::IpNet| p.addr().is_ipv4() == subscriber.is_ipv4();
    if !c.scope.prefixes.is_empty() && c.scope.hosts.is_empty() && !c.scope.prefixes.iter().any(fam)
    {
        return Err(format!("no scope prefix is of the family of {subscriber}"));
    }
    Ok(())
}

fn decision_spec(c: &Claims) -> crate::policy::model::DecisionSpec {
    use crate::policy::model::{DecisionSpec, RateSpec};
    use crate::policy::{Dscp, DscpMark, Level};
    DecisionSpec {
        level: Level::from_number(u64::from(c.level)).unwrap_or(Level::ALL[5]),
        dscp: c.dscp().and_then(Dscp::new).map(DscpMark::Value),
        dst_port: c.port().map(u64::from),
        dst_addr: c.addr().map(|a| a.to_string()),
        mss_clamp: None,
        rate: c.rate.map(|r| RateSpec {
            committed_bps: r.committed_bps,
            peak_bps: r.peak_bps,
        }),
    }
}

fn error(field: &str, reason: impl Into<String>) -> Value {
    json!({"ok": false, "error": {"field": field, "reason": reason.into()}})
}

/// The status datagram answering in-band request `payload`.
pub fn status_payload(o: &Outcome, payload: &[u8]) -> Vec<u8> {
    use sluice_coupon::{Echo, StatusResponse};
    let echo = Echo::of(payload);
    match o {
        Outcome::Granted {
            id,
            level,
            until,
            rows,
            again,
        } => StatusResponse::granted(
            id,
            echo.nonce.as_deref(),
            *level,
            *until,
            format!(
                "{} with {rows} binding(s) now",
                if *again { "already granted" } else { "granted" }
            ),
        ),
        Outcome::Refused { reason, detail, .. } => StatusResponse::refused(&echo, *reason, detail),
    }
    .encode()
}

/// The status of a redemption as a response object.
pub fn outcome_json(o: &Outcome) -> Value {
    match o {
        Outcome::Granted {
            id,
            level,
            until,
            rows,
            again,
        } => json!({"ok": true, "status": "granted", "coupon": id, "level": level,
                    "until": until, "bindings": rows, "again": again}),
        Outcome::Refused { id, reason, detail } => json!({
            "ok": false, "status": "refused", "coupon": id, "reason": reason.name(),
            "error": {"field": "", "reason": format!("{}: {detail}", reason.name())}
        }),
    }
}

/// The operator's coupon requests (`"op": "coupon_..."`).
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
#[allow(clippy::enum_variant_names)] // the variant names are the wire's op names
enum CouponRequest {
    CouponKeygen {},
    CouponKeys {},
    CouponIssue {
        claims: Value,
    },
    CouponRevoke {
        id: String,
    },
    CouponList {
        #[serde(default)]
        offset: usize,
        #[serde(default = "default_limit")]
        limit: usize,
    },
    CouponGet {
        id: String,
    },
    CouponRedeem {
        token: String,
        subscriber: String,
    },
    CouponStats {},
}

fn default_limit() -> usize {
    1000
}

/// Whether a request line is a coupon request (its `op` starts with
/// `coupon_`), without parsing it whole.
pub fn is_coupon_request(line: &str) -> bool {
    #[derive(Deserialize)]
    struct Op<'a> {
        #[serde(borrow)]
        op: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_str::<Op>(line)
        .ok()
        .and_then(|o| o.op)
        .is_some_and(|o| o.starts_with("coupon_"))
}
