//! The control protocol: one JSON object per line in, one per line out.
//!
//! A client (`sluicectl`, an API front end) connects to the control socket
//! and writes requests, each a single line of JSON ending in `\n`, at most
//! [`MAX_LINE_BYTES`] long (the reader enforces the cap before parsing and
//! answers a longer line with an error; split big imports into batches).
//! Every request gets exactly one response line, in order. Unknown fields
//! are errors everywhere. A request that fails leaves the policy exactly as
//! it was: the changes of one request are applied atomically, and are on
//! disk before the response says `"ok":true` (see [`super::store`]).
//!
//! # Tables and their rows
//! | table | key | row |
//! |---|---|---|
//! | `coupon` | `id` | `{"id","subscriber","dst"?,"port"?,"decision","expires"?}` |
//! | `login` | `subscriber` | `{"subscriber","login","tier"}` |
//! | `tier` | `name` | `{"name","decision"}` |
//! | `sp` | `id` | `{"id","provider","ip"` or `"prefix","port"?,"decision"}` |
//! | `eligibility` | `dst`, `port` | `{"dst","port"?}` |
//! | `default` | (none) | a decision |
//!
//! A decision is `{"level", "dscp"?, "dst_port"?, "dst_addr"?, "mss_clamp"?,
//! "rate"?: {"committed_bps","peak_bps"}}`; `level` is 0..=7 or a name
//! (`network-control`, `voice`, `interactive`, `premium`, `standard`,
//! `best-effort`, `bulk`, `scavenger`); `dscp` is 0..=63 or `"level"` (the
//! level's default code point). Prefixes must have no host bits set.
//!
//! # Requests, one example per op
//! Add rows (all or none; keys must be new):
//! ```json
//! {"op":"add","table":"tier","entries":[{"name":"gold","decision":{"level":"premium","dscp":"level"}}]}
//! {"op":"add","table":"login","entries":[{"subscriber":"10.0.0.7","login":"alice","tier":"gold"}]}
//! {"op":"add","table":"coupon","entries":[{"id":"cp-1","subscriber":"10.0.0.8","dst":"203.0.113.0/24","port":443,"decision":{"level":"voice","dscp":46,"rate":{"committed_bps":2000000,"peak_bps":4000000}},"expires":1767225600}]}
//! {"op":"add","table":"sp","entries":[{"id":"sp-1","provider":"acme","prefix":"198.51.100.0/24","decision":{"level":2,"mss_clamp":1400}}]}
//! {"op":"add","table":"eligibility","entries":[{"dst":"203.0.113.0/24"},{"dst":"0.0.0.0/0","port":5060}]}
//! ```
//! Replace rows by key (each must exist); the default decision is only ever
//! updated:
//! ```json
//! {"op":"update","table":"tier","entries":[{"name":"gold","decision":{"level":"interactive"}}]}
//! {"op":"update","table":"default","entries":[{"level":"best-effort","dscp":0}]}
//! ```
//! Remove rows by key (each must exist; a tier still used by a login cannot
//! go):
//! ```json
//! {"op":"remove","table":"coupon","keys":[{"id":"cp-1"}]}
//! {"op":"remove","table":"eligibility","keys":[{"dst":"0.0.0.0/0","port":5060}]}
//! ```
//! Mixed changes, atomically, checked in order (a later change sees the
//! earlier ones):
//! ```json
//! {"op":"batch","changes":[{"op":"add","table":"tier","entry":{"name":"silver","decision":{"level":4}}},{"op":"update","table":"login","entry":{"subscriber":"10.0.0.7","login":"alice","tier":"silver"}},{"op":"remove","table":"tier","key":{"name":"gold"}}]}
//! ```
//! Read one row, a page of rows (key order; `limit` defaults to
//! [`DEFAULT_LIST_LIMIT`], at most [`MAX_LIST_LIMIT`]), the counters, the
//! table sizes:
//! ```json
//! {"op":"get","table":"login","key":{"subscriber":"10.0.0.7"}}
//! {"op":"list","table":"coupon","offset":0,"limit":100}
//! {"op":"stats"}
//! {"op":"tables"}
//! ```
//!
//! # Responses
//! ```json
//! {"ok":true,"changes":3,"seq":1042}
//! {"ok":true,"entry":{"subscriber":"10.0.0.7","login":"alice","tier":"silver"}}
//! {"ok":true,"table":"coupon","total":1,"entries":[{"id":"cp-1","subscriber":"10.0.0.8","decision":{"level":"voice"}}]}
//! {"ok":true,"tables":[{"table":"coupon","entries":1,"generation":7,"approx_bytes":310},{"table":"login","entries":1,"generation":2,"approx_bytes":84}]}
//! {"ok":true,"seq":1042,"tables":[...],"store":{"journal_bytes":5120,"journal_records":4,"snapshot_seq":1000,"snapshot_bytes":81920,"compactions":1}}
//! {"ok":false,"error":{"index":3,"field":"entries[3].subscriber","reason":"bad IP address \"10.0.0.300\": expected IPv4 (192.0.2.1) or IPv6 (2001:db8::1)"}}
//! {"ok":false,"error":{"field":"","reason":"truncated JSON: EOF while parsing an object at line 1 column 40 (a request is one complete JSON object on one line)"}}
//! ```
//! Signed coupons have requests of their own (`"op":"coupon_..."`), handled
//! by `crate::coupons` (its module doc lists them).
//!
//! `seq` counts every change ever applied; each table's `generation` counts
//! the changes to it. `error.index` is the position of the failing entry,
//! key or change in the request (absent when the request as a whole is
//! wrong); `error.field` is the JSON path of the bad field.
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use thiserror::Error;

