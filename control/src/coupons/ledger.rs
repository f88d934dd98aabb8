//! The coupon ledger: every signed coupon this appliance issued, redeemed
//! or revoked, durable.
//!
//! # Guarantee
//! An event is appended as one record (the policy journal's framing:
//! magic, length, CRCs, JSON payload) and `fsync`ed before the caller acts
//! on it, so an acknowledged issue, redemption or revocation survives a
//! crash, and a torn last record (never acknowledged) is cut off at load.
//!
//! # Why a ledger of its own, and the order of writes
//! The ledger is the **truth about coupons**; the `coupon` rows of the
//! policy that make their traffic go faster are **derived** from it
//! (`super::Coupons::reconcile`). A redemption is written here first, then
//! its bindings are committed to the policy. A crash between the two
//! leaves a recorded redemption without bindings, which the reconcile at
//! start-up (and every sweep) adds; a revocation likewise removes them.
//! The other order could bind a coupon whose redemption count was never
//! recorded, so a limited coupon could be redeemed once too often.
//!
//! # Compaction
//! When the file holds more than [`COMPACT_AFTER`] events beyond the last
//! snapshot, the whole state is written as one snapshot record to a
//! temporary file, `fsync`ed and renamed over the ledger (then the
//! directory is `fsync`ed), so the file stays proportional to the coupons
//! it describes; coupons expired more than [`FORGET_AFTER`] ago are left
//! out (their tokens are refused as expired anyway).
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sluice_coupon::Claims;

use crate::policy::store::{io_err, read_all, read_record, record, sync_dir};
use crate::policy::StoreError;

/// The ledger file's name in the state directory.
pub const LEDGER_FILE: &str = "coupons";
/// Events appended after which the ledger is rewritten as a snapshot.
pub const COMPACT_AFTER: usize = 10_000;
/// Seconds after its expiry that a coupon's record is dropped at the next
/// compaction.
pub const FORGET_AFTER: u64 = 7 * 86400;

/// One thing that happened to a coupon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    /// Signed here, by key `kid`.
    Issued {
        token: String,
        claims: Claims,
        kid: String,
        at: u64,
    },
    /// Bound to `subscriber` (in band, `via` "packet", or through the
    /// control socket, "socket").
    Redeemed {
        token: String,
        claims: Claims,
        kid: String,
        subscriber: IpAddr,
        at: u64,
        via: String,
    },
    /// Revoked: grants nothing from now on.
    Revoked { id: String, at: u64 },
    /// The whole ledger at once (the first record after a compaction).
    Snapshot { coupons: Vec<CouponRecord> },
}

/// What the ledger knows of one coupon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CouponRecord {
    pub id: String,
    /// The signed token and its claims, once issued or redeemed here (a
    /// coupon revoked before anyone presented it has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<Claims>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<u64>,
    /// Each distinct subscriber address it was bound to, first time.
    #[serde(default)]
    pub redemptions: Vec<RedemptionRecord>,
}

/// One subscriber a coupon was bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedemptionRecord {
    pub subscriber: IpAddr,
    pub at: u64,
    pub via: String,
}

impl CouponRecord {
    fn new(id: &str) -> CouponRecord {
        CouponRecord {
            id: id.to_owned(),
            token: None,
            claims: None,
            kid: None,
            issued_at: None,
            revoked_at: None,
            redemptions: Vec::new(),
        }
    }

    pub fn redeemed_by(&self, subscriber: IpAddr) -> bool {
        self.redemptions.iter().any(|r| r.subscriber == subscriber)
    }
}

/// The ledger: its state in memory and the file behind it.
#[derive(Debug)]
pub struct Ledger {
    coupons: BTreeMap<String, CouponRecord>,
    file: Option<(PathBuf, File)>,
    since_snapshot: usize,
    /// Bytes of a torn tail cut off at load.
    pub truncated_bytes: u64,
}

impl Ledger {
    /// A ledger that is not persisted (tests).
    pub fn in_memory() -> Ledger {
        Ledger {
            coupons: BTreeMap::new(),
            file: None,
            since_snapshot: 0,
            truncated_bytes: 0,
        }
    }

