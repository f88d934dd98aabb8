//! The durable store: a snapshot plus an append-only journal of batches.
//!
//! # Guarantee
//! **An acknowledged batch is on disk; an unacknowledged one may or may not
//! be, and is never loaded half.** [`Store::commit`] validates the batch
//! against the state, appends it to the journal as one record and
//! `fsync`s it (`File::sync_data`) before the state changes and before it
//! returns; the caller acknowledges only after that. A batch is one record,
//! so a crash (`kill -9`, power loss) leaves either the whole batch or none
//! of it. Group commit: one `fsync` per batch, whatever its size.
//!
//! # Files (in the store directory)
//! - `journal`: records appended one per accepted batch, into space
//!   zero-filled ahead of them (see *Preallocation*).
//! - `snapshot`: one record holding the whole state at some sequence
//!   number. Written to `snapshot.tmp`, `fsync`ed, renamed over `snapshot`,
//!   then the directory is `fsync`ed, and only then is the journal emptied.
//!   A crash between the rename and the emptying leaves journal records the
//!   snapshot already holds; loading skips them by sequence number.
//!
//! # Record format
//! `magic "SLJ1" | payload length u32 LE | CRC-32 of payload u32 LE |
//! CRC-32 of the previous 12 bytes u32 LE | payload`. The journal payload is
//! binary: `"SLJB" | S u64 LE | n u32 LE | n changes | "\n"`, S the sequence
//! number before the batch, each change in [`super::model::put_change`]'s
//! encoding (op, table, then the row as a snapshot holds it, or the key),
//! validated on load through the same constructors and checks as the
//! protocol's JSON. A storm's coupon row takes 26 bytes, against ~95 as the
//! JSON request line earlier versions journaled: under an update storm the
//! journal's writes and `fdatasync`s were what the worker lost most to
//! (`sluice-perf updates` with the journal's writes left out lost 2.8 and
//! 4.1 % against 6.7 and 6.8 %), so the journal now writes a quarter of
//! the bytes. Those earlier records still load: JSON
//! `{"seq":S,"changes":[...]}` (changes in the `batch` request's shape), or
//! `{"seq":S,` followed by the members of a request (`"op":"update",
//! "table":"coupon","entries":[...]}`).
//!
//! The snapshot payload is binary (format 2): `"SLS2"`, then the rows in
//! [`super::model::Rows`]'s encoding, every row validated again when it is
//! loaded (see `write_binary_snapshot`). A snapshot of a million rows is
//! written often during an update storm, and as JSON it took about four
//! times as long and three times the space. JSON snapshots of earlier
//! versions (`{"format":1,"seq":S,"generations":[...],"default":{...},
//! "tiers":[...],"logins":[...],"coupons":[...],"sps":[...],
//! "eligibility":[...]}`) still load.
//!
//! # Preallocation
//! The journal is written in place into space already allocated and
//! zero-filled ([`StoreOptions::journal_prealloc_bytes`] at a time), not
//! appended to: each append made the filesystem allocate blocks and update
//! the inode's size and extents, so its `fsync` wrote metadata too, and on
//! this machine (a VM) the worker lost about 4 % of its packets while
//! a process appended and `fsync`ed 900 KB 60 times a second, against 1 %
//! writing the same into preallocated space (`sluice-perf updates` with
//! those writes in place of the storm, one run each). Zero-filled rather
//! than `fallocate`d: ext4 converts unwritten extents at the first write,
//! which is metadata again. The zeros after the last record are the
//! journal's clean end: loading stops at them and reports nothing.
//!
//! # Reuse
//! A compaction does not empty the journal file: it writes a header's
//! worth of zeros at its start, and the next records overwrite the old
//! ones from there. Zero-filling is needed only where the file grows past
//! its largest size, so an update storm does not pay, after every
//! compaction, for writing the journal's size in zeros and syncing them
//! (about 120 ns per row of the storm, `sluice-perf control`). Where old
//! bytes follow the last record, the record is written with a header of
//! zeros after it, the end marker. Old records are not mistaken for the
//! journal's own: every old record is older than the snapshot (its `seq`
//! is below the snapshot's), and loading stops at the first such record
//! after one of the journal's own. Nor are row bytes inside them: binary
//! rows are stored raw and may read as a record's header, so only a whole
//! record that decodes, with a current `seq`, counts (`own_record`). A file more than twice the
//! size one journal needs (*Compaction*) is cut to nothing instead.
//! Start-up pays one pass over the old bytes: after the journal's end it
//! looks for intact records of its own (damage before them is corruption,
//! see *Loading*), checking the CRC of every old record it meets.
//! Versions before this one read neither binary snapshots nor a reused
//! journal: there is no going back to them with a store this one wrote.
//!
//! # Loading
//! The snapshot (if any) is loaded and validated, then the journal's records
//! are replayed in order, each one applied as the batch it was. Records
//! older than the snapshot are skipped before the first of the journal's
//! own (a crash between a snapshot and the journal's reset leaves them),
//! and end the journal after it (*Reuse*). At the first record that is
//! incomplete or fails its CRC:
//! - if an intact record of the journal's own (not older than the
//!   snapshot) follows it anywhere, the damage is in the middle, and
//!   acknowledged batches would be lost: loading fails with
//!   [`StoreError::Corrupt`] (naming the offset), unless
//!   [`StoreOptions::truncate_corrupt`] allows dropping everything from it;
//! - if what is there is zeros (a header's worth, the end marker, or up to
//!   the end of the file: the preallocated space), the journal ends there;
//! - otherwise it is the torn tail of a write that was never acknowledged:
//!   it is cut off (the file is truncated to the last good record) and
//!   reported in [`LoadReport::truncated_bytes`] (up to the next old
//!   record, or to its last non-zero byte).
//!
//! # Compaction
//! After a commit, when the journal holds [`StoreOptions::compact_after_records`]
//! records or more bytes than both [`StoreOptions::compact_after_bytes`] and
//! [`JOURNAL_PER_SNAPSHOT`] times the last snapshot (about twice as many
//! rows as the policy holds), a snapshot is written and the journal emptied
//! (*Reuse*). A failed compaction does not fail the commit (the batch is
//! already durable); it is retried after as many records again, and shown in
//! [`StoreStats::last_compaction_error`].
//!
//! # Failures
//! A failed journal write is cut off again (the file truncated to the end
//! of the last record, dropping the preallocated space after it) and the
//! batch is refused, state unchanged. A failed preallocation does not fail
//! the batch: its record is appended as without preallocation, and
//! preallocation stays off until the next compaction. A failed `fsync`
//! poisons the store: after it the kernel may have dropped the dirty pages
//! and nothing more can be promised, so every later commit is refused until
//! the process restarts and reloads what really is on disk.
//!
//! One process per directory: nothing here locks it.
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use thiserror::Error;

use super::model::{put_change, take_change, Change, Entry, Reader};
use super::model::{CouponBinding, Decision, EligibilityRule, LoginBinding, SpAllocation, Tier};
#[cfg(test)]
use super::model::{Key, Table};
use super::protocol::{
    batch_changes, check_fields, fast_journal_record, parse_table, BatchFields, ProtocolError,
};
use super::state::{Applied, BatchError, PolicyState, Touched};

const MAGIC: [u8; 4] = *b"SLJ1";
const HEADER: usize = 16;
/// The largest record payload written or read (a corrupt length can
/// therefore never make the loader allocate more).
pub const MAX_RECORD_BYTES: usize = 1 << 30;
/// The JSON snapshot's `format` (still loaded; no longer written).
const SNAPSHOT_FORMAT: u32 = 1;
/// The first bytes of a binary snapshot's payload (format 2; a JSON
/// payload starts with `{`).
const BINARY_SNAPSHOT: &[u8; 4] = b"SLS2";
/// The first bytes of a binary journal record's payload (a JSON one, as
/// earlier versions wrote, starts with `{`).
const BINARY_BATCH: &[u8; 4] = b"SLJB";
/// The last byte of a binary journal record's payload. Not zero, so that,
/// as with JSON records (`}`), the journal's records end at its last
/// non-zero byte: a record ending in zeros (an absent option) would
/// otherwise look, from its tail, like preallocated space.
const BATCH_END: u8 = b'\n';

/// The largest journal buffer kept between commits (a request line is at
/// most 4 MiB; its record a little more).
const SCRATCH_KEPT: usize = 16 << 20;

/// How many times the last snapshot's size the journal may grow to before
/// a compaction. A compaction writes the whole policy: during an update
/// storm its cost is spread over the rows journaled since the last one,
/// and start-up replays what the journal holds after loading the snapshot.
/// A journal row and a snapshot row take about the same bytes (both
/// binary: 26 and 24 for the storm's coupons), so at 2 the journal holds
/// about twice as many rows as the policy. Replaying a binary row costs
/// about what loading one from the snapshot does, so start-up takes up to
/// about three times as long as loading the snapshot alone; against 1,
/// the storm writes a third less (a snapshot of the whole policy every
/// two policies' worth of rows instead of every one). A compaction of 1M
/// coupons takes ~75 ms, ~40 ns per storm row at 2 (`sluice-perf
/// control`).
pub const JOURNAL_PER_SNAPSHOT: u64 = 2;

const JOURNAL: &str = "journal";
const SNAPSHOT: &str = "snapshot";
const SNAPSHOT_TMP: &str = "snapshot.tmp";

/// When to compact, and what to do with a corrupt journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    pub compact_after_records: u64,
    pub compact_after_bytes: u64,
    /// Drop a damaged journal from the first bad record on, even if valid
    /// records follow (acknowledged batches are then lost; the count of
    /// bytes dropped is in the report). Off by default: loading fails.
    pub truncate_corrupt: bool,
    /// Journal space zero-filled ahead of the records at a time (see
    /// *Preallocation*); 0: plain appends. Filling it holds up the commit
    /// that needs it (32 MiB: ~20 ms here).
    pub journal_prealloc_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            compact_after_records: 10_000,
            compact_after_bytes: 64 << 20,
            journal_prealloc_bytes: 32 << 20,
            truncate_corrupt: false,
        }
    }
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path} is corrupt at byte {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("the journal is unusable after a failed write ({0}); restart to reload from disk")]
    Poisoned(String),
    #[error("batch too large for one journal record: {0} bytes (limit {MAX_RECORD_BYTES})")]
    TooLarge(usize),
    #[error(
        "the policy is too large for one snapshot record: over {MAX_RECORD_BYTES} bytes; \
         the journal keeps growing instead"
    )]
    SnapshotTooLarge,
}

/// Why [`Store::commit`] refused a batch. Either way the state is unchanged.
#[derive(Debug, Error)]
pub enum CommitError {
    #[error(transparent)]
    Rejected(#[from] BatchError),
    #[error("the batch was not stored: {0}")]
    Store(#[from] StoreError),
}

/// What loading found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct LoadReport {
    /// Sequence number of the snapshot loaded (0: none).
    pub snapshot_seq: u64,
    /// Journal records applied on top of it.
    pub replayed_records: u64,
    /// Journal records the snapshot already held, found before the
    /// journal's own.
    pub skipped_records: u64,
    /// Bytes cut off the end of the journal (a torn last write, or with
    /// `truncate_corrupt`, damage), up to the next record older than the
    /// snapshot (a reused journal's old bytes) or the last non-zero byte:
    /// zeros after it are indistinguishable from preallocated space.
    pub truncated_bytes: u64,
    /// Sequence number of the loaded state.
    pub seq: u64,
}

/// The store's counters, for `stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreStats {
    pub journal_bytes: u64,
    pub journal_records: u64,
    pub snapshot_seq: u64,
    pub snapshot_bytes: u64,
    pub compactions: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_compaction_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poisoned: Option<String>,
}