use super::model::{strip_position, Change, Entry, Key, ModelError, Table};
use super::state::{Applied, BatchError, TableInfo};
use super::store::{CommitError, StoreStats};

/// The longest request line accepted, newline excluded: 4 MiB, so that a
/// batch of 10,000 bindings fits in one request (a coupon with every field
/// set is ~235 bytes of JSON; group commit wants batches that large). The
/// socket reader must stop buffering at this many bytes (so a client
/// cannot make it allocate more) and answer with
/// [`ProtocolError::line_too_long`].
pub const MAX_LINE_BYTES: usize = 4 << 20;
/// Rows a `list` returns when it names no `limit`.
pub const DEFAULT_LIST_LIMIT: usize = 1000;
/// The largest `limit` a `list` accepts.
pub const MAX_LIST_LIMIT: usize = 10_000;

/// A parsed, validated request. Its changes are valid rows; whether they
/// fit the current state (keys new or present, tiers known) is checked when
/// they are applied.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `add`, `update`, `remove` or `batch`: one atomic batch.
    Apply {
        op: BatchOp,
        changes: Vec<Change>,
    },
    Get {
        key: Key,
    },
    List {
        table: Table,
        offset: usize,
        limit: usize,
    },
    Stats,
    Tables,
}

/// Which request carried a batch, so an error can point into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOp {
    Add,
    Update,
    Remove,
    Batch,
}

impl BatchOp {
    /// The JSON path of `field` inside change `index` of such a request.
    pub fn path(self, index: usize, change_op: &str, field: &str) -> String {
        let base = match self {
            BatchOp::Add | BatchOp::Update => format!("entries[{index}]"),
            BatchOp::Remove => format!("keys[{index}]"),
            BatchOp::Batch if change_op == "remove" => format!("changes[{index}].key"),
            BatchOp::Batch => format!("changes[{index}].entry"),
        };
        join(&base, field)
    }
}

fn join(base: &str, field: &str) -> String {
    match (base.is_empty(), field.is_empty()) {
        (_, true) => base.to_string(),
        (true, false) => field.to_string(),
        (false, false) => format!("{base}.{field}"),
    }
}

/// What is wrong with a request: where (`index` of the entry/key/change,
/// `field` as a JSON path, empty for the whole line) and why.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
#[error("{}{}{reason}", index.map(|i| format!("[{i}] ")).unwrap_or_default(), if field.is_empty() { String::new() } else { format!("`{field}`: ") })]
pub struct ProtocolError {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    pub field: String,
    pub reason: String,
}