    /// Loads (or creates) the ledger in `dir`. A damaged record followed by
    /// intact ones is refused: acknowledged events would be lost.
    pub fn open(dir: &Path) -> Result<Ledger, StoreError> {
        std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        let path = dir.join(LEDGER_FILE);
        let mut l = Ledger::in_memory();
        let data = read_all(&path)?.unwrap_or_default();
        let mut off = 0;
        while off < data.len() {
            match read_record(&data[off..]) {
                Ok((payload, len)) => {
                    let ev: Event =
                        serde_json::from_slice(payload).map_err(|e| StoreError::Corrupt {
                            path: path.clone(),
                            offset: off as u64,
                            reason: format!("bad ledger event: {e}"),
                        })?;
                    l.apply(ev);
                    off += len;
                }
                Err(why) => {
                    if crate::policy::store::any_record_in(&data[off + 1..]) {
                        return Err(StoreError::Corrupt {
                            path,
                            offset: off as u64,
                            reason: format!("{why}, and intact records follow"),
                        });
                    }
                    l.truncated_bytes = (data.len() - off) as u64;
                    break;
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        if l.truncated_bytes > 0 {
            file.set_len(off as u64)
                .and_then(|_| file.sync_all())
                .map_err(io_err("truncate the torn tail of", &path))?;
        }
        l.file = Some((path, file));
        Ok(l)
    }

    fn apply(&mut self, ev: Event) {
        match ev {
            Event::Issued {
                token,
                claims,
                kid,
                at,
            } => {
                let r = self
                    .coupons
                    .entry(claims.id.clone())
                    .or_insert_with(|| CouponRecord::new(&claims.id));
                r.token = Some(token);
                r.claims = Some(claims);
                r.kid = Some(kid);
                r.issued_at = Some(at);
            }
            Event::Redeemed {
                token,
                claims,
                kid,
                subscriber,
                at,
                via,
            } => {
                let r = self
                    .coupons
                    .entry(claims.id.clone())
                    .or_insert_with(|| CouponRecord::new(&claims.id));
                if r.token.is_none() {
                    r.token = Some(token);
                    r.claims = Some(claims);
                    r.kid = Some(kid);
                }
                if !r.redeemed_by(subscriber) {
                    r.redemptions.push(RedemptionRecord {
                        subscriber,
                        at,
                        via,
                    });
                }
            }
            Event::Revoked { id, at } => {
                let r = self
                    .coupons
                    .entry(id.clone())
                    .or_insert_with(|| CouponRecord::new(&id));
                r.revoked_at.get_or_insert(at);
            }
            Event::Snapshot { coupons } => {
                self.coupons = coupons.into_iter().map(|c| (c.id.clone(), c)).collect();
                self.since_snapshot = 0;
            }
        }
    }

    /// Appends `ev` durably, then applies it. On error nothing changed.
    pub fn record(&mut self, ev: Event) -> Result<(), StoreError> {
        if let Some((path, file)) = &mut self.file {
            let rec = record(&ev)?;
            let before = file.metadata().map_err(io_err("stat", path))?.len();
            if let Err(e) = file.write_all(&rec).and_then(|_| file.sync_data()) {
                // Cut a partial write off again; the event is refused.
                let _ = file.set_len(before);
                return Err(io_err("append to", path)(e));
            }
        }
        self.apply(ev);
        self.since_snapshot += 1;
        if self.since_snapshot >= COMPACT_AFTER {
            if let Err(e) = self.compact() {
                log::warn!("coupon ledger compaction failed (retried later): {e}");
                self.since_snapshot = 0;
            }
        }
        Ok(())
    }

    /// Rewrites the ledger as one snapshot record.
    pub fn compact(&mut self) -> Result<(), StoreError> {
        let Some((path, _)) = &self.file else {
            return Ok(());
        };
        let path = path.clone();
        let tmp = path.with_extension("tmp");
        // Coupons expired for a week can never be granted again (their
        // token is refused as expired): their records go.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.coupons.retain(|_, c| {
            c.claims
                .as_ref()
                .is_none_or(|cl| cl.expires.saturating_add(FORGET_AFTER) > now)
        });
        let rec = record(&Event::Snapshot {
            coupons: self.coupons.values().cloned().collect(),
        })?;
        {
            let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
            f.write_all(&rec)
                .and_then(|_| f.sync_all())
                .map_err(io_err("write", &tmp))?;
        }
        std::fs::rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        self.file = Some((path, file));
        self.since_snapshot = 0;
        Ok(())
    }

    pub fn get(&self, id: &str) -> Option<&CouponRecord> {
        self.coupons.get(id)
    }

    pub fn coupons(&self) -> impl Iterator<Item = &CouponRecord> {
        self.coupons.values()
    }

    pub fn len(&self) -> usize {
        self.coupons.len()
    }

    pub fn is_empty(&self) -> bool {
        self.coupons.is_empty()
    }
}