/// The journal and snapshot of one policy.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    journal: File,
    /// The journal's logical end: the records are `..journal_bytes`.
    journal_bytes: u64,
    /// The file's length: zeros or stale bytes from `journal_bytes` to
    /// here.
    journal_allocated: u64,
    /// Where the bytes a reused journal still holds from before its last
    /// compaction end (see *Reuse*): from `journal_bytes` to here they may
    /// be anything, beyond it they are zeros.
    stale_end: u64,
    /// A zero-fill failed: no more until the next compaction.
    prealloc_failed: bool,
    journal_records: u64,
    snapshot_seq: u64,
    snapshot_bytes: u64,
    compactions: u64,
    /// After a failed compaction: the record count at which to retry.
    retry_compaction_at: Option<u64>,
    last_compaction_error: Option<String>,
    poisoned: Option<String>,
    opts: StoreOptions,
    /// The journal record being written, kept between commits so that a
    /// multi-megabyte batch does not allocate (and fault in) a new buffer
    /// every time.
    scratch: Vec<u8>,
}

pub(crate) fn io_err<'p>(
    op: &'static str,
    path: &'p Path,
) -> impl FnOnce(io::Error) -> StoreError + 'p {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// One record: `value` as JSON behind its header, encoded in place (no copy
/// of a multi-megabyte payload).
pub(crate) fn record<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    let mut buf = Vec::new();
    record_into(&mut buf, value)?;
    Ok(buf)
}

/// [`record`] into `buf` (cleared first), reusing its allocation.
fn record_into<T: Serialize>(buf: &mut Vec<u8>, value: &T) -> Result<(), StoreError> {
    buf.clear();
    buf.extend_from_slice(&[0u8; HEADER]);
    serde_json::to_writer(&mut *buf, value).expect("policy rows always serialize");
    seal(buf)
}

/// The journal record of `batch` (see *Record format*): `"SLJB"`, `seq`
/// (the sequence number before the batch) as u64, the number of changes
/// as u32, each change ([`put_change`]), then [`BATCH_END`].
fn batch_record(buf: &mut Vec<u8>, seq: u64, batch: &[Change]) -> Result<(), StoreError> {
    // Every change takes two bytes at least: more would not fit a record
    // (checked before encoding them all).
    let n = u32::try_from(batch.len())
        .ok()
        .filter(|&n| n as usize <= MAX_RECORD_BYTES / 2)
        .ok_or(StoreError::TooLarge(batch.len().saturating_mul(2)))?;
    buf.clear();
    buf.extend_from_slice(&[0u8; HEADER]);
    buf.extend_from_slice(BINARY_BATCH);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&n.to_le_bytes());
    for c in batch {
        put_change(buf, c);
    }
    buf.push(BATCH_END);
    seal(buf)
}

/// A binary journal record's sequence number and changes, every row and
/// key validated as the protocol's decoding validates them.
fn read_batch_record(payload: &[u8]) -> Result<(u64, Vec<Change>), String> {
    let body = payload
        .strip_prefix(BINARY_BATCH)
        .ok_or("not a binary journal record")?;
    let mut r = Reader::new(body);
    let seq = r.u64()?;
    let n = r.u32()? as usize;
    // Sized for a storm's batch at most: a damaged count must not reserve
    // what the payload could not hold.
    let mut changes = Vec::with_capacity(n.min(body.len() / 2).min(16 << 10));
    for i in 0..n {
        changes.push(take_change(&mut r).map_err(|e| format!("change {i}: {e}"))?);
    }
    let rest = body.len() - r.offset();
    if rest != 1 || r.u8()? != BATCH_END {
        return Err(format!(
            "{rest} bytes after the last change, not the end mark"
        ));
    }
    Ok((seq, changes))
}

/// A request line's members after its opening brace (`"op":..}`), or
/// None if it is not a non-empty object.
#[cfg(test)]
fn request_fields(line: &str) -> Option<&str> {
    let fields = line.trim().strip_prefix('{')?;
    (fields.ends_with('}') && !fields.trim_start().starts_with('}')).then_some(fields)
}

/// The journal record earlier versions wrote for a batch parsed from a
/// request line whose members are `fields`: `{"seq":S,` and the request's
/// own members, the shape [`JournalIn`] reads. Still loaded; written only
/// by tests.
#[cfg(test)]
fn journal_request_record(buf: &mut Vec<u8>, seq: u64, fields: &str) -> Result<(), StoreError> {
    use std::io::Write as _;
    buf.clear();
    buf.extend_from_slice(&[0u8; HEADER]);
    write!(buf, "{{\"seq\":{seq},").expect("writing to a Vec");
    buf.extend_from_slice(fields.as_bytes());
    seal(buf)
}

/// Fills in the header of the record in `buf` (16 bytes left for it, then
/// the payload).
fn seal(buf: &mut [u8]) -> Result<(), StoreError> {
    let len = buf.len() - HEADER;
    if len > MAX_RECORD_BYTES {
        return Err(StoreError::TooLarge(len));
    }
    let crc = crc32fast::hash(&buf[HEADER..]);
    buf[..HEADER].copy_from_slice(&header(len, crc));
    Ok(())
}

/// The 16-byte header of a record whose payload is `len` bytes with CRC
/// `crc`.
fn header(len: usize, crc: u32) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..4].copy_from_slice(&MAGIC);
    h[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    h[8..12].copy_from_slice(&crc.to_le_bytes());
    let hcrc = crc32fast::hash(&h[..12]);
    h[12..16].copy_from_slice(&hcrc.to_le_bytes());
    h
}

/// A writer that checksums and counts what passes through it.
struct Summing<W> {
    inner: W,
    crc: crc32fast::Hasher,
    len: usize,
}

impl<W: Write> Write for Summing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n;
        if self.len > MAX_RECORD_BYTES {
            return Err(io::Error::other(StoreError::SnapshotTooLarge));
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `value` as one record at the start of `f` (a new, empty file),
/// streaming the payload through a buffer rather than building it in
/// memory first: a snapshot of a million rows is hundreds of megabytes,
/// and building it as one `Vec` cost a page fault per 4 KiB and copies on
/// every doubling (about a third of a compaction's time, `sluice-perf
/// control`). The header, which needs the payload's length and CRC, is
/// written last, over the 16 bytes left for it. Returns the record's
/// length.
fn write_record_streamed(
    f: &File,
    payload: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut start: &File = f;
    start.write_all(&[0u8; HEADER])?;
    // The buffer outside the checksum: summing small pieces one by one
    // took half the (JSON) snapshot's time.
    let mut w = io::BufWriter::with_capacity(
        1 << 20,
        Summing {
            inner: f,
            crc: crc32fast::Hasher::new(),
            len: 0,
        },
    );
    payload(&mut w)?;
    let sum = w.into_inner().map_err(|e| e.into_error())?;
    let (len, crc) = (sum.len, sum.crc.finalize());
    f.write_all_at(&header(len, crc), 0)?;
    Ok(HEADER + len)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// The record starting at `data[0]`: its payload and total length, or
/// why it is not a complete, intact record.
pub(crate) fn read_record(data: &[u8]) -> Result<(&[u8], usize), &'static str> {
    if data.len() < HEADER {
        return Err("incomplete record header");
    }
    if data[..4] != MAGIC {
        return Err("bad record magic");
    }
    if crc32fast::hash(&data[..12]) != u32_at(data, 12) {
        return Err("record header checksum mismatch");
    }
    let len = u32_at(data, 4) as usize;
    if len > MAX_RECORD_BYTES {
        return Err("record length over the limit");
    }
    let Some(payload) = data.get(HEADER..HEADER + len) else {
        return Err("incomplete record payload");
    };
    if crc32fast::hash(payload) != u32_at(data, 8) {
        return Err("record payload checksum mismatch");
    }
    Ok((payload, HEADER + len))
}

/// The length of `data` up to its last non-zero byte: 0 when it is all
/// zeros (the journal's preallocated space).
fn nonzero_len(data: &[u8]) -> usize {
    data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
}

/// The intact records anywhere in `data` (found by their magic and both
/// checksums, each skipped whole once found), with their offsets.
fn intact_records(data: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        while at + HEADER <= data.len() {
            let here = at;
            match data[here..]
                .starts_with(&MAGIC)
                .then(|| read_record(&data[here..]))
            {
                Some(Ok((payload, len))) => {
                    at += len;
                    return Some((here, payload));
                }
                _ => at += 1,
            }
        }
        None
    })
}