impl ProtocolError {
    pub fn new(index: Option<usize>, field: impl Into<String>, reason: impl Into<String>) -> Self {
        ProtocolError {
            index,
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The answer to a line longer than [`MAX_LINE_BYTES`].
    pub fn line_too_long(len: usize) -> ProtocolError {
        ProtocolError::new(
            None,
            "",
            format!(
                "request line is {len} bytes or more, the limit is {MAX_LINE_BYTES}: split the changes into several requests"
            ),
        )
    }

    /// A refused batch, located in the request that carried it.
    pub fn from_batch(op: BatchOp, e: &BatchError) -> ProtocolError {
        ProtocolError::new(
            Some(e.index),
            op.path(e.index, e.op, &e.field),
            e.reason.clone(),
        )
    }

    fn at(index: usize, base: &str, e: ModelError) -> ProtocolError {
        ProtocolError::new(Some(index), join(base, &e.field), e.reason)
    }
}

/// An `add` or `update` request whose `table` comes before its `entries`
/// (as every client here writes them), decoded in one pass: the entries
/// straight into rows, with no first pass that only finds where each one
/// ends (that pass and the server's coupon-request check, which also read
/// the whole line, were about a sixth of the control thread's time in an
/// update storm, `sluice-perf updates` under `perf`). `None` for any other
/// request. Any error, and any member this does not expect, sends the line
/// to [`parse_request`]'s general path, which accepts exactly the same
/// requests (the same decoding of each entry) and names the field at
/// fault.
///
/// `JOURNAL`: a journal record in that shape (`{"seq":S,"op":..}`, how
/// earlier versions journaled a request line; still loaded), its `seq`
/// first; the second field.
struct FastRows<const JOURNAL: bool>(Option<(BatchOp, Vec<Change>)>, Option<u64>);

/// A journal record in the request shape, decoded in one pass as
/// [`parse_request`] decodes the request it came from: its `seq` and
/// changes. None for any other record, which then takes the store's
/// general decoding (the same changes, more slowly).
pub(crate) fn fast_journal_record(payload: &[u8]) -> Option<(u64, Vec<Change>)> {
    match serde_json::from_slice::<FastRows<true>>(payload) {
        Ok(FastRows(Some((_, changes)), Some(seq))) => Some((seq, changes)),
        _ => None,
    }
}

impl<'de, const JOURNAL: bool> Deserialize<'de> for FastRows<JOURNAL> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<FastRows<JOURNAL>, D::Error> {
        use serde::de::{DeserializeSeed, Error, MapAccess, SeqAccess, Visitor};

        /// The entries of `table`, each wrapped as the op's change.
        struct Rows(Table, fn(Entry) -> Change);
        impl<'de> DeserializeSeed<'de> for Rows {
            type Value = Vec<Change>;
            fn deserialize<D: serde::Deserializer<'de>>(
                self,
                d: D,
            ) -> Result<Vec<Change>, D::Error> {
                d.deserialize_seq(self)
            }
        }
        impl<'de> Visitor<'de> for Rows {
            type Value = Vec<Change>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of entries")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Change>, A::Error> {
                let mut rows = Vec::new();
                while let Some(e) = seq.next_element_seed(Row(self.0))? {
                    rows.push(self.1(e));
                }
                Ok(rows)
            }
        }
        struct Row(Table);
        impl<'de> DeserializeSeed<'de> for Row {
            type Value = Entry;
            fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Entry, D::Error> {
                Entry::deserialize_in(self.0, d)
            }
        }

        struct Request<const JOURNAL: bool>;
        impl<'de, const JOURNAL: bool> Visitor<'de> for Request<JOURNAL> {
            type Value = FastRows<JOURNAL>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a request")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<FastRows<JOURNAL>, A::Error> {
                let not_here = || A::Error::custom("not for the fast path");
                let (mut seq, mut op, mut table, mut rows) = (None, None, None, None);
                // Borrowed: a key or value with escapes is not for here.
                while let Some(key) = map.next_key::<&'de str>()? {
                    match key {
                        "seq" if JOURNAL && seq.is_none() && op.is_none() => {
                            seq = Some(map.next_value::<u64>()?)
                        }
                        "op" if op.is_none() => {
                            op = Some(match map.next_value::<&'de str>()? {
                                "add" => BatchOp::Add,
                                "update" => BatchOp::Update,
                                _ => return Err(not_here()),
                            })
                        }
                        "table" if table.is_none() => {
                            let t = map.next_value::<&'de str>()?;
                            table = Some(t.parse::<Table>().map_err(|_| not_here())?);
                        }
                        "entries" if rows.is_none() => {
                            let (Some(op), Some(t)) = (op, table) else {
                                return Err(not_here());
                            };
                            let wrap = if op == BatchOp::Add {
                                Change::Add
                            } else {
                                Change::Update
                            };
                            rows = Some(map.next_value_seed(Rows(t, wrap))?);
                        }
                        _ => return Err(not_here()),
                    }
                }
                Ok(FastRows(op.zip(rows), seq))
            }
        }
        d.deserialize_map(Request::<JOURNAL>)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest<'a> {
    op: String,
    #[serde(default)]
    table: Option<String>,
    #[serde(borrow, default)]
    entries: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    keys: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    key: Option<&'a RawValue>,
    #[serde(borrow, default)]
    changes: Option<Vec<&'a RawValue>>,
    #[serde(default)]
    limit: Option<u64>,
    #[serde(default)]
    offset: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChange<'a> {
    op: String,
    table: String,
    #[serde(borrow, default)]
    entry: Option<&'a RawValue>,
    #[serde(borrow, default)]
    key: Option<&'a RawValue>,
}

/// Deserialize `text`, reporting a failure as `(path, reason)`, with a
/// clear word for truncated and malformed JSON.
fn de<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, (String, String)> {
    // Fast pass without path tracking; the error pass names the field.
    if let Ok(v) = serde_json::from_str(text) {
        return Ok(v);
    }
    let mut d = serde_json::Deserializer::from_str(text);
    let v = serde_path_to_error::deserialize(&mut d).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let path = if path == "." { String::new() } else { path };
        use serde_json::error::Category;
        match inner.classify() {
            Category::Eof => (
                String::new(),
                format!(
                    "truncated JSON: {inner} (a request is one complete JSON object on one line)"
                ),
            ),
            Category::Syntax => (String::new(), format!("malformed JSON: {inner}")),
            Category::Io | Category::Data => (path, strip_position(&inner.to_string())),
        }
    })?;
    d.end().map_err(|e| {
        (
            String::new(),
            format!("trailing characters after the request: {e}"),
        )
    })?;
    Ok(v)
}

/// Parse one request line (without or with its trailing newline).
pub fn parse_request(line: &str) -> Result<Request, ProtocolError> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.len() > MAX_LINE_BYTES {
        return Err(ProtocolError::line_too_long(line.len()));
    }
    if let Ok(FastRows(Some((op, changes)), _)) = serde_json::from_str::<FastRows<false>>(line) {
        return Ok(Request::Apply { op, changes });
    }
    parse_general(line)
}

/// [`parse_request`] for every request, after the line's checks: the
/// request's members first (the entries as raw text), then each entry.
pub(crate) fn parse_general(line: &str) -> Result<Request, ProtocolError> {
    if line.trim().is_empty() {
        return Err(ProtocolError::new(
            None,
            "",
            "empty request: expected a JSON object such as {\"op\":\"stats\"}",
        ));
    }
    let raw: RawRequest<'_> = de(line).map_err(|(f, r)| ProtocolError::new(None, f, r))?;
    let present = [
        ("table", raw.table.is_some()),
        ("entries", raw.entries.is_some()),
        ("keys", raw.keys.is_some()),
        ("key", raw.key.is_some()),
        ("changes", raw.changes.is_some()),
        ("limit", raw.limit.is_some()),
        ("offset", raw.offset.is_some()),
    ];
    let op = raw.op.as_str();
    check_fields(op, &present)?;
    let table = parse_table(raw.table.as_deref())?;
    Ok(match op {
        "add" | "update" | "remove" | "batch" => {
            let (op, changes) = batch_changes(BatchFields {
                op,
                table,
                entries: raw.entries,
                keys: raw.keys,
                changes: raw.changes,
            })?;
            Request::Apply { op, changes }
        }
        "get" => {
            let table = table.expect("required");
            let key = match raw.key {
                Some(k) => Key::from_json(table, k.get())
                    .map_err(|e| ProtocolError::new(None, join("key", &e.field), e.reason))?,
                None if table == Table::Default => Key::Default,
                None => {
                    return Err(ProtocolError::new(
                        None,
                        "key",
                        format!("missing: op \"get\" on table {table} needs a key"),
                    ))
                }
            };
            Request::Get { key }
        }
        "list" => {
            let limit = raw.limit.unwrap_or(DEFAULT_LIST_LIMIT as u64);
            if limit == 0 || limit > MAX_LIST_LIMIT as u64 {
                return Err(ProtocolError::new(
                    None,
                    "limit",
                    format!("{limit} is out of range 1..={MAX_LIST_LIMIT}"),
                ));
            }
            Request::List {
                table: table.expect("required"),
                offset: usize::try_from(raw.offset.unwrap_or(0)).unwrap_or(usize::MAX),
                limit: limit as usize,
            }
        }
        "stats" => Request::Stats,
        _ => Request::Tables,
    })
}