/// A journal record's sequence number, read without decoding the rest:
/// every record starts with it (`"SLJB"` and 8 bytes, or, as earlier
/// versions wrote, `{"seq":S,`). None for a payload that does not.
fn record_seq(payload: &[u8]) -> Option<u64> {
    if let Some(rest) = payload.strip_prefix(BINARY_BATCH) {
        return Some(u64::from_le_bytes(rest.get(..8)?.try_into().ok()?));
    }
    let rest = payload.strip_prefix(b"{\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// Whether `payload`, an intact record found after damage, is one of the
/// journal's own, which the damage must not silently drop: its sequence
/// number is readable and not older than the snapshot's, and a binary one
/// decodes. A binary record holds rows' bytes as they are (an IPv6 address
/// is 16 raw bytes, a header's length), so a row can hold bytes that read as
/// an intact record: a header with an empty payload, say. Counting only a
/// whole decodable record of the journal's own keeps such bytes, in a
/// reused journal's old records, from making a sound journal look corrupt
/// (found by review; a regression test below). A row crafted to hold a
/// whole record with a forged checksum would still pass; a per-store
/// secret in the checksum would close that (not done).
fn own_record(payload: &[u8], base: u64) -> bool {
    record_seq(payload).is_some_and(|s| s >= base)
        && (!payload.starts_with(BINARY_BATCH) || read_batch_record(payload).is_ok())
}

/// Whether an intact record starts anywhere in `data`.
pub(crate) fn any_record_in(data: &[u8]) -> bool {
    (0..data.len().saturating_sub(HEADER - 1))
        .any(|i| data[i..].starts_with(&MAGIC) && read_record(&data[i..]).is_ok())
}

/// A JSON journal record's payload as earlier versions wrote it (tests
/// write them to check that they still load): a batch whose changes all
/// share one op and one table in the request's own shape, `{"seq":S,
/// "op":..,"table":..,"entries":[..]}` (or `"keys"` for `remove`), any
/// other batch as `{"seq":S,"changes":[..]}`.
#[cfg(test)]
#[derive(Serialize)]
#[serde(untagged)]
enum JournalOut<'a> {
    Rows {
        seq: u64,
        op: &'static str,
        table: Table,
        entries: Vec<&'a Entry>,
    },
    Keys {
        seq: u64,
        op: &'static str,
        table: Table,
        keys: Vec<&'a Key>,
    },
    Changes {
        seq: u64,
        changes: &'a [Change],
    },
}

#[cfg(test)]
impl<'a> JournalOut<'a> {
    fn new(seq: u64, batch: &'a [Change]) -> JournalOut<'a> {
        let Some(first) = batch.first() else {
            return JournalOut::Changes {
                seq,
                changes: batch,
            };
        };
        let (op, table) = (first.op(), first.table());
        if !batch.iter().all(|c| c.op() == op && c.table() == table) {
            return JournalOut::Changes {
                seq,
                changes: batch,
            };
        }
        // One op: every change is the same variant as the first.
        if let Change::Remove(_) = first {
            let keys = batch
                .iter()
                .filter_map(|c| match c {
                    Change::Remove(k) => Some(k),
                    _ => None,
                })
                .collect();
            JournalOut::Keys {
                seq,
                op,
                table,
                keys,
            }
        } else {
            let entries = batch
                .iter()
                .filter_map(|c| match c {
                    Change::Add(e) | Change::Update(e) => Some(e),
                    Change::Remove(_) => None,
                })
                .collect();
            JournalOut::Rows {
                seq,
                op,
                table,
                entries,
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JournalIn<'a> {
    seq: u64,
    #[serde(borrow, default)]
    changes: Option<Vec<&'a RawValue>>,
    #[serde(default)]
    op: Option<String>,
    #[serde(default)]
    table: Option<String>,
    #[serde(borrow, default)]
    entries: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    keys: Option<Vec<&'a RawValue>>,
}

impl JournalIn<'_> {
    /// How many changes the record holds.
    fn len(&self) -> usize {
        [&self.changes, &self.entries, &self.keys]
            .into_iter()
            .map(|v| v.as_ref().map_or(0, Vec::len))
            .sum()
    }

    /// The record's changes, decoded and validated as the protocol decodes
    /// a request of the same shape (a record without `op` is a `batch`).
    fn changes(self) -> Result<Vec<Change>, ProtocolError> {
        let op = self.op.as_deref().unwrap_or("batch");
        let present = [
            ("table", self.table.is_some()),
            ("entries", self.entries.is_some()),
            ("keys", self.keys.is_some()),
            ("changes", self.changes.is_some()),
        ];
        check_fields(op, &present)?;
        let table = parse_table(self.table.as_deref())?;
        let (_, changes) = batch_changes(BatchFields {
            op,
            table,
            entries: self.entries,
            keys: self.keys,
            changes: self.changes,
        })?;
        Ok(changes)
    }
}

/// A snapshot, decoded.
struct SnapshotParts {
    seq: u64,
    generations: [u64; 6],
    default: Decision,
    entries: Vec<Entry>,
}

/// Writes the policy as a binary snapshot payload ([`BINARY_SNAPSHOT`],
/// `seq` u64, the six generations u64, the default decision, then tiers,
/// logins, coupons, SP allocations and eligibility rules, each table as
/// its row count u64 and its rows: [`super::model::Rows`]), a megabyte at
/// a time.
fn write_binary_snapshot(w: &mut dyn Write, state: &PolicyState) -> io::Result<()> {
    use super::model::Rows;
    fn table<'a, R: Rows + 'a>(
        w: &mut dyn Write,
        buf: &mut Vec<u8>,
        rows: impl ExactSizeIterator<Item = &'a R>,
    ) -> io::Result<()> {
        buf.extend_from_slice(&(rows.len() as u64).to_le_bytes());
        for r in rows {
            r.put(buf);
            if buf.len() >= 1 << 20 {
                w.write_all(buf)?;
                buf.clear();
            }
        }
        Ok(())
    }
    let mut buf = Vec::with_capacity((1 << 20) + 4096);
    buf.extend_from_slice(BINARY_SNAPSHOT);
    buf.extend_from_slice(&state.seq().to_le_bytes());
    for g in state.generations() {
        buf.extend_from_slice(&g.to_le_bytes());
    }
    state.default_decision().put(&mut buf);
    table(w, &mut buf, state.tiers())?;
    table(w, &mut buf, state.logins())?;
    table(w, &mut buf, state.coupons())?;
    table(w, &mut buf, state.sp_allocations())?;
    table(w, &mut buf, state.eligibility_rules())?;
    w.write_all(&buf)
}

/// Decodes a binary snapshot payload, validating every row.
fn read_binary_snapshot(payload: &[u8]) -> Result<SnapshotParts, String> {
    use super::model::Rows;
    fn table<R: Rows>(
        r: &mut Reader,
        entries: &mut Vec<Entry>,
        wrap: fn(R) -> Entry,
    ) -> Result<(), String> {
        let n = r.u64()?;
        for i in 0..n {
            let at = r.offset();
            let row = R::take(r).map_err(|e| format!("row {i} at offset {at}: {e}"))?;
            entries.push(wrap(row));
        }
        Ok(())
    }
    let mut r = Reader::new(payload);
    r.bytes(BINARY_SNAPSHOT.len())?;
    let seq = r.u64()?;
    let mut generations = [0u64; 6];
    for g in &mut generations {
        *g = r.u64()?;
    }
    let default = super::model::take_default(&mut r)?;
    let mut entries = Vec::new();
    table(&mut r, &mut entries, Entry::Tier)?;
    table(&mut r, &mut entries, Entry::Login)?;
    table(&mut r, &mut entries, Entry::Coupon)?;
    table(&mut r, &mut entries, Entry::Sp)?;
    table(&mut r, &mut entries, Entry::Eligibility)?;
    if !r.is_empty() {
        return Err(format!(
            "bytes after the last table at offset {}",
            r.offset()
        ));
    }
    Ok(SnapshotParts {
        seq,
        generations,
        default,
        entries,
    })
}

/// The JSON snapshot (format 1), as earlier versions wrote it: loading
/// still reads it ([`SnapshotIn`]); tests write it.
#[cfg(test)]
#[derive(Serialize)]
struct SnapshotOut<'a> {
    format: u32,
    seq: u64,
    generations: [u64; 6],
    default: &'a Decision,
    tiers: Vec<&'a Tier>,
    logins: Vec<&'a LoginBinding>,
    coupons: Vec<&'a CouponBinding>,
    sps: Vec<&'a SpAllocation>,
    eligibility: Vec<&'a EligibilityRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotIn {
    format: u32,
    seq: u64,
    generations: [u64; 6],
    default: Decision,
    tiers: Vec<Tier>,
    logins: Vec<LoginBinding>,
    coupons: Vec<CouponBinding>,
    sps: Vec<SpAllocation>,
    eligibility: Vec<EligibilityRule>,
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

pub(crate) fn read_all(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match File::open(path) {
        Ok(mut f) => {
            let mut v = Vec::new();
            f.read_to_end(&mut v).map_err(io_err("read", path))?;
            Ok(Some(v))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("open", path)(e)),
    }
}

impl Store {
    /// Open (or create) the store in `dir` and load the policy it holds.
    pub fn open(
        dir: &Path,
        opts: StoreOptions,
    ) -> Result<(Store, PolicyState, LoadReport), StoreError> {
        fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        let tmp = dir.join(SNAPSHOT_TMP);
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &tmp)(e)),
        }
        let mut report = LoadReport::default();

        let snap_path = dir.join(SNAPSHOT);
        let (mut state, snapshot_bytes) = match read_all(&snap_path)? {
            None => (PolicyState::new(), 0),
            Some(data) => {
                let corrupt = |reason: String| StoreError::Corrupt {
                    path: snap_path.clone(),
                    offset: 0,
                    reason,
                };
                let (payload, len) = read_record(&data).map_err(|r| corrupt(r.to_string()))?;
                if len != data.len() {
                    return Err(corrupt(format!(
                        "{} bytes after the record",
                        data.len() - len
                    )));
                }
                let s = if payload.starts_with(BINARY_SNAPSHOT) {
                    read_binary_snapshot(payload)
                        .map_err(|e| corrupt(format!("undecodable snapshot: {e}")))?
                } else {
                    let s: SnapshotIn = serde_json::from_slice(payload)
                        .map_err(|e| corrupt(format!("undecodable snapshot: {e}")))?;
                    if s.format != SNAPSHOT_FORMAT {
                        return Err(corrupt(format!("unknown snapshot format {}", s.format)));
                    }
                    let entries = (s.tiers.into_iter().map(Entry::Tier))
                        .chain(s.logins.into_iter().map(Entry::Login))
                        .chain(s.coupons.into_iter().map(Entry::Coupon))
                        .chain(s.sps.into_iter().map(Entry::Sp))
                        .chain(s.eligibility.into_iter().map(Entry::Eligibility))
                        .collect();
                    SnapshotParts {
                        seq: s.seq,
                        generations: s.generations,
                        default: s.default,
                        entries,
                    }
                };
                let seq = s.seq;
                let state = PolicyState::from_parts(s.default, s.entries, s.seq, s.generations)
                    .map_err(|e| corrupt(format!("inconsistent snapshot: {e}")))?;
                report.snapshot_seq = seq;
                (state, data.len() as u64)
            }
        };

        let jpath = dir.join(JOURNAL);
        let existed = jpath.exists();
        let journal = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&jpath)
            .map_err(io_err("open", &jpath))?;
        if !existed {
            sync_dir(dir)?;
        }
        let data = read_all(&jpath)?.unwrap_or_default();
        let base = report.snapshot_seq;
        let mut off = 0usize;
        let mut records = 0u64;
        let mut replayed = false;
        // Damage with records of the journal's own after it, dropped
        // (`truncate_corrupt`): they must go from the file, whatever the
        // damage looks like, or they would lie among its old bytes with
        // sequence numbers a later load would take for its own.
        let mut dropping = false;
        while off < data.len() {
            let (payload, len) = match read_record(&data[off..]) {
                Ok(r) => r,
                Err(why) => {
                    let current =
                        intact_records(&data[off + 1..]).any(|(_, p)| own_record(p, base));
                    if current && !opts.truncate_corrupt {
                        return Err(StoreError::Corrupt {
                            path: jpath,
                            offset: off as u64,
                            reason: format!(
                                "{why}, and intact records follow (set truncate_corrupt to drop them)"
                            ),
                        });
                    }
                    dropping = current;
                    break;
                }
            };
            // Older than the snapshot: what a reused journal held before the
            // last compaction, which ends the journal once a record of its
            // own has been read, or the records a crash left between a
            // snapshot and the journal's reset (skipped).
            if record_seq(payload).is_some_and(|s| s < base) {
                if replayed {
                    break;
                }
                report.skipped_records += 1;
                records += 1;
                off += len;
                continue;
            }
            let corrupt = |reason: String| StoreError::Corrupt {
                path: jpath.clone(),
                offset: off as u64,
                reason,
            };
            // A binary record; or, as earlier versions wrote them, a JSON
            // one in the request shape in one pass (as the request was
            // decoded), any other through `JournalIn`.
            let (rec_seq, n, rec) = if payload.starts_with(BINARY_BATCH) {
                let (seq, changes) = read_batch_record(payload)
                    .map_err(|e| corrupt(format!("undecodable journal record: {e}")))?;
                (seq, changes.len() as u64, Ok(changes))
            } else {
                match fast_journal_record(payload) {
                    Some((seq, changes)) => (seq, changes.len() as u64, Ok(changes)),
                    None => {
                        let rec: JournalIn<'_> = serde_json::from_slice(payload)
                            .map_err(|e| corrupt(format!("undecodable journal record: {e}")))?;
                        (rec.seq, rec.len() as u64, Err(rec))
                    }
                }
            };
            let Some(rec_end) = rec_seq.checked_add(n) else {
                return Err(corrupt(format!(
                    "record's sequence number {rec_seq} overflows"
                )));
            };
            if rec_end <= state.seq() {
                report.skipped_records += 1;
            } else if rec_seq == state.seq() {
                replayed = true;
                let changes = match rec {
                    Ok(changes) => changes,
                    Err(rec) => rec.changes().map_err(|e| {
                        let at = e.index.map(|i| format!("change {i}: ")).unwrap_or_default();
                        corrupt(format!("{at}`{}`: {}", e.field, e.reason))
                    })?,
                };
                state
                    .apply(&changes)
                    .map_err(|e| corrupt(format!("record does not apply: {e}")))?;
                report.replayed_records += 1;
            } else {
                return Err(corrupt(format!(
                    "record covers sequence numbers {}..{} but the state is at {}",
                    rec_seq,
                    rec_end,
                    state.seq()
                )));
            }
            records += 1;
            off += len;
        }
        // What follows the records: zeros (preallocated), a header's worth
        // of zeros or an intact record older than the snapshot (a reused
        // journal's end, kept), or a torn or damaged record (cut off, up to
        // the next intact older record, if any, or to the last non-zero
        // byte).
        let rest = &data[off..];
        let mut allocated = data.len() as u64;
        let mut stale_end = (off + nonzero_len(rest)) as u64;
        let clean_end = !dropping
            && (rest.len() >= HEADER && rest[..HEADER] == [0; HEADER]
                || read_record(rest).is_ok()
                || nonzero_len(rest) == 0);
        if !clean_end {
            let older = intact_records(rest)
                .find(|(_, p)| record_seq(p).is_some_and(|s| s < base))
                .map(|(at, _)| at)
                .filter(|_| !dropping);
            let torn = older.unwrap_or(nonzero_len(rest));
            report.truncated_bytes = nonzero_len(&rest[..torn]) as u64;
            journal
                .set_len(off as u64)
                .and_then(|()| journal.sync_all())
                .map_err(io_err("truncate the torn tail of", &jpath))?;
            allocated = off as u64;
            stale_end = off as u64;
        }
        report.seq = state.seq();
        let store = Store {
            dir: dir.to_path_buf(),
            journal,
            journal_bytes: off as u64,
            journal_allocated: allocated,
            stale_end,
            prealloc_failed: false,
            journal_records: records,
            snapshot_seq: report.snapshot_seq,
            snapshot_bytes,
            compactions: 0,
            retry_compaction_at: None,
            last_compaction_error: None,
            poisoned: None,
            scratch: Vec::new(),
            opts,
        };
        Ok((store, state, report))
    }

    /// Validate `batch` against `state`, make it durable, then apply it.
    /// On any error the state is unchanged and nothing was acknowledged.
    pub fn commit(
        &mut self,
        state: &mut PolicyState,
        batch: &[Change],
    ) -> Result<Applied, CommitError> {
        self.commit_touched(state, batch).map(|(a, _)| a)
    }

    /// [`Store::commit`], also saying what the batch touched in the fast
    /// tables ([`crate::policy::Staged::touched`]).
    pub fn commit_touched(
        &mut self,
        state: &mut PolicyState,
        batch: &[Change],
    ) -> Result<(Applied, Touched), CommitError> {
        if let Some(p) = &self.poisoned {
            return Err(StoreError::Poisoned(p.clone()).into());
        }
        let seq = state.seq();
        let staged = state.stage(batch)?;
        if !batch.is_empty() {
            self.append(seq, batch)?; // on error `staged` drops: rolled back
        }
        let touched = staged.touched();
        let applied = staged.commit();
        if self.compaction_due() {
            if let Err(e) = self.compact(state) {
                self.last_compaction_error = Some(e.to_string());
                self.retry_compaction_at =
                    Some(self.journal_records + self.opts.compact_after_records);
            }
        }
        Ok((applied, touched))
    }

    fn append(&mut self, seq: u64, batch: &[Change]) -> Result<(), StoreError> {
        let mut rec = std::mem::take(&mut self.scratch);
        let encoded = batch_record(&mut rec, seq, batch);
        let rec_len = rec.len();
        rec.extend_from_slice(&[0; HEADER]);
        let r = encoded.and_then(|()| self.write_journal(&rec, rec_len));
        // Kept for the next batch unless an unusually large one grew it
        // (a big expiry sweep, a refused oversized batch): not held for
        // the life of the process.
        if rec.capacity() <= SCRATCH_KEPT {
            self.scratch = rec;
        }
        r
    }

    /// Zero-fills journal space, a chunk at a time, so that `need` more
    /// bytes fit (nothing when they already do, or when preallocation is
    /// off); the next `fsync` makes it durable.
    ///
    /// A failed fill (a full disk, a file-size limit) is undone and turns
    /// preallocation off until the next compaction empties the journal:
    /// the record itself may still fit, and is then appended as before
    /// preallocation, rather than every commit trying (and failing) to
    /// write a whole chunk of zeros first.
    fn preallocate(&mut self, need: u64) {
        use std::os::unix::fs::FileExt;
        let end = self.journal_bytes + need;
        let chunk = self.opts.journal_prealloc_bytes;
        if end <= self.journal_allocated || chunk == 0 || self.prealloc_failed {
            return;
        }
        let (before, target) = (self.journal_allocated, end.div_ceil(chunk) * chunk);
        let zeros = vec![0u8; (1 << 20).min(target - before) as usize];
        let mut at = before;
        while at < target {
            let n = zeros.len().min((target - at) as usize);
            if let Err(e) = self.journal.write_all_at(&zeros[..n], at) {
                log::warn!(
                    "policy journal: preallocating {} bytes failed ({e}); appending until the next compaction",
                    target - before
                );
                self.prealloc_failed = true;
                // Whatever was zero-filled may stay if it cannot be cut.
                if self.journal.set_len(before).is_err() {
                    self.journal_allocated = at;
                }
                return;
            }
            at += n as u64;
        }
        self.journal_allocated = target;
    }

    /// Writes the encoded record at the start of `buf` (`rec_len` bytes;
    /// `buf` has [`HEADER`] zero bytes more) at the journal's end and syncs
    /// it. Where stale bytes of a reused journal follow, the zeros go with
    /// it: a header of zeros marks the journal's end.
    fn write_journal(&mut self, buf: &[u8], rec_len: usize) -> Result<(), StoreError> {
        use std::os::unix::fs::FileExt;
        let path = self.dir.join(JOURNAL);
        let rec_end = self.journal_bytes + rec_len as u64;
        let marker = self.stale_end.saturating_sub(rec_end).min(HEADER as u64) as usize;
        let rec = &buf[..rec_len + marker];
        self.preallocate(rec_len as u64);
        if let Err(e) = self.journal.write_all_at(rec, self.journal_bytes) {
            // Cut off whatever part was written (and the space after it),
            // so that the next record does not follow garbage.
            match self.journal.set_len(self.journal_bytes) {
                Ok(()) => {
                    self.journal_allocated = self.journal_bytes;
                    self.stale_end = self.journal_bytes;
                }
                Err(t) => {
                    self.poisoned = Some(format!("write failed ({e}), then truncate failed ({t})"))
                }
            }
            return Err(io_err("append to", &path)(e));
        }
        if let Err(e) = self.journal.sync_data() {
            self.poisoned = Some(format!("fsync failed: {e}"));
            let _ = self.journal.set_len(self.journal_bytes);
            self.journal_allocated = self.journal_bytes;
            self.stale_end = self.journal_bytes;
            return Err(io_err("fsync", &path)(e));
        }
        self.journal_bytes = rec_end;
        // Without preallocation the record extended the file.
        self.journal_allocated = self.journal_allocated.max(self.journal_bytes);
        self.journal_records += 1;
        Ok(())
    }

    /// The journal's size that calls for a compaction.
    fn journal_limit(&self) -> u64 {
        (self.opts.compact_after_bytes).max(JOURNAL_PER_SNAPSHOT * self.snapshot_bytes)
    }

    fn compaction_due(&self) -> bool {
        if let Some(at) = self.retry_compaction_at {
            return self.journal_records >= at;
        }
        self.journal_records >= self.opts.compact_after_records
            || self.journal_bytes > self.journal_limit()
    }

    /// Write a snapshot of `state` (which must be the state this store has
    /// journaled) and empty the journal.
    pub fn compact(&mut self, state: &PolicyState) -> Result<(), StoreError> {
        if let Some(p) = &self.poisoned {
            return Err(StoreError::Poisoned(p.clone()));
        }
        let tmp = self.dir.join(SNAPSHOT_TMP);
        let snap = self.dir.join(SNAPSHOT);
        let started = std::time::Instant::now();
        let f = File::create(&tmp).map_err(io_err("create", &tmp))?;
        let written = write_record_streamed(&f, |w| write_binary_snapshot(w, state))
            .and_then(|n| f.sync_all().map(|()| n));
        drop(f);
        let rec_len = match written {
            Ok(n) => n,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(match e.downcast::<StoreError>() {
                    Ok(too_large) => too_large,
                    Err(e) => io_err("write", &tmp)(e),
                });
            }
        };
        fs::rename(&tmp, &snap).map_err(io_err("rename", &tmp))?;
        sync_dir(&self.dir)?;
        self.snapshot_seq = state.seq();
        self.snapshot_bytes = rec_len as u64;
        self.compactions += 1;
        self.retry_compaction_at = None;
        self.last_compaction_error = None;
        // The snapshot holds everything now; a crash before this point
        // leaves journal records that loading skips by sequence number.
        self.reset_journal()?;
        log::info!(
            "policy store compacted: snapshot of seq {} ({} bytes) in {:.0} ms",
            self.snapshot_seq,
            self.snapshot_bytes,
            started.elapsed().as_secs_f64() * 1e3
        );
        Ok(())
    }

    /// Empties the journal after a snapshot: the file is kept and written
    /// over from its start (see *Reuse*), with a header of zeros there now
    /// so that it reads as empty, unless it has grown well past what one
    /// journal between compactions needs (then it is cut to nothing).
    fn reset_journal(&mut self) -> Result<(), StoreError> {
        use std::os::unix::fs::FileExt;
        let jpath = self.dir.join(JOURNAL);
        let keep = 2 * self.journal_limit() + self.opts.journal_prealloc_bytes;
        self.stale_end = self.stale_end.max(self.journal_bytes);
        if self.journal_allocated > keep || self.prealloc_failed {
            if let Err(e) = self
                .journal
                .set_len(0)
                .and_then(|()| self.journal.sync_all())
            {
                self.poisoned = Some(format!("emptying the journal failed: {e}"));
                return Err(io_err("truncate", &jpath)(e));
            }
            self.journal_allocated = 0;
            self.stale_end = 0;
        } else if self.stale_end > 0 {
            // Made durable by the next record's fsync. Without it (a crash
            // first, or this write failing) loading finds the old records,
            // all older than the snapshot, and skips them: harmless.
            let n = (HEADER as u64).min(self.stale_end) as usize;
            if let Err(e) = self.journal.write_all_at(&[0; HEADER][..n], 0) {
                log::warn!(
                    "policy journal: marking it empty failed ({e}); loading skips its old records"
                );
            }
        }
        self.journal_bytes = 0;
        self.prealloc_failed = false;
        self.journal_records = 0;
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            journal_bytes: self.journal_bytes,
            journal_records: self.journal_records,
            snapshot_seq: self.snapshot_seq,
            snapshot_bytes: self.snapshot_bytes,
            compactions: self.compactions,
            last_compaction_error: self.last_compaction_error.clone(),
            poisoned: self.poisoned.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::policy::model::{Key, Port, Prefix, Table};

    fn coupon(i: usize) -> Change {
        Change::Add(
            Entry::from_json(
                Table::Coupon,
                &format!(
                    r#"{{"id":"c{i}","subscriber":"10.{}.{}.{}","dst":"203.0.113.0/24","port":443,"decision":{{"level":"voice","dscp":"level","rate":{{"committed_bps":1000000,"peak_bps":2000000}}}},"expires":1767225600}}"#,
                    (i >> 16) & 255,
                    (i >> 8) & 255,
                    i & 255
                ),
            )
            .unwrap(),
        )
    }

    fn tier(name: &str, level: u8) -> Change {
        Change::Add(
            Entry::from_json(
                Table::Tier,
                &format!(r#"{{"name":"{name}","decision":{{"level":{level}}}}}"#),
            )
            .unwrap(),
        )
    }

    fn login(i: usize, tier: &str) -> Change {
        Change::Add(
            Entry::from_json(
                Table::Login,
                &format!(r#"{{"subscriber":"2001:db8::{i:x}","login":"user{i}","tier":"{tier}"}}"#),
            )
            .unwrap(),
        )
    }

    /// A few batches of every kind of change; returns the state after each.
    fn batches() -> Vec<Vec<Change>> {
        vec![
            vec![tier("gold", 3), tier("silver", 4)],
            (0..5).map(coupon).chain([login(1, "gold")]).collect(),
            vec![
                Change::Remove(Key::Coupon("c2".into())),
                login(2, "silver"),
                Change::Update(
                    Entry::from_json(Table::Default, r#"{"level":"bulk","dscp":"level"}"#).unwrap(),
                ),
            ],
            vec![
                Change::Add(
                    Entry::from_json(
                        Table::Sp,
                        r#"{"id":"sp","provider":"acme","prefix":"198.51.100.0/24","decision":{"level":2}}"#,
                    )
                    .unwrap(),
                ),
                Change::Add(Entry::from_json(Table::Eligibility, r#"{"dst":"0.0.0.0/0"}"#).unwrap()),
            ],
        ]
    }

    fn open(dir: &Path) -> (Store, PolicyState, LoadReport) {
        Store::open(dir, StoreOptions::default()).unwrap()
    }

    /// Commits `batches()`, returning the expected state after each and the
    /// journal length after each.
    fn write_all(dir: &Path) -> (Vec<PolicyState>, Vec<u64>) {
        let (mut store, mut state, _) = open(dir);
        let mut states = vec![state.clone()];
        let mut lens = vec![0];
        for b in batches() {
            store.commit(&mut state, &b).unwrap();
            states.push(state.clone());
            lens.push(store.stats().journal_bytes);
        }
        (states, lens)
    }

    #[test]
    fn acknowledged_batches_survive_without_a_clean_close() {
        let dir = tempfile::tempdir().unwrap();
        let (states, _) = write_all(dir.path());
        // `write_all` dropped the store without any close: only what
        // commit() fsynced is there.
        let (_, loaded, report) = open(dir.path());
        assert_eq!(&loaded, states.last().unwrap());
        assert_eq!(report.replayed_records, 4);
        assert_eq!(report.truncated_bytes, 0);
        assert_eq!(report.seq, loaded.seq());
    }

    #[test]
    fn batches_are_journaled_in_binary_and_older_json_records_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, mut state, _) = open(dir.path());
        let adds: Vec<Change> = (0..3).map(coupon).collect();
        let update = vec![Change::Update(
            Entry::from_json(
                Table::Coupon,
                r#"{"id":"c1","subscriber":"10.0.0.1","dst":"203.0.113.0/24","port":443,"decision":{"level":"bulk"}}"#,
            )
            .unwrap(),
        )];
        let removes = vec![
            Change::Remove(Key::Coupon("c0".into())),
            Change::Remove(Key::Coupon("c2".into())),
        ];
        let mixed = vec![
            tier("gold", 1),
            Change::Update(
                Entry::from_json(Table::Default, r#"{"level":"standard","dscp":"level"}"#).unwrap(),
            ),
            Change::Remove(Key::Eligibility(
                Prefix::new("198.51.100.0/24".parse().unwrap()).unwrap(),
                Port::new(443),
            )),
            Change::Remove(Key::Login("10.9.9.9".parse().unwrap())),
        ];
        for b in [&adds, &update, &removes] {
            store.commit(&mut state, b).unwrap();
        }
        // Every record is binary and decodes to its batch.
        let data = fs::read(dir.path().join(JOURNAL)).unwrap();
        let (mut off, end, mut got) = (0, nonzero_len(&data), Vec::new());
        while off < end {
            let (p, n) = read_record(&data[off..]).unwrap();
            assert!(p.starts_with(BINARY_BATCH));
            got.push(read_batch_record(p).unwrap());
            off += n;
        }
        assert_eq!(
            got,
            vec![(0, adds.clone()), (3, update.clone()), (4, removes.clone())]
        );
        // Every kind of change round-trips (this batch would not apply: no
        // such rule or login).
        let mut buf = Vec::new();
        batch_record(&mut buf, 9, &mixed).unwrap();
        assert_eq!(read_batch_record(&buf[HEADER..]), Ok((9, mixed)));
        let mut end = store.stats().journal_bytes;
        drop(store);
        let (_, loaded, report) = open(dir.path());
        assert_eq!(loaded, state);
        assert_eq!(report.replayed_records, 3);
        // Records as earlier versions wrote them, where the store would
        // write them: at the end of the records, in the preallocated space.
        let j = OpenOptions::new()
            .write(true)
            .open(dir.path().join(JOURNAL))
            .unwrap();
        let mut write = |rec: &[u8]| {
            use std::os::unix::fs::FileExt;
            j.write_all_at(rec, end).unwrap();
            end += rec.len() as u64;
        };
        let seq = state.seq();
        // The `changes` shape, the request shape encoded, and a request
        // line with the sequence number spliced in.
        write(
            &record(&JournalOut::Changes {
                seq,
                changes: &[coupon(7)],
            })
            .unwrap(),
        );
        write(&record(&JournalOut::new(seq + 1, &[coupon(8)])).unwrap());
        let Change::Add(c9) = coupon(9) else {
            unreachable!()
        };
        let line = format!(
            r#"{{"op":"add", "table":"coupon","entries":[{}]}}"#,
            serde_json::to_string(&c9).unwrap()
        );
        let mut rec = Vec::new();
        journal_request_record(&mut rec, seq + 2, request_fields(&line).unwrap()).unwrap();
        write(&rec);
        let (_, loaded, report) = open(dir.path());
        assert_eq!(report.replayed_records, 6);
        for c in ["c7", "c8", "c9"] {
            assert!(loaded.get(&Key::Coupon(c.into())).is_some(), "{c}");
        }
        // A record mixing the shapes is refused, naming why.
        let bad = record(&serde_json::json!({
            "seq": loaded.seq(), "op": "remove", "table": "coupon", "entries": [{"id": "c7"}]
        }))
        .unwrap();
        write(&bad);
        match Store::open(dir.path(), StoreOptions::default()) {
            Err(StoreError::Corrupt { reason, .. }) => {
                assert!(reason.contains("remove"), "{reason}")
            }
            other => panic!("{:?}", other.map(|(_, _, r)| r)),
        }
    }

    #[test]
    fn a_refused_batch_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, mut state, _) = open(dir.path());
        store.commit(&mut state, &[tier("gold", 1)]).unwrap();
        let before = (state.clone(), store.stats());
        let e = store
            .commit(&mut state, &[tier("silver", 1), tier("gold", 2)])
            .unwrap_err();
        assert!(
            matches!(e, CommitError::Rejected(ref b) if b.index == 1),
            "{e}"
        );
        assert_eq!((state.clone(), store.stats()), before);
        drop(store);
        assert_eq!(open(dir.path()).1, state);
    }

    fn journal(dir: &Path) -> PathBuf {
        dir.join(JOURNAL)
    }

    #[test]
    fn a_torn_or_damaged_last_record_loads_exactly_the_batches_before_it() {
        let src = tempfile::tempdir().unwrap();
        let (states, lens) = write_all(src.path());
        let mut full = fs::read(journal(src.path())).unwrap();
        let n = states.len() - 1;
        let (start, end) = (lens[n - 1] as usize, lens[n] as usize);
        // The records, then the preallocated zeros.
        assert_eq!(nonzero_len(&full), end);
        assert!(full.len() as u64 >= StoreOptions::default().journal_prealloc_bytes);
        full.truncate(end);
        for k in start..end {
            // Torn: the file ends inside the last record.
            let dir = tempfile::tempdir().unwrap();
            fs::write(journal(dir.path()), &full[..k]).unwrap();
            let (mut store, mut state, report) = open(dir.path());
            assert_eq!(state, states[n - 1], "cut at {k}");
            // Counted up to the cut's last non-zero byte: zeros after it
            // look like preallocated space.
            assert_eq!(
                report.truncated_bytes as usize,
                nonzero_len(&full[start..k])
            );
            assert_eq!(
                fs::metadata(journal(dir.path())).unwrap().len() as usize,
                start
            );
            if k == start + 1 {
                // The journal goes on cleanly after the cut.
                store.commit(&mut state, &batches()[n - 1]).unwrap();
                drop(store);
                assert_eq!(open(dir.path()).1, states[n]);
            }

            // Damaged: one byte of the last record flipped.
            let dir = tempfile::tempdir().unwrap();
            let mut bad = full.clone();
            bad[k] ^= 0x5a;
            fs::write(journal(dir.path()), &bad).unwrap();
            let (_, state, report) = open(dir.path());
            assert_eq!(state, states[n - 1], "flip at {k}");
            assert_eq!(report.truncated_bytes as usize, end - start);
        }
        // Garbage (zeros, as a crash can leave) after the last record.
        let dir = tempfile::tempdir().unwrap();
        let mut tail = full.clone();
        tail.extend_from_slice(&[0; 100]);
        fs::write(journal(dir.path()), &tail).unwrap();
        assert_eq!(open(dir.path()).1, states[n]);
    }

    #[test]
    fn the_journal_is_written_into_preallocated_zeros() {
        // 256 and 1000: records start inside the zeros and run past them.
        for chunk in [0, 256, 1000, 4096, 32 << 20] {
            let opts = StoreOptions {
                journal_prealloc_bytes: chunk,
                ..StoreOptions::default()
            };
            let dir = tempfile::tempdir().unwrap();
            let mut expected = Vec::new();
            // Reopened between batches: each store goes on at the end of
            // the records, not after the zeros.
            for b in batches() {
                let (mut store, mut state, report) = Store::open(dir.path(), opts).unwrap();
                assert_eq!(report.truncated_bytes, 0, "chunk {chunk}");
                store.commit(&mut state, &b).unwrap();
                let end = store.stats().journal_bytes;
                let file = fs::read(journal(dir.path())).unwrap();
                assert_eq!(nonzero_len(&file) as u64, end, "chunk {chunk}");
                let want = if chunk == 0 {
                    end
                } else {
                    end.div_ceil(chunk) * chunk
                };
                assert_eq!(file.len() as u64, want, "chunk {chunk}");
                expected.push(state);
            }
            let (_, loaded, report) = Store::open(dir.path(), opts).unwrap();
            assert_eq!(&loaded, expected.last().unwrap());
            assert_eq!(report.replayed_records as usize, batches().len());
        }
    }

    #[test]
    fn damage_before_intact_records_is_refused_not_dropped() {
        let src = tempfile::tempdir().unwrap();
        let (states, lens) = write_all(src.path());
        let mut bad = fs::read(journal(src.path())).unwrap();
        bad[lens[1] as usize + 20] ^= 1; // payload of the 2nd record
        let dir = tempfile::tempdir().unwrap();
        fs::write(journal(dir.path()), &bad).unwrap();
        match Store::open(dir.path(), StoreOptions::default()) {
            Err(StoreError::Corrupt { offset, reason, .. }) => {
                assert_eq!(offset, lens[1]);
                assert!(reason.contains("intact records follow"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let opts = StoreOptions {
            truncate_corrupt: true,
            ..StoreOptions::default()
        };
        let (_, state, report) = Store::open(dir.path(), opts).unwrap();
        assert_eq!(state, states[1]);
        // Up to the end of the records: the zeros after them are not
        // counted.
        assert_eq!(report.truncated_bytes, lens[lens.len() - 1] - lens[1]);
    }

    #[test]
    fn compaction_round_trips_through_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            compact_after_records: 3,
            ..StoreOptions::default()
        };
        let (mut store, mut state, _) = Store::open(dir.path(), opts).unwrap();
        let mut n = 0;
        for round in 0..3 {
            for b in batches() {
                let b: Vec<Change> = b
                    .into_iter()
                    .filter(|c| round == 0 || !matches!(c, Change::Add(Entry::Tier(_))))
                    .collect();
                if store.commit(&mut state, &b).is_ok() {
                    n += 1;
                }
            }
            store.commit(&mut state, &[coupon(100 + round)]).unwrap();
        }
        let st = store.stats();
        assert!(st.compactions >= 2, "{st:?}");
        assert!(st.journal_records < 3, "{st:?}");
        assert_eq!(st.snapshot_seq, {
            let (_, s, r) = Store::open(dir.path(), opts).unwrap();
            assert_eq!(s, state);
            assert_eq!(r.replayed_records, st.journal_records);
            r.snapshot_seq
        });
        assert!(n > 4);
        // An explicit compaction leaves an empty journal and the same state.
        store.compact(&state).unwrap();
        drop(store);
        let (store, s, r) = Store::open(dir.path(), opts).unwrap();
        assert_eq!((s, r.replayed_records), (state, 0));
        assert_eq!(store.stats().journal_bytes, 0);
        assert!(!dir.path().join(SNAPSHOT_TMP).exists());
    }

    #[test]
    fn a_crash_between_snapshot_and_journal_truncation_skips_what_the_snapshot_holds() {
        let dir = tempfile::tempdir().unwrap();
        let (states, _) = write_all(dir.path());
        let old_journal = fs::read(journal(dir.path())).unwrap();
        let (mut store, state, _) = open(dir.path());
        store.compact(&state).unwrap();
        drop(store);
        fs::write(journal(dir.path()), &old_journal).unwrap();
        let (mut store, mut state, r) = open(dir.path());
        assert_eq!(&state, states.last().unwrap());
        assert_eq!((r.skipped_records, r.replayed_records), (4, 0));
        // New batches after the stale records still replay.
        store.commit(&mut state, &[coupon(77)]).unwrap();
        drop(store);
        let (_, s, r) = open(dir.path());
        assert_eq!((s, r.replayed_records), (state, 1));
    }

    #[test]
    fn a_damaged_snapshot_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_all(dir.path());
        let (mut store, state, _) = open(dir.path());
        store.compact(&state).unwrap();
        drop(store);
        let p = dir.path().join(SNAPSHOT);
        let mut snap = fs::read(&p).unwrap();
        let mid = snap.len() / 2;
        snap[mid] ^= 1;
        fs::write(&p, &snap).unwrap();
        assert!(matches!(
            Store::open(dir.path(), StoreOptions::default()),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn ten_thousand_bindings_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, mut state, _) = open(dir.path());
        let batch: Vec<Change> = std::iter::once(tier("gold", 3))
            .chain((0..10_000).map(coupon))
            .chain((0..10_000).map(|i| login(i, "gold")))
            .collect();
        let a = store.commit(&mut state, &batch).unwrap();
        assert_eq!(a.changes, 20_001);
        drop(store);
        let (mut store, loaded, _) = open(dir.path());
        assert_eq!(loaded, state);
        assert_eq!(loaded.len(Table::Coupon), 10_000);
        store.compact(&loaded).unwrap();
        drop(store);
        assert_eq!(open(dir.path()).1, state);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Whatever the journal holds, loading returns a state or an error,
        /// never a panic; garbage after intact records is cut off.
        #[test]
        fn arbitrary_journal_bytes_never_panic(
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            magic_at in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let src = tempfile::tempdir().unwrap();
            let (states, lens) = write_all(src.path());
            let mut bytes = fs::read(journal(src.path())).unwrap();
            bytes.truncate(lens[lens.len() - 1] as usize);
            let mut garbage = garbage;
            if garbage.len() >= 4 {
                let i = magic_at.index(garbage.len() - 3);
                garbage[i..i + 4].copy_from_slice(&MAGIC);
            }
            bytes.extend_from_slice(&garbage);
            let dir = tempfile::tempdir().unwrap();
            fs::write(journal(dir.path()), &bytes).unwrap();
            // Garbage after the last intact record is a torn tail.
            let (_, state, report) = Store::open(dir.path(), StoreOptions::default()).unwrap();
            proptest::prop_assert_eq!(&state, states.last().unwrap());
            // Unless it starts with a header's worth of zeros: the end
            // marker of a reused journal, with its old bytes after it.
            let torn = if garbage.len() >= HEADER && garbage[..HEADER] == [0; HEADER] {
                0
            } else {
                nonzero_len(&garbage)
            };
            proptest::prop_assert_eq!(report.truncated_bytes as usize, torn);
            fs::write(journal(dir.path()), &garbage).unwrap();
            let _ = Store::open(dir.path(), StoreOptions::default());
        }
    }

    /// A batch of coupon changes over ids `0..24` drawn from `ops`
    /// (id, action), valid against `present`, which it updates.
    fn coupon_batch(
        ops: &[(usize, u8)],
        present: &mut std::collections::BTreeSet<usize>,
    ) -> Vec<Change> {
        let mut batch = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for &(id, action) in ops {
            if !seen.insert(id) {
                continue;
            }
            let Change::Add(row) = coupon(id) else {
                unreachable!()
            };
            batch.push(if !present.contains(&id) {
                present.insert(id);
                Change::Add(row)
            } else if action % 3 == 0 {
                present.remove(&id);
                Change::Remove(row.key())
            } else {
                Change::Update(row)
            });
        }
        batch
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// The journal file is reused after each compaction, its old
        /// records left behind the new ones. Whatever point a crash cuts a
        /// record's write at (the new bytes up to the cut, the file's old
        /// bytes after it), or whatever sectors of it a disk kept, loading
        /// gives the state before that batch, or after it once the whole
        /// record is down, and never an error.
        #[test]
        fn a_reused_journal_loads_its_own_records_whatever_a_torn_write_leaves(
            every in 1u64..5,
            chunk in proptest::sample::select(vec![0u64, 256, 4096]),
            batches in proptest::collection::vec(
                proptest::collection::vec((0usize..24, proptest::prelude::any::<u8>()), 1..8),
                4..24,
            ),
            cuts in proptest::collection::vec(proptest::prelude::any::<proptest::sample::Index>(), 24),
            masks in proptest::collection::vec(proptest::prelude::any::<u64>(), 24),
        ) {
            let opts = StoreOptions {
                compact_after_records: every,
                journal_prealloc_bytes: chunk,
                ..StoreOptions::default()
            };
            let dir = tempfile::tempdir().unwrap();
            let (mut store, mut state, _) = Store::open(dir.path(), opts).unwrap();
            let mut present = std::collections::BTreeSet::new();
            let mut sizes = Vec::new();
            for (k, ops) in batches.iter().enumerate() {
                let batch = coupon_batch(ops, &mut present);
                let before_state = state.clone();
                let before = fs::read(journal(dir.path())).unwrap();
                let (start, compactions) = (store.stats().journal_bytes, store.stats().compactions);
                store.commit(&mut state, &batch).unwrap();
                sizes.push(fs::metadata(journal(dir.path())).unwrap().len());
                if store.stats().compactions != compactions {
                    continue; // the record is already in a snapshot
                }
                let after = fs::read(journal(dir.path())).unwrap();
                let end = store.stats().journal_bytes;
                // The write as far as the cut, over the old bytes.
                let cut = start as usize + cuts[k].index((end - start) as usize + 1);
                let mut torn = before.clone();
                if torn.len() < cut {
                    torn.resize(cut, 0);
                }
                torn[start as usize..cut].copy_from_slice(&after[start as usize..cut]);
                let crash = tempfile::tempdir().unwrap();
                fs::write(journal(crash.path()), &torn).unwrap();
                if let Ok(snap) = fs::read(dir.path().join(SNAPSHOT)) {
                    fs::write(crash.path().join(SNAPSHOT), snap).unwrap();
                }
                let (_, loaded, _) = Store::open(crash.path(), opts).unwrap();
                // Complete once the bytes up to its end are the record's
                // (the old bytes after the cut can be the same as the new:
                // the same rows, written at the same place before).
                let whole = torn.get(start as usize..end as usize) == Some(&after[start as usize..end as usize]);
                let want = if whole { &state } else { &before_state };
                proptest::prop_assert_eq!(&loaded, want, "batch {} cut at {} of {}..{}", k, cut, start, end);

                // A disk may also keep any subset of the 512-byte sectors
                // the write changed, not a prefix, and either length: the
                // state before or after, never an error, and the store
                // goes on from there.
                let len = before.len().max(after.len());
                let (mut old, mut new) = (before.clone(), after.clone());
                old.resize(len, 0);
                new.resize(len, 0);
                let mut sectors = masks[k];
                let mut image = old.clone();
                for at in (0..len).step_by(512) {
                    let r = at..(at + 512).min(len);
                    if new[r.clone()] != old[r.clone()] {
                        if sectors & 1 == 1 {
                            image[r.clone()].copy_from_slice(&new[r]);
                        }
                        sectors = sectors.rotate_right(1);
                    }
                }
                image.truncate(if masks[k] >> 63 == 1 { after.len() } else { before.len() });
                fs::write(journal(crash.path()), &image).unwrap();
                let (mut again, mut loaded, _) = Store::open(crash.path(), opts).unwrap();
                proptest::prop_assert!(loaded == before_state || loaded == state, "batch {} sectors {:x}", k, masks[k]);
                again.commit(&mut loaded, &[coupon(1000 + k)]).unwrap();
                let reloaded = loaded.clone();
                drop(again);
                proptest::prop_assert_eq!(Store::open(crash.path(), opts).unwrap().1, reloaded);
            }
            drop(store);
            let (_, loaded, _) = Store::open(dir.path(), opts).unwrap();
            proptest::prop_assert_eq!(&loaded, &state);
            // Reused, not regrown: the file never grows past twice its
            // largest size within the first few compactions' worth.
            if every == 1 && chunk == 0 {
                let first = sizes.iter().take(4).max().copied().unwrap_or(0);
                proptest::prop_assert!(sizes.iter().all(|&n| n <= 2 * first + 4096), "{sizes:?}");
            }
        }
    }

    #[test]
    fn damage_in_a_reused_journal_before_its_own_records_is_still_refused() {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions::default();
        let (mut store, mut state, _) = Store::open(dir.path(), opts).unwrap();
        for i in 0..6 {
            store.commit(&mut state, &[coupon(i)]).unwrap();
        }
        store.compact(&state).unwrap();
        let mut lens = vec![0];
        for i in 6..9 {
            store.commit(&mut state, &[coupon(i)]).unwrap();
            lens.push(store.stats().journal_bytes);
        }
        drop(store);
        let mut bytes = fs::read(journal(dir.path())).unwrap();
        // Old records lie after the new ones.
        assert!(bytes.len() as u64 > lens[3] + HEADER as u64);
        assert!(intact_records(&bytes[lens[3] as usize..]).count() > 0);
        // As written, it loads (the old records are not replayed).
        let (_, loaded, report) = Store::open(dir.path(), opts).unwrap();
        assert_eq!(
            (&loaded, report.replayed_records, report.truncated_bytes),
            (&state, 3, 0)
        );
        // The second new record damaged: the third, intact and newer than
        // the snapshot, makes it damage in the middle.
        bytes[lens[1] as usize + 20] ^= 1;
        fs::write(journal(dir.path()), &bytes).unwrap();
        match Store::open(dir.path(), opts) {
            Err(StoreError::Corrupt { offset, .. }) => assert_eq!(offset, lens[1]),
            other => panic!("{other:?}"),
        }
    }

    /// Every kind of row, with and without its options, through a binary
    /// snapshot and back; and a JSON snapshot (format 1, as earlier
    /// versions wrote it) still loads.
    #[test]
    fn snapshots_round_trip_in_binary_and_json_snapshots_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let (states, _) = write_all(dir.path());
        let (mut store, mut state, _) = open(dir.path());
        let extra = [
            r#"{"op":"add","table":"sp","entries":[{"id":"sp6","provider":"p","ip":"2001:db8::7","port":443,"decision":{"level":"interactive","dscp":34,"dst_port":8443,"dst_addr":"2001:db8::8","mss_clamp":1400}}]}"#,
            r#"{"op":"add","table":"coupon","entries":[{"id":"plain","subscriber":"192.0.2.9","decision":{"level":0}}]}"#,
            r#"{"op":"add","table":"eligibility","entries":[{"dst":"2001:db8::/32","port":53}]}"#,
        ];
        for line in extra {
            let Ok(crate::policy::Request::Apply { changes, .. }) =
                crate::policy::parse_request(line)
            else {
                panic!("{line}")
            };
            store.commit(&mut state, &changes).unwrap();
        }
        assert_ne!(&state, states.last().unwrap());
        store.compact(&state).unwrap();
        drop(store);
        let snap = fs::read(dir.path().join(SNAPSHOT)).unwrap();
        assert!(snap[HEADER..].starts_with(BINARY_SNAPSHOT));
        let (_, loaded, report) = open(dir.path());
        assert_eq!((&loaded, report.replayed_records), (&state, 0));

        // The same state as a JSON snapshot.
        let json = record(&SnapshotOut {
            format: SNAPSHOT_FORMAT,
            seq: state.seq(),
            generations: state.generations(),
            default: state.default_decision(),
            tiers: state.tiers().collect(),
            logins: state.logins().collect(),
            coupons: state.coupons().collect(),
            sps: state.sp_allocations().collect(),
            eligibility: state.eligibility_rules().collect(),
        })
        .unwrap();
        assert!(json.len() > snap.len(), "{} vs {}", json.len(), snap.len());
        fs::write(dir.path().join(SNAPSHOT), &json).unwrap();
        let (_, loaded, _) = open(dir.path());
        assert_eq!(loaded, state);
    }

    /// A record in the request shape replays through the one-pass decoder
    /// with the same sequence number and changes as through `JournalIn`;
    /// any other shape is left to `JournalIn`.
    #[test]
    fn the_one_pass_replay_reads_records_as_the_general_decoding_does() {
        let check = |payload: &[u8], fast_expected: bool| {
            let slow: JournalIn<'_> = serde_json::from_slice(payload).unwrap();
            let slow = (slow.seq, slow.changes().unwrap());
            match fast_journal_record(payload) {
                Some(fast) => assert_eq!(fast, slow),
                None => assert!(!fast_expected, "{}", String::from_utf8_lossy(payload)),
            }
        };
        for (k, b) in batches().iter().enumerate() {
            let mut rec = Vec::new();
            record_into(&mut rec, &JournalOut::new(k as u64 * 7, b)).unwrap();
            let uniform = b.iter().all(|c| {
                matches!(c, Change::Add(_) | Change::Update(_))
                    && (c.op(), c.table()) == (b[0].op(), b[0].table())
            });
            check(&rec[HEADER..], uniform);
        }
        let lines = [
            r#"{"op":"update","table":"coupon","entries":[{"id":"c1","subscriber":"10.0.0.1","decision":{"level":"voice","dscp":46}}]}"#,
            r#" { "op" : "add", "table":"tier", "entries":[{"name":"g\u006fld","decision":{"level":1}}]} "#,
            r#"{"table":"coupon","op":"update","entries":[{"id":"c1","subscriber":"10.0.0.1","decision":{"level":1}}]}"#,
        ];
        for (k, line) in lines.iter().enumerate() {
            let mut rec = Vec::new();
            journal_request_record(&mut rec, 40 + k as u64, request_fields(line).unwrap()).unwrap();
            check(&rec[HEADER..], true);
        }
    }

    /// A row whose bytes read as an intact record (an IPv6 subscriber that
    /// is a record header with an empty payload) does not make the reused
    /// journal that holds it look corrupt once its own header is gone
    /// (found by review: the load refused a sound store).
    #[test]
    fn row_bytes_that_read_as_a_record_do_not_fake_the_journals_own() {
        let mut fake = [0u8; 16];
        fake[..4].copy_from_slice(&MAGIC);
        let hcrc = crc32fast::hash(&fake[..12]);
        fake[12..].copy_from_slice(&hcrc.to_le_bytes());
        assert_eq!(read_record(&fake), Ok((&[][..], HEADER)));
        let subscriber = std::net::Ipv6Addr::from(fake);
        let row = Entry::from_json(
            Table::Coupon,
            &format!(r#"{{"id":"x","subscriber":"{subscriber}","decision":{{"level":1}}}}"#),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (mut store, mut state, _) = open(dir.path());
        store.commit(&mut state, &[Change::Add(row)]).unwrap();
        // The compaction zeroes the record's header and keeps its bytes.
        store.compact(&state).unwrap();
        let data = fs::read(journal(dir.path())).unwrap();
        assert!(intact_records(&data[1..]).any(|(_, p)| p.is_empty()));
        drop(store);
        let (mut store, loaded, _) = open(dir.path());
        assert_eq!(loaded, state);
        // And after a record of the journal's own over part of it.
        let mut state = loaded;
        store.commit(&mut state, &[tier("gold", 1)]).unwrap();
        drop(store);
        assert_eq!(open(dir.path()).1, state);
    }

    /// Records dropped with `truncate_corrupt` go from the file even when
    /// the damage looks like an end marker (a zeroed header): left there,
    /// they would lie after the next record's marker with sequence numbers
    /// a later load takes for the journal's own (found by review).
    #[test]
    fn records_dropped_after_a_zeroed_header_leave_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions::default();
        let (mut store, mut state, _) = Store::open(dir.path(), opts).unwrap();
        let mut lens = vec![0u64];
        let mut states = vec![state.clone()];
        for i in 0..5 {
            store.commit(&mut state, &[coupon(i)]).unwrap();
            lens.push(store.stats().journal_bytes);
            states.push(state.clone());
        }
        drop(store);
        let mut bytes = fs::read(journal(dir.path())).unwrap();
        bytes[lens[1] as usize..lens[1] as usize + HEADER].fill(0);
        fs::write(journal(dir.path()), &bytes).unwrap();
        match Store::open(dir.path(), opts) {
            Err(StoreError::Corrupt { offset, .. }) => assert_eq!(offset, lens[1]),
            other => panic!("{other:?}"),
        }
        let dropping = StoreOptions {
            truncate_corrupt: true,
            ..opts
        };
        let (mut store, mut state, report) = Store::open(dir.path(), dropping).unwrap();
        assert_eq!(state, states[1]);
        assert_eq!(report.truncated_bytes, lens[5] - lens[1]);
        assert_eq!(fs::metadata(journal(dir.path())).unwrap().len(), lens[1]);
        store.commit(&mut state, &[coupon(100)]).unwrap();
        store.compact(&state).unwrap();
        store.commit(&mut state, &[coupon(101)]).unwrap();
        drop(store);
        let (_, loaded, _) = Store::open(dir.path(), opts).unwrap();
        assert_eq!(loaded, state);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// A binary snapshot damaged anywhere (its checksum made to match,
        /// so that the decoder sees the damage) loads as a valid state or
        /// is refused as corrupt: never a panic, never a row a request
        /// could not have made (each loaded row goes through the JSON
        /// decoding again).
        #[test]
        fn a_damaged_binary_snapshot_is_refused_or_loads_valid_rows(
            at in proptest::prelude::any::<proptest::sample::Index>(),
            xor in 1u8..=255,
            cut in proptest::prelude::any::<bool>(),
        ) {
            static SNAP: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
            let snap = SNAP.get_or_init(|| {
                let src = tempfile::tempdir().unwrap();
                write_all(src.path());
                let (mut store, state, _) = open(src.path());
                store.compact(&state).unwrap();
                drop(store);
                fs::read(src.path().join(SNAPSHOT)).unwrap()
            });
            damaged_loads_valid_or_corrupt(SNAPSHOT, &snap[HEADER..], at, xor, cut)?;
        }

        /// The same for a binary journal record: every kind of change of
        /// every table in one record, damaged anywhere with its checksums
        /// made to match, is refused as corrupt or replays into a valid
        /// state.
        #[test]
        fn a_damaged_binary_journal_record_is_refused_or_loads_valid_rows(
            at in proptest::prelude::any::<proptest::sample::Index>(),
            xor in 1u8..=255,
            cut in proptest::prelude::any::<bool>(),
        ) {
            static RECORD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
            let intact = RECORD.get_or_init(|| {
                let mut buf = Vec::new();
                batch_record(&mut buf, 0, &batches().concat()).unwrap();
                let dir = tempfile::tempdir().unwrap();
                fs::write(journal(dir.path()), &buf).unwrap();
                let (_, _, report) = open(dir.path());
                assert_eq!(report.replayed_records, 1);
                buf
            });
            damaged_loads_valid_or_corrupt(JOURNAL, &intact[HEADER..], at, xor, cut)?;
        }
    }

    /// `payload` flipped (`xor`) or cut at `at`, sealed again with matching
    /// checksums and written as the store's file `name`: the store opens
    /// into a state whose every row is one a request could make (written
    /// as JSON, it decodes with the protocol's checks to itself), or is
    /// refused as corrupt. Never a panic, never another error.
    fn damaged_loads_valid_or_corrupt(
        name: &str,
        payload: &[u8],
        at: proptest::sample::Index,
        xor: u8,
        cut: bool,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        let mut payload = payload.to_vec();
        let i = at.index(payload.len());
        if cut {
            payload.truncate(i);
        } else {
            payload[i] ^= xor;
        }
        let mut rec = header(payload.len(), crc32fast::hash(&payload)).to_vec();
        rec.extend_from_slice(&payload);
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(name), &rec).unwrap();
        match Store::open(dir.path(), StoreOptions::default()) {
            Ok((_, loaded, _)) => {
                let default = Entry::Default(*loaded.default_decision());
                for e in loaded.entries().chain([default]) {
                    let json = serde_json::to_string(&e).unwrap();
                    let back = Entry::from_json(e.table(), &json);
                    proptest::prop_assert_eq!(back.as_ref(), Ok(&e), "{}", json);
                }
            }
            Err(StoreError::Corrupt { .. }) => {}
            Err(e) => proptest::prop_assert!(false, "{e}"),
        }
        Ok(())
    }

    const CRASH_CHILD_DIR: &str = "SLUICE_STORE_CRASH_CHILD_DIR";
    const CRASH_BATCH: usize = 50;

    fn crash_batch(i: usize) -> Vec<Change> {
        (i * CRASH_BATCH..(i + 1) * CRASH_BATCH)
            .map(coupon)
            .collect()
    }

    const FSIZE_CHILD_DIR: &str = "SLUICE_STORE_FSIZE_CHILD_DIR";
    /// The file-size limit the child runs under, and the chunk it tries
    /// to preallocate (which cannot fit under it).
    const FSIZE_LIMIT: u64 = 64 << 10;

    /// The child of `a_failed_preallocation_falls_back_to_appending`: runs
    /// under `prlimit --fsize`, where zero-filling a chunk fails with
    /// EFBIG. Does nothing on its own.
    #[test]
    #[ignore = "helper process for a_failed_preallocation_falls_back_to_appending"]
    fn fsize_child() {
        let Ok(dir) = std::env::var(FSIZE_CHILD_DIR) else {
            return;
        };
        let ignored = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGXFSZ, ignored).unwrap();
        let opts = StoreOptions {
            journal_prealloc_bytes: 1 << 20,
            ..StoreOptions::default()
        };
        let (mut store, mut state, _) = Store::open(Path::new(&dir), opts).unwrap();
        for b in batches() {
            store.commit(&mut state, &b).unwrap();
        }
        let len = fs::metadata(journal(Path::new(&dir))).unwrap().len();
        assert_eq!(len, store.stats().journal_bytes);
        assert!(len < FSIZE_LIMIT);
        assert!(store.prealloc_failed, "the zero-fill was expected to fail");
        println!("committed {}", state.seq());
    }

    /// A zero-fill that cannot be written (a full disk, a file-size limit)
    /// does not refuse the batch: its record is appended, as without
    /// preallocation, and everything committed loads.
    #[test]
    fn a_failed_preallocation_falls_back_to_appending() {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("prlimit")
            .arg(format!("--fsize={FSIZE_LIMIT}"))
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "policy::store::tests::fsize_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(FSIZE_CHILD_DIR, dir.path())
            .output()
            .expect("prlimit (util-linux) runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("committed"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (_, state, report) = open(dir.path());
        assert_eq!(report.truncated_bytes, 0);
        assert_eq!(report.replayed_records as usize, batches().len());
        assert!(
            stdout.contains(&format!("committed {}", state.seq())),
            "{stdout}"
        );
    }

    /// Small chunks, so that kills land while records extend the
    /// preallocated space, and compactions do not zero-fill 32 MiB each.
    fn crash_opts() -> StoreOptions {
        StoreOptions {
            compact_after_records: 7,
            journal_prealloc_bytes: 4096,
            ..StoreOptions::default()
        }
    }

    /// The child of `acknowledged_batches_survive_kill_9`: commits batches
    /// forever, printing each acknowledgement. Does nothing on its own.
    #[test]
    #[ignore = "helper process for acknowledged_batches_survive_kill_9"]
    fn crash_child() {
        let Ok(dir) = std::env::var(CRASH_CHILD_DIR) else {
            return;
        };
        let (mut store, mut state, report) = Store::open(Path::new(&dir), crash_opts()).unwrap();
        let start = state.len(Table::Coupon) / CRASH_BATCH;
        assert_eq!(report.seq as usize, start * CRASH_BATCH);
        let mut out = io::stdout();
        for i in start.. {
            store.commit(&mut state, &crash_batch(i)).unwrap();
            writeln!(out, "acked {i}").unwrap();
            out.flush().unwrap();
        }
    }

    /// A real `kill -9` (SIGKILL) of a process in the middle of committing:
    /// every acknowledged batch is loaded, no batch is loaded half, and the
    /// store carries on from there, twice over (with compactions between).
    #[test]
    fn acknowledged_batches_survive_kill_9() {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().unwrap();
        let mut acked_total = 0;
        for round in 0..2 {
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "policy::store::tests::crash_child",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CRASH_CHILD_DIR, dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut last = None;
            let lines = io::BufReader::new(child.stdout.take().unwrap()).lines();
            for line in lines {
                if let Some(n) = line.unwrap().strip_prefix("acked ") {
                    let n: usize = n.parse().unwrap();
                    last = Some(n);
                    if n >= acked_total + 20 + round * 7 {
                        break;
                    }
                }
            }
            child.kill().unwrap(); // SIGKILL, mid-commit as likely as not
            child.wait().unwrap();
            let acked = last.expect("the child acknowledged batches") + 1;
            let (_, state, report) = Store::open(dir.path(), crash_opts()).unwrap();
            let rows = state.len(Table::Coupon);
            assert_eq!(
                rows % CRASH_BATCH,
                0,
                "a batch was loaded half: {rows} rows"
            );
            let batches = rows / CRASH_BATCH;
            assert!(
                batches >= acked,
                "{acked} acknowledged, {batches} loaded ({report:?})"
            );
            let mut expect = PolicyState::new();
            for i in 0..batches {
                expect.apply(&crash_batch(i)).unwrap();
            }
            assert_eq!(state, expect);
            acked_total = batches;
        }
    }

    /// `cargo test -p sluice-control --release -- --ignored --nocapture
    /// journal_throughput`: apply + journal append + fsync of 10k-entry
    /// batches, the figure quoted for group commit. Each phase is timed per
    /// batch and the median reported, so other load on the machine skews it
    /// less. `STORE_BENCH_DIR` picks the file system (default: the temp dir).
    #[test]
    #[ignore = "benchmark; run in release with --nocapture"]
    fn journal_throughput() {
        use std::time::Duration;
        const BATCH: usize = 10_000;
        const BATCHES: usize = 50;
        let base = std::env::var("STORE_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| std::env::temp_dir());
        let dir = tempfile::tempdir_in(base).unwrap();
        let never = StoreOptions {
            compact_after_records: u64::MAX,
            compact_after_bytes: u64::MAX,
            ..StoreOptions::default()
        };
        let (mut store, mut state, _) = Store::open(dir.path(), never).unwrap();
        let adds: Vec<Vec<Change>> = (0..BATCHES)
            .map(|b| (b * BATCH..(b + 1) * BATCH).map(coupon).collect())
            .collect();
        // Steady state: re-rate existing bindings (same match, new decision).
        let updates: Vec<Vec<Change>> = adds
            .iter()
            .map(|b| {
                b.iter()
                    .map(|c| {
                        let Change::Add(Entry::Coupon(c)) = c else {
                            unreachable!()
                        };
                        let mut j = serde_json::to_value(c).unwrap();
                        j["decision"]["level"] = "premium".into();
                        Change::Update(Entry::from_json(Table::Coupon, &j.to_string()).unwrap())
                    })
                    .collect()
            })
            .collect();
        fn median(mut v: Vec<Duration>) -> f64 {
            v.sort();
            v[v.len() / 2].as_secs_f64() * 1000.0
        }
        fn each<T>(items: &[T], mut f: impl FnMut(&T)) -> f64 {
            median(
                items
                    .iter()
                    .map(|x| {
                        let t = Instant::now();
                        f(x);
                        t.elapsed()
                    })
                    .collect(),
            )
        }
        let mut apply_only = PolicyState::new();
        let add_apply = each(&adds, |b| {
            apply_only.apply(b).unwrap();
        });
        let upd_apply = each(&updates, |b| {
            apply_only.apply(b).unwrap();
        });
        let encode = each(&updates, |b| {
            let _ = record(&JournalOut::new(0, b)).unwrap();
        });
        let lines: Vec<String> = updates
            .iter()
            .map(|b| {
                let entries: Vec<&Entry> = b
                    .iter()
                    .map(|c| match c {
                        Change::Update(e) => e,
                        _ => unreachable!(),
                    })
                    .collect();
                format!(
                    r#"{{"op":"update","table":"coupon","entries":{}}}"#,
                    serde_json::to_string(&entries).unwrap()
                )
            })
            .collect();
        let parse = each(&lines, |l| {
            crate::policy::protocol::parse_request(l).unwrap();
        });
        let rec_len = record(&JournalOut::new(0, &updates[0])).unwrap().len();
        let mut raw = File::create(dir.path().join("raw")).unwrap();
        let buf = vec![b'x'; rec_len];
        let fsync = each(&adds, |_| {
            raw.write_all(&buf).unwrap();
            raw.sync_data().unwrap();
        });
        let add_commit = each(&adds, |b| {
            store.commit(&mut state, b).unwrap();
        });
        let upd_commit = each(&updates, |b| {
            store.commit(&mut state, b).unwrap();
        });
        let rate = |ms: f64| BATCH as f64 / ms * 1000.0;
        println!("{BATCHES} batches of {BATCH} coupon bindings, {rec_len} journal bytes per batch; median per batch:");
        println!("  adds (state grows to {} rows): apply {add_apply:.2} ms, commit (apply + encode + write + fsync) {add_commit:.2} ms = {:.0} changes/s", BATCH * BATCHES, rate(add_commit));
        println!("  updates (re-rate existing rows): apply {upd_apply:.2} ms, commit {upd_commit:.2} ms = {:.0} changes/s", rate(upd_commit));
        println!(
            "  parts: JSON encode {encode:.2} ms, write + fsync of {rec_len} bytes {fsync:.2} ms"
        );
        println!(
            "  before that, parse_request of the {}-byte request line: {parse:.2} ms",
            lines[0].len()
        );
        let t = Instant::now();
        store.compact(&state).unwrap();
        println!(
            "  snapshot of {} rows: {:.0} ms, {} bytes",
            state.len(Table::Coupon),
            t.elapsed().as_secs_f64() * 1000.0,
            store.stats().snapshot_bytes
        );
        drop(store);
        let t = Instant::now();
        let (_, loaded, _) = Store::open(dir.path(), never).unwrap();
        println!("  load: {:.0} ms", t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(loaded, state);
    }
}