/// A request's (or journal record's) `table` field, if present.
pub(crate) fn parse_table(table: Option<&str>) -> Result<Option<Table>, ProtocolError> {
    table
        .map(|t| {
            t.parse::<Table>()
                .map_err(|r| ProtocolError::new(None, "table", r))
        })
        .transpose()
}

/// Checks which of a request's fields `present` holds against what `op`
/// takes and needs.
pub(crate) fn check_fields(op: &str, present: &[(&str, bool)]) -> Result<(), ProtocolError> {
    let (allowed, required): (&[&str], &[&str]) = match op {
        "add" | "update" => (&["table", "entries"], &["table", "entries"]),
        "remove" => (&["table", "keys"], &["table", "keys"]),
        "batch" => (&["changes"], &["changes"]),
        "get" => (&["table", "key"], &["table"]),
        "list" => (&["table", "limit", "offset"], &["table"]),
        "stats" | "tables" => (&[], &[]),
        other => {
            return Err(ProtocolError::new(
                None,
                "op",
                format!(
                    "unknown op {other:?}: expected one of add, update, remove, batch, get, list, stats, tables"
                ),
            ))
        }
    };
    for &(name, is) in present {
        if is && !allowed.contains(&name) {
            return Err(ProtocolError::new(
                None,
                name,
                format!("not a field of op {op:?} (its fields: {})", fields(allowed)),
            ));
        }
        if !is && required.contains(&name) {
            return Err(ProtocolError::new(
                None,
                name,
                format!("missing: op {op:?} needs {}", fields(required)),
            ));
        }
    }
    Ok(())
}

/// The fields of an `add`, `update`, `remove` or `batch` request, already
/// checked by [`check_fields`]; a journal record holds the same.
pub(crate) struct BatchFields<'a> {
    pub op: &'a str,
    pub table: Option<Table>,
    pub entries: Option<Vec<&'a RawValue>>,
    pub keys: Option<Vec<&'a RawValue>>,
    pub changes: Option<Vec<&'a RawValue>>,
}

/// Decodes and validates the changes of such a request.
pub(crate) fn batch_changes(f: BatchFields<'_>) -> Result<(BatchOp, Vec<Change>), ProtocolError> {
    let missing =
        |name: &str| ProtocolError::new(None, name, format!("missing: op {:?} needs it", f.op));
    match f.op {
        "add" | "update" => {
            let table = f.table.ok_or_else(|| missing("table"))?;
            let add = f.op == "add";
            let changes = f
                .entries
                .ok_or_else(|| missing("entries"))?
                .into_iter()
                .enumerate()
                .map(|(i, e)| {
                    let entry = Entry::from_json(table, e.get())
                        .map_err(|err| ProtocolError::at(i, &format!("entries[{i}]"), err))?;
                    Ok(if add {
                        Change::Add(entry)
                    } else {
                        Change::Update(entry)
                    })
                })
                .collect::<Result<_, _>>()?;
            let op = if add { BatchOp::Add } else { BatchOp::Update };
            Ok((op, changes))
        }
        "remove" => {
            let table = f.table.ok_or_else(|| missing("table"))?;
            let changes = f
                .keys
                .ok_or_else(|| missing("keys"))?
                .into_iter()
                .enumerate()
                .map(|(i, k)| {
                    Key::from_json(table, k.get())
                        .map(Change::Remove)
                        .map_err(|err| ProtocolError::at(i, &format!("keys[{i}]"), err))
                })
                .collect::<Result<_, _>>()?;
            Ok((BatchOp::Remove, changes))
        }
        "batch" => {
            let changes = f
                .changes
                .ok_or_else(|| missing("changes"))?
                .into_iter()
                .enumerate()
                .map(|(i, c)| {
                    parse_change(c.get()).map_err(|(f, r)| {
                        ProtocolError::new(Some(i), join(&format!("changes[{i}]"), &f), r)
                    })
                })
                .collect::<Result<_, _>>()?;
            Ok((BatchOp::Batch, changes))
        }
        other => Err(ProtocolError::new(
            None,
            "op",
            format!("not a batch op: {other:?}"),
        )),
    }
}

fn fields(names: &[&str]) -> String {
    if names.is_empty() {
        "none besides op".to_string()
    } else {
        names.join(", ")
    }
}

/// Decode one change of a `batch` request, or of a journal record.
/// Errors are `(path within the change, reason)`.
pub fn parse_change(text: &str) -> Result<Change, (String, String)> {
    let c: RawChange<'_> = de(text)?;
    let table: Table = c.table.parse().map_err(|r| ("table".to_string(), r))?;
    let with_entry = |e: Option<&RawValue>| -> Result<Entry, (String, String)> {
        let e = e.ok_or_else(|| {
            (
                "entry".to_string(),
                format!("missing: op {:?} needs an entry", c.op),
            )
        })?;
        if c.key.is_some() {
            return Err(("key".into(), format!("not a field of op {:?}", c.op)));
        }
        Entry::from_json(table, e.get()).map_err(|m| (join("entry", &m.field), m.reason))
    };
    match c.op.as_str() {
        "add" => Ok(Change::Add(with_entry(c.entry)?)),
        "update" => Ok(Change::Update(with_entry(c.entry)?)),
        "remove" => {
            if c.entry.is_some() {
                return Err(("entry".into(), "not a field of op \"remove\"".into()));
            }
            let k = c.key.ok_or_else(|| {
                (
                    "key".to_string(),
                    "missing: op \"remove\" needs a key".to_string(),
                )
            })?;
            Key::from_json(table, k.get())
                .map(Change::Remove)
                .map_err(|m| (join("key", &m.field), m.reason))
        }
        other => Err((
            "op".into(),
            format!("unknown change op {other:?}: expected add, update or remove"),
        )),
    }
}

/// One response line. Fields that do not apply are left out.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Response {
    pub ok: bool,
    /// Changes applied by this request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<usize>,
    /// The sequence number after it (stats: the current one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<Entry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<Table>,
    /// Rows in the listed table (a page may hold fewer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entries: Option<Vec<Entry>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tables: Option<Vec<TableInfo>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreStats>,
    /// `stats` from a running appliance: the fast-path tables and the
    /// workers' counters (see [`crate::server::Dataplane::stats`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataplane: Option<serde_json::Value>,
    /// `stats`: signed coupons (see `crate::coupons::Coupons::stats`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coupons: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ProtocolError>,
}

impl Response {
    pub fn applied(a: Applied) -> Response {
        Response {
            ok: true,
            changes: Some(a.changes),
            seq: Some(a.seq),
            ..Response::default()
        }
    }

    pub fn entry(e: Entry) -> Response {
        Response {
            ok: true,
            entry: Some(e),
            ..Response::default()
        }
    }

    pub fn list(table: Table, total: usize, entries: Vec<Entry>) -> Response {
        Response {
            ok: true,
            table: Some(table),
            total: Some(total),
            entries: Some(entries),
            ..Response::default()
        }
    }

    pub fn tables(tables: Vec<TableInfo>) -> Response {
        Response {
            ok: true,
            tables: Some(tables),
            ..Response::default()
        }
    }

    pub fn stats(seq: u64, tables: Vec<TableInfo>, store: Option<StoreStats>) -> Response {
        Response {
            ok: true,
            seq: Some(seq),
            tables: Some(tables),
            store,
            ..Response::default()
        }
    }

    /// A batch that was not applied: refused (the error points into the
    /// request) or not made durable.
    pub fn commit_error(op: BatchOp, e: CommitError) -> Response {
        match e {
            CommitError::Rejected(e) => Response::error(ProtocolError::from_batch(op, &e)),
            CommitError::Store(e) => {
                Response::error(ProtocolError::new(None, "", format!("not applied: {e}")))
            }
        }
    }

    pub fn error(e: ProtocolError) -> Response {
        Response {
            ok: false,
            error: Some(e),
            ..Response::default()
        }
    }

    /// The response as one line of JSON, newline included.
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("responses always serialize");
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::Level;

    #[test]
    fn a_storm_request_takes_the_fast_path_and_others_the_general_one() {
        let fast = |line: &str| {
            serde_json::from_str::<FastRows<false>>(line)
                .ok()
                .and_then(|f| f.0)
                .map(|(op, c)| (op, c.len()))
        };
        let row = r#"{"id":"f1","subscriber":"11.0.0.1","decision":{"level":"premium","dscp":34}}"#;
        let line = format!(r#"{{"op":"update","table":"coupon","entries":[{row},{row}]}}"#);
        assert_eq!(fast(&line), Some((BatchOp::Update, 2)));
        let line = format!(r#" {{ "op" : "add" , "table":"coupon", "entries" : [ {row} ] }} "#);
        assert_eq!(fast(&line), Some((BatchOp::Add, 1)));
        for other in [
            format!(r#"{{"entries":[{row}],"op":"update","table":"coupon"}}"#),
            format!(r#"{{"op":"update","entries":[{row}],"table":"coupon"}}"#),
            format!(r#"{{"op":"update","table":"coupon","entries":[{row}],"op":"add"}}"#),
            r#"{"op":"remove","table":"coupon","keys":[{"id":"f1"}]}"#.to_string(),
            r#"{"op":"stats"}"#.to_string(),
        ] {
            assert_eq!(fast(&other), None, "{other}");
        }
        // A bad row makes the fast path give up, and the general path
        // name it.
        let bad = r#"{"op":"update","table":"coupon","entries":[{"id":"f1","subscriber":"11.0.0.256","decision":{"level":1}}]}"#;
        assert_eq!(fast(bad), None);
        assert_eq!(err(bad).field, "entries[0].subscriber");
    }

    fn err(line: &str) -> ProtocolError {
        parse_request(line).expect_err(line)
    }

    const EXAMPLES: &str = include_str!("protocol.rs");

    /// Every request example in the module doc parses.
    #[test]
    fn every_documented_request_parses() {
        let mut n = 0;
        for line in EXAMPLES.lines() {
            let Some(json) = line.strip_prefix("//! {\"op\"") else {
                continue;
            };
            let json = format!("{{\"op\"{json}");
            parse_request(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
            n += 1;
        }
        assert!(n >= 14, "{n} examples");
    }

    #[test]
    fn every_op_parses_to_its_request() {
        let r = parse_request(
            r#"{"op":"add","table":"tier","entries":[{"name":"g","decision":{"level":"voice"}}]}"#,
        )
        .unwrap();
        match r {
            Request::Apply {
                op: BatchOp::Add,
                changes,
            } => match &changes[..] {
                [Change::Add(Entry::Tier(t))] => assert_eq!(t.decision().level(), Level::Voice),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_request(r#"{"op":"update","table":"default","entries":[{"level":5}]}"#).unwrap(),
            Request::Apply { op: BatchOp::Update, changes } if matches!(changes[..], [Change::Update(Entry::Default(_))])
        ));
        assert!(matches!(
            parse_request(r#"{"op":"remove","table":"login","keys":[{"subscriber":"::1"}]}"#).unwrap(),
            Request::Apply { op: BatchOp::Remove, changes } if matches!(changes[..], [Change::Remove(Key::Login(_))])
        ));
        assert!(matches!(
            parse_request(r#"{"op":"get","table":"default"}"#).unwrap(),
            Request::Get { key: Key::Default }
        ));
        assert_eq!(
            parse_request(r#"{"op":"list","table":"sp"}"#).unwrap(),
            Request::List {
                table: Table::Sp,
                offset: 0,
                limit: DEFAULT_LIST_LIMIT
            }
        );
        assert_eq!(
            parse_request("{\"op\":\"stats\"}\r\n").unwrap(),
            Request::Stats
        );
        assert_eq!(
            parse_request(r#"{"op":"tables"}"#).unwrap(),
            Request::Tables
        );
    }

    #[test]
    fn unknown_fields_are_named() {
        let e = err(r#"{"op":"stats","verbose":true}"#);
        assert_eq!(e.field, "verbose");
        assert!(e.reason.contains("unknown field `verbose`"), "{e}");
        let e = err(r#"{"op":"stats","table":"coupon"}"#);
        assert_eq!(e.field, "table");
        let e = err(
            r#"{"op":"add","table":"login","entries":[{"subscriber":"10.0.0.1","login":"a","tier":"t"},{"subscriber":"10.0.0.2","login":"a","tier":"t","colour":"red"}]}"#,
        );
        assert_eq!(e.index, Some(1));
        assert_eq!(e.field, "entries[1].colour");
        assert!(e.reason.contains("unknown field `colour`"), "{e}");
        let e = err(
            r#"{"op":"batch","changes":[{"op":"add","table":"tier","entry":{"name":"g","decision":{"level":1,"speed":3}}}]}"#,
        );
        assert_eq!(e.field, "changes[0].entry.decision.speed");
        assert!(e.reason.contains("unknown field `speed`"), "{e}");
    }

    #[test]
    fn bad_values_name_their_field() {
        let e = err(
            r#"{"op":"add","table":"coupon","entries":[{"id":"a","subscriber":"10.0.0.1","decision":{"level":1}},{"id":"b","subscriber":"10.0.0.300","decision":{"level":1}}]}"#,
        );
        assert_eq!(
            (e.index, e.field.as_str()),
            (Some(1), "entries[1].subscriber")
        );
        assert!(e.reason.contains("bad IP address \"10.0.0.300\""), "{e}");
        let e = err(r#"{"op":"add","table":"eligibility","entries":[{"dst":"10.0.0.0/33"}]}"#);
        assert_eq!(e.field, "entries[0].dst");
        assert!(e.reason.contains("bad prefix"), "{e}");
        let e =
            err(r#"{"op":"add","table":"tier","entries":[{"name":"g","decision":{"level":8}}]}"#);
        assert_eq!(e.field, "entries[0].decision.level");
        assert!(e.reason.contains("level 8 is not valid"), "{e}");
        let e = err(r#"{"op":"remove","table":"eligibility","keys":[{"dst":"10.1.0.0/8"}]}"#);
        assert_eq!(e.field, "keys[0].dst");
        assert!(e.reason.contains("host bits"), "{e}");
        let e = err(r#"{"op":"remove","table":"coupon","keys":[{"name":"x"}]}"#);
        assert_eq!(e.field, "keys[0].name");
        let e = err(r#"{"op":"get","table":"tier","key":{}}"#);
        assert_eq!(e.field, "key.name");
        let e = err(r#"{"op":"list","table":"coupon","limit":0}"#);
        assert_eq!(e.field, "limit");
        let e = err(r#"{"op":"list","table":"coupon","limit":"ten"}"#);
        assert_eq!(e.field, "limit");
        let e = err(r#"{"op":"list","table":"coupons"}"#);
        assert_eq!(e.field, "table");
        let e = err(r#"{"op":"frob"}"#);
        assert_eq!(e.field, "op");
        let e = err(r#"{"op":"add","table":"tier"}"#);
        assert_eq!(e.field, "entries");
        let e = err(
            r#"{"op":"batch","changes":[{"op":"remove","table":"tier","entry":{"name":"g"}}]}"#,
        );
        assert_eq!((e.index, e.field.as_str()), (Some(0), "changes[0].entry"));
        let e = err(
            r#"{"op":"batch","changes":[{"op":"add","table":"sp","entry":{"id":"s","provider":"p","ip":"192.0.2.1","decision":{"level":"voice","dscp":99}}}]}"#,
        );
        assert_eq!(e.field, "changes[0].entry.decision.dscp");
        assert!(e.reason.contains("0..=63"), "{e}");
    }

    #[test]
    fn truncated_and_malformed_json_say_so() {
        let full = r#"{"op":"add","table":"tier","entries":[{"name":"g","decision":{"level":1}}]}"#;
        for cut in 1..full.len() {
            let e = err(&full[..cut]);
            assert!(
                e.reason.starts_with("truncated JSON") || e.reason.starts_with("malformed JSON"),
                "{cut}: {e}"
            );
        }
        assert!(err(&full[..30]).reason.starts_with("truncated JSON"));
        assert!(err(r#"{"op":"stats"}}"#).reason.contains("trailing"));
        assert!(err(r#"{"op" "stats"}"#)
            .reason
            .starts_with("malformed JSON"));
        assert!(err("").reason.contains("empty request"));
        assert!(err("[1,2]").reason.contains("invalid type"));
    }

    #[test]
    fn an_overlong_line_is_refused_before_parsing() {
        let line = format!(r#"{{"op":"stats","x":"{}"}}"#, "a".repeat(MAX_LINE_BYTES));
        let e = err(&line);
        assert!(
            e.reason.contains(&format!("limit is {MAX_LINE_BYTES}")),
            "{e}"
        );
    }

    #[test]
    fn responses_serialize_as_documented() {
        assert_eq!(
            Response::applied(Applied {
                changes: 3,
                seq: 1042
            })
            .to_line(),
            "{\"ok\":true,\"changes\":3,\"seq\":1042}\n"
        );
        let e = ProtocolError::new(Some(3), "entries[3].subscriber", "bad");
        assert_eq!(
            Response::error(e).to_line(),
            "{\"ok\":false,\"error\":{\"index\":3,\"field\":\"entries[3].subscriber\",\"reason\":\"bad\"}}\n"
        );
    }
}
