//! The client side of the control socket: what `sluicectl` is built on.
//!
//! - [`Client`]: one connection to the appliance's control socket. A
//!   request is one line out, its response one line back (see
//!   [`crate::policy::protocol`]). A request is checked here with the
//!   appliance's own parser before it is sent, so a bad value is reported
//!   the same way whether or not the appliance is running, and never costs
//!   a round trip.
//! - Request builders ([`add`], [`update`], [`remove`], [`batch`], [`get`],
//!   [`list`], [`stats`], [`tables`]) and readers of operator input
//!   ([`json_values`], [`batch_request`], [`key_arg`]).
//! - [`Batcher`]: cuts a stream of entries into `add` requests of at most
//!   so many rows and at most [`MAX_LINE_BYTES`].
//! - [`check_csv`] and [`send_csv`]: a CSV import in two passes, so that a
//!   bad row is found before anything of the file is applied.
//! - Human output: [`render_applied`], [`render_entry`], [`render_list`],
//!   [`render_tables`], [`render_stats`], over the response's JSON. They
//!   never panic on a response of an unexpected shape (a newer appliance,
//!   a broken one): what they cannot place they show as it is.
use std::collections::VecDeque;
use std::fmt;
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Map, Value};
use thiserror::Error;

use crate::policy::csv::{CsvError, CsvImport};
use crate::policy::model::KeySpec;
use crate::policy::protocol::{
    parse_request, ProtocolError, Response, MAX_LINE_BYTES, MAX_LIST_LIMIT,
};
use crate::policy::{Change, Table};

/// Where the appliance listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/sluice/control.sock";

/// The longest response line read. A full `list` page is a few MB; this
/// only stops a broken peer from making the client allocate without end.
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a request got no `"ok":true` answer.
#[derive(Debug, Error)]
pub enum ClientError {
    /// Nothing listens on the socket path (missing file, or a stale one).
    #[error("cannot connect to the control socket {}: {source}; is the appliance (sluice) running? (--socket or SLUICE_SOCKET name another path)", path.display())]
    NotRunning { path: PathBuf, source: io::Error },
    /// The socket is root-only (mode 0600).
    #[error("cannot connect to the control socket {}: permission denied: it is root-only (mode 0600), run sluicectl as root", path.display())]
    PermissionDenied { path: PathBuf },
    #[error("control socket {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// No response in time. The request may still be applied: the
    /// connection is not used again.
    #[error("control socket {}: no response within {:.1} s (--timeout); the request may still have been applied", path.display(), timeout.as_secs_f64())]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("control socket {}: the appliance closed the connection before answering", path.display())]
    Closed { path: PathBuf },
    /// A response that is not what the protocol says.
    #[error("malformed response from the appliance: {reason}: {excerpt}")]
    Malformed { reason: String, excerpt: String },
    /// The request was refused: by the appliance (`response` is its line),
    /// or here, by the same check, before sending (`response` is `None`).
    #[error("{}", describe(error))]
    Refused {
        error: ProtocolError,
        response: Option<String>,
    },
}

impl ClientError {
    fn refused_here(error: ProtocolError) -> ClientError {
        ClientError::Refused {
            error,
            response: None,
        }
    }

    fn malformed(reason: impl Into<String>, text: &str) -> ClientError {
        const SHOWN: usize = 200;
        let excerpt = match text.char_indices().nth(SHOWN) {
            Some((i, _)) => format!("{}...", &text[..i]),
            None => text.to_string(),
        };
        ClientError::Malformed {
            reason: reason.into(),
            excerpt,
        }
    }

    /// The JSON line that stands for this error in `--json` output: the
    /// appliance's own, or the one it would have sent.
    pub fn response_line(&self) -> Option<String> {
        match self {
            ClientError::Refused {
                response: Some(line),
                ..
            } => Some(line.clone()),
            ClientError::Refused { error, .. } => {
                let line = Response::error(error.clone()).to_line();
                Some(line.trim_end().to_string())
            }
            _ => None,
        }
    }
}

/// `field: reason (index N)`, or the reason alone when the error is about
/// the whole request.
pub fn describe(e: &ProtocolError) -> String {
    let mut s = if e.field.is_empty() {
        e.reason.clone()
    } else {
        format!("{}: {}", e.field, e.reason)
    };
    if let Some(i) = e.index {
        s.push_str(&format!(" (index {i})"));
    }
    s
}

/// Operator input (a JSON argument or file) that is not usable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{what}: {reason}")]
pub struct InputError {
    pub what: String,
    pub reason: String,
}

fn input_err(what: &str, reason: impl Into<String>) -> InputError {
    InputError {
        what: what.to_string(),
        reason: reason.into(),
    }
}

// ---------------------------------------------------------------------------
// Connection
// ---------------------------------------------------------------------------

/// An `"ok":true` response: its line (no newline) and its JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub line: String,
    pub value: Value,
}

impl Reply {
    fn u64(&self, field: &str) -> Option<u64> {
        self.value.get(field).and_then(Value::as_u64)
    }
}

/// One connection to the control socket.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    timeout: Option<Duration>,
    stream: BufReader<UnixStream>,
    /// Set when a request's outcome is unknown (timeout, torn line): a late
    /// response would be taken for the next request's.
    broken: bool,
}

impl Client {
    /// Connect; `timeout` bounds each write and each wait for a response.
    pub fn connect(path: &Path, timeout: Option<Duration>) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| match source.kind() {
            ErrorKind::NotFound | ErrorKind::ConnectionRefused => ClientError::NotRunning {
                path: path.to_owned(),
                source,
            },
            ErrorKind::PermissionDenied => ClientError::PermissionDenied {
                path: path.to_owned(),
            },
            _ => ClientError::Io {
                path: path.to_owned(),
                source,
            },
        })?;
        let io = |source| ClientError::Io {
            path: path.to_owned(),
            source,
        };
        // A zero timeout means "none" to the caller; set_*_timeout refuses it.
        let timeout = timeout.filter(|t| !t.is_zero());
        stream.set_read_timeout(timeout).map_err(io)?;
        stream.set_write_timeout(timeout).map_err(io)?;
        Ok(Client {
            path: path.to_owned(),
            timeout,
            stream: BufReader::new(stream),
            broken: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Check `request` as the appliance would, send it, and return the
    /// response.
    pub fn call(&mut self, request: &Value) -> Result<Reply, ClientError> {
        let line = checked_line(request)?;
        self.call_line(&line)
    }

    /// Send a request line that is known to be valid (it is not parsed
    /// here, only its length is checked) and return the response.
    pub fn call_line(&mut self, line: &str) -> Result<Reply, ClientError> {
        if line.len() > MAX_LINE_BYTES {
            return Err(ClientError::refused_here(ProtocolError::line_too_long(
                line.len(),
            )));
        }
        if self.broken {
            return Err(ClientError::Closed {
                path: self.path.clone(),
            });
        }
        self.write_line(line)?;
        let text = self.read_line()?;
        parse_response(text)
    }

    fn io_error(&mut self, source: io::Error) -> ClientError {
        self.broken = true;
        match source.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => ClientError::Timeout {
                path: self.path.clone(),
                timeout: self.timeout.unwrap_or_default(),
            },
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof => {
                ClientError::Closed {
                    path: self.path.clone(),
                }
            }
            _ => ClientError::Io {
                path: self.path.clone(),
                source,
            },
        }
    }

    fn write_line(&mut self, line: &str) -> Result<(), ClientError> {
        let w = self.stream.get_mut();
        let r = w
            .write_all(line.as_bytes())
            .and_then(|()| w.write_all(b"\n"))
            .and_then(|()| w.flush());
        r.map_err(|e| self.io_error(e))
    }

    fn read_line(&mut self) -> Result<String, ClientError> {
        let mut buf = Vec::new();
        let limit = MAX_RESPONSE_BYTES as u64 + 1;
        let n = (&mut self.stream)
            .take(limit)
            .read_until(b'\n', &mut buf)
            .map_err(|e| self.io_error(e))?;
        if n == 0 {
            self.broken = true;
            return Err(ClientError::Closed {
                path: self.path.clone(),
            });
        }
        if buf.last() != Some(&b'\n') {
            self.broken = true;
            if buf.len() > MAX_RESPONSE_BYTES {
                return Err(ClientError::malformed(
                    format!("response longer than {MAX_RESPONSE_BYTES} bytes"),
                    &String::from_utf8_lossy(&buf[..200]),
                ));
            }
            return Err(ClientError::Closed {
                path: self.path.clone(),
            });
        }
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        String::from_utf8(buf).map_err(|e| {
            self.broken = true;
            ClientError::malformed("not UTF-8", &String::from_utf8_lossy(e.as_bytes()))
        })
    }
}

/// The request as one line, if the appliance's parser accepts it.
pub fn checked_line(request: &Value) -> Result<String, ClientError> {
    let line = request.to_string();
    parse_request(&line).map_err(ClientError::refused_here)?;
    Ok(line)
}

/// Read one response line: `Ok` for `"ok":true`, `Refused` for a well
/// formed error, `Malformed` for anything else.
pub fn parse_response(line: String) -> Result<Reply, ClientError> {
    let value: Value = match serde_json::from_str(&line) {
        Ok(v) => v,
        Err(e) => return Err(ClientError::malformed(format!("not JSON ({e})"), &line)),
    };
    match value.get("ok") {
        Some(Value::Bool(true)) => Ok(Reply { line, value }),
        Some(Value::Bool(false)) => {
            let error = value
                .get("error")
                .cloned()
                .and_then(|e| serde_json::from_value::<ProtocolError>(e).ok());
            match error {
                Some(error) => Err(ClientError::Refused {
                    error,
                    response: Some(line),
                }),
                None => Err(ClientError::malformed(
                    "\"ok\":false without an error {\"field\",\"reason\"}",
                    &line,
                )),
            }
        }
        _ => Err(ClientError::malformed(
            "expected an object with \"ok\": true or false",
            &line,
        )),
    }
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

/// `{"op":"add","table":..,"entries":[..]}`.
pub fn add(table: Table, entries: Vec<Value>) -> Value {
    json!({"op": "add", "table": table, "entries": entries})
}

/// `{"op":"update","table":..,"entries":[..]}`.
pub fn update(table: Table, entries: Vec<Value>) -> Value {
    json!({"op": "update", "table": table, "entries": entries})
}

/// `{"op":"remove","table":..,"keys":[..]}`.
pub fn remove(table: Table, keys: Vec<Value>) -> Value {
    json!({"op": "remove", "table": table, "keys": keys})
}

/// `{"op":"batch","changes":[..]}`.
pub fn batch(changes: Vec<Value>) -> Value {
    json!({"op": "batch", "changes": changes})
}

/// `{"op":"get","table":..,"key":..}`; the default decision has no key.
pub fn get(table: Table, key: Option<Value>) -> Value {
    let mut r = json!({"op": "get", "table": table});
    if let Some(k) = key {
        r["key"] = k;
    }
    r
}

/// `{"op":"list","table":..,"offset"?,"limit"?}`.
pub fn list(table: Table, offset: Option<u64>, limit: Option<u64>) -> Value {
    let mut r = json!({"op": "list", "table": table});
    if let Some(o) = offset {
        r["offset"] = o.into();
    }
    if let Some(l) = limit {
        r["limit"] = l.into();
    }
    r
}

pub fn stats() -> Value {
    json!({"op": "stats"})
}

pub fn tables() -> Value {
    json!({"op": "tables"})
}

/// The JSON values in `text`: one array, or values one after another
/// (JSON lines). An array's elements count one by one, so `[{..},{..}]`,
/// `{..} {..}` and one object per line all give two values. `what` names
/// the text in errors (a file name, `argument 2`).
pub fn json_values(text: &str, what: &str) -> Result<Vec<Value>, InputError> {
    let mut out = Vec::new();
    for v in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
        match v.map_err(|e| input_err(what, format!("not JSON: {e}")))? {
            Value::Array(items) => out.extend(items),
            v => out.push(v),
        }
    }
    if out.is_empty() {
        return Err(input_err(what, "no JSON value in it"));
    }
    Ok(out)
}

/// A `batch` request from a file: either the whole request
/// (`{"op":"batch","changes":[..]}`) or its changes (an array, or one per
/// line).
pub fn batch_request(text: &str, what: &str) -> Result<Value, InputError> {
    let values = json_values(text, what)?;
    if let [one] = &values[..] {
        if one.get("op").and_then(Value::as_str) == Some("batch") {
            return Ok(one.clone());
        }
    }
    Ok(batch(values))
}

/// One key from a command-line argument: a JSON object as is, or the value
/// of the table's key field (`cp-1` for a coupon, `10.0.0.7` for a login,
/// a prefix for an eligibility rule, whose optional `port` comes apart).
pub fn key_arg(table: Table, arg: &str, port: Option<u16>) -> Result<Value, InputError> {
    let what = format!("key {arg:?}");
    if arg.trim_start().starts_with('{') {
        if port.is_some() {
            return Err(input_err(
                &what,
                "--port goes with a plain prefix, not a JSON key",
            ));
        }
        return serde_json::from_str(arg).map_err(|e| input_err(&what, format!("not JSON: {e}")));
    }
    let value = Some(arg.to_string());
    let spec = match table {
        Table::Coupon | Table::Sp => KeySpec {
            id: value,
            ..KeySpec::default()
        },
        Table::Login => KeySpec {
            subscriber: value,
            ..KeySpec::default()
        },
        Table::Tier => KeySpec {
            name: value,
            ..KeySpec::default()
        },
        Table::Eligibility => KeySpec {
            dst: value,
            port: port.map(u64::from),
            ..KeySpec::default()
        },
        Table::Default => return Err(input_err(&what, "the default decision has no key")),
    };
    if port.is_some() && table != Table::Eligibility {
        return Err(input_err(
            &what,
            format!("--port is part of the key of table eligibility only, not {table}"),
        ));
    }
    serde_json::to_value(spec).map_err(|e| input_err(&what, e.to_string()))
}

// ---------------------------------------------------------------------------
// Batches
// ---------------------------------------------------------------------------

/// One `add` request cut by a [`Batcher`]: its line (no newline) and the
/// source line (in the CSV file) of each of its entries, in order, so that
/// an error's `index` can be traced back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub line: String,
    pub source_lines: Vec<u64>,
}

impl Batch {
    pub fn rows(&self) -> usize {
        self.source_lines.len()
    }

    pub fn span(&self) -> BatchSpan {
        BatchSpan {
            first_line: self.source_lines.first().copied().unwrap_or(0),
            last_line: self.source_lines.last().copied().unwrap_or(0),
            rows: self.rows(),
        }
    }
}

/// Which source lines a batch covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSpan {
    pub first_line: u64,
    pub last_line: u64,
    pub rows: usize,
}

impl fmt::Display for BatchSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows = if self.rows == 1 { "row" } else { "rows" };
        if self.first_line == self.last_line {
            write!(f, "line {} ({} {rows})", self.first_line, self.rows)
        } else {
            write!(
                f,
                "lines {}-{} ({} {rows})",
                self.first_line, self.last_line, self.rows
            )
        }
    }
}

/// An entry that cannot fit a request line even alone.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {source_line}: the entry is {bytes} bytes of JSON, more than a request line may hold ({max_bytes} bytes)")]
pub struct OversizeEntry {
    pub source_line: u64,
    pub bytes: usize,
    pub max_bytes: usize,
}

const BATCH_TAIL: &str = "]}";

/// Cuts a stream of entries into `add` requests of at most `max_rows`
/// entries and at most `max_bytes` bytes of line each. A batch is cut as
/// soon as it is full, so it can be sent while the next one is read.
#[derive(Debug)]
pub struct Batcher {
    head: String,
    max_rows: usize,
    max_bytes: usize,
    line: String,
    source_lines: Vec<u64>,
    ready: VecDeque<Batch>,
}

impl Batcher {
    /// `max_rows` is at least 1; `max_bytes` is normally
    /// [`MAX_LINE_BYTES`].
    pub fn new(table: Table, max_rows: usize, max_bytes: usize) -> Batcher {
        let head = format!(r#"{{"op":"add","table":"{table}","entries":["#);
        Batcher {
            line: head.clone(),
            head,
            max_rows: max_rows.max(1),
            max_bytes,
            source_lines: Vec::new(),
            ready: VecDeque::new(),
        }
    }

    /// Append one entry (its JSON text) read from `source_line`.
    pub fn push(&mut self, entry_json: &str, source_line: u64) -> Result<(), OversizeEntry> {
        let alone = self.head.len() + entry_json.len() + BATCH_TAIL.len();
        if alone > self.max_bytes {
            return Err(OversizeEntry {
                source_line,
                bytes: entry_json.len(),
                max_bytes: self.max_bytes,
            });
        }
        if !self.source_lines.is_empty()
            && self.line.len() + 1 + entry_json.len() + BATCH_TAIL.len() > self.max_bytes
        {
            self.cut();
        }
        if !self.source_lines.is_empty() {
            self.line.push(',');
        }
        self.line.push_str(entry_json);
        self.source_lines.push(source_line);
        if self.source_lines.len() >= self.max_rows {
            self.cut();
        }
        Ok(())
    }

    /// Cut what is left into a last batch.
    pub fn finish(&mut self) {
        if !self.source_lines.is_empty() {
            self.cut();
        }
    }

    /// The next full batch, oldest first.
    pub fn next_ready(&mut self) -> Option<Batch> {
        self.ready.pop_front()
    }

    fn cut(&mut self) {
        let mut line = std::mem::replace(&mut self.line, self.head.clone());
        line.push_str(BATCH_TAIL);
        self.ready.push_back(Batch {
            line,
            source_lines: std::mem::take(&mut self.source_lines),
        });
    }
}

// ---------------------------------------------------------------------------
// CSV import
// ---------------------------------------------------------------------------

/// The first pass of an import: every row of `input` is read and checked
/// (values, and keys and matches unique within the file) without sending
/// anything. Returns the number of rows; `progress` sees the running count
/// every 1,000 rows.
pub fn check_csv<R: Read>(
    table: Table,
    input: R,
    mut progress: impl FnMut(u64),
) -> Result<u64, CsvError> {
    let mut rows = 0u64;
    for change in CsvImport::new(table, input)? {
        change?;
        rows += 1;
        if rows.is_multiple_of(1000) {
            progress(rows);
        }
    }
    progress(rows);
    Ok(rows)
}

/// How an import went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImportReport {
    pub rows: u64,
    pub batches: u64,
}

/// A committed batch, as [`send_csv`] reports it.
#[derive(Debug)]
pub struct Committed<'a> {
    pub span: BatchSpan,
    /// Rows committed so far, this batch included.
    pub total_rows: u64,
    pub reply: &'a Reply,
}

/// An import that stopped. Batches are atomic: `committed_rows` were
/// applied (up to source line `committed_through`), the failing batch was
/// not (or, after a connection failure, may or may not have been), and
/// nothing after it was sent.
#[derive(Debug, Error)]
pub struct ImportError {
    pub committed_rows: u64,
    pub committed_through: Option<u64>,
    pub failure: ImportFailure,
}

#[derive(Debug)]
pub enum ImportFailure {
    /// A bad row (or header) in the file.
    Csv(CsvError),
    /// An entry too large for any request.
    Oversize(OversizeEntry),
    /// The appliance refused a batch; `source_line` is the line of the
    /// entry its error points at (`error.index`), if it points at one.
    Refused {
        error: ProtocolError,
        response: Option<String>,
        span: BatchSpan,
        source_line: Option<u64>,
    },
    /// The connection failed with a batch in flight: whether that batch was
    /// applied is unknown.
    Connection { error: ClientError, span: BatchSpan },
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.failure {
            ImportFailure::Csv(e) => write!(f, "{e}")?,
            ImportFailure::Oversize(e) => write!(f, "{e}")?,
            ImportFailure::Refused {
                error,
                span,
                source_line,
                ..
            } => {
                if let Some(line) = source_line {
                    write!(f, "line {line}: ")?;
                }
                write!(f, "{}", describe(error))?;
                write!(
                    f,
                    "\nthe refused batch, {span}, was not applied (a batch is all or nothing)"
                )?;
            }
            ImportFailure::Connection { error, span } => write!(
                f,
                "{error}\nthe batch in flight, {span}, may or may not have been applied (check with `list` or `get`)"
            )?,
        }
        match (self.committed_rows, self.committed_through) {
            (0, _) | (_, None) => write!(f, "\nno rows were committed before it"),
            (n, Some(last)) => write!(
                f,
                "\n{n} rows were committed before it (up to line {last}); nothing after was sent"
            ),
        }
    }
}

/// The second pass of an import: read the file again (`open` opens it;
/// it is read twice, once for the rows and once for their line numbers)
/// and send it as `add` requests of at most `batch_rows` rows and
/// `max_line_bytes` bytes, each answered before the next is sent. Stops at
/// the first failure. `on_commit` sees each committed batch (progress,
/// `--json` output).
pub fn send_csv<R: Read>(
    client: &mut Client,
    table: Table,
    open: impl Fn() -> io::Result<R>,
    batch_rows: usize,
    max_line_bytes: usize,
    mut on_commit: impl FnMut(&Committed<'_>),
) -> Result<ImportReport, Box<ImportError>> {
    let mut report = ImportReport::default();
    let mut through = None;
    let fail = |report: &ImportReport, through, failure| {
        Box::new(ImportError {
            committed_rows: report.rows,
            committed_through: through,
            failure,
        })
    };
    let unreadable = |e: io::Error| {
        ImportFailure::Csv(CsvError {
            line: 0,
            column: String::new(),
            reason: format!("cannot read the file: {e}"),
        })
    };
    let input = open().map_err(|e| fail(&report, through, unreadable(e)))?;
    let mut rows =
        CsvImport::new(table, input).map_err(|e| fail(&report, through, ImportFailure::Csv(e)))?;
    let mut lines = open()
        .map(RowLines::new)
        .map_err(|e| fail(&report, through, unreadable(e)))?;
    let mut batcher = Batcher::new(table, batch_rows, max_line_bytes);
    loop {
        let done = match rows.next() {
            Some(Ok(change)) => {
                let entry = match &change {
                    Change::Add(e) | Change::Update(e) => e,
                    Change::Remove(_) => continue, // CsvImport yields adds only.
                };
                // An entry is plain strings and numbers: it serializes.
                let json = serde_json::to_string(entry).unwrap_or_default();
                let line = lines.next().unwrap_or(0);
                batcher
                    .push(&json, line)
                    .map_err(|e| fail(&report, through, ImportFailure::Oversize(e)))?;
                false
            }
            Some(Err(e)) => return Err(fail(&report, through, ImportFailure::Csv(e))),
            None => {
                batcher.finish();
                true
            }
        };
        while let Some(b) = batcher.next_ready() {
            let span = b.span();
            match client.call_line(&b.line) {
                Ok(reply) => {
                    report.rows += b.rows() as u64;
                    report.batches += 1;
                    through = Some(span.last_line);
                    on_commit(&Committed {
                        span,
                        total_rows: report.rows,
                        reply: &reply,
                    });
                }
                Err(ClientError::Refused { error, response }) => {
                    let source_line = error.index.and_then(|i| b.source_lines.get(i).copied());
                    return Err(fail(
                        &report,
                        through,
                        ImportFailure::Refused {
                            error,
                            response,
                            span,
                            source_line,
                        },
                    ));
                }
                Err(error) => {
                    return Err(fail(
                        &report,
                        through,
                        ImportFailure::Connection { error, span },
                    ))
                }
            }
        }
        if done {
            return Ok(report);
        }
    }
}

/// The line of each data row of a CSV file, read with the same settings as
/// [`CsvImport`] (header, comments, trimming), so that its rows line up
/// with the importer's one for one. The importer numbers its errors the
/// same way; it does not say the line of a good row.
struct RowLines<R: Read> {
    rdr: ::csv::Reader<R>,
    rec: ::csv::ByteRecord,
}

impl<R: Read> RowLines<R> {
    fn new(input: R) -> RowLines<R> {
        RowLines {
            rdr: ::csv::ReaderBuilder::new()
                .has_headers(true)
                .trim(::csv::Trim::All)
                .comment(Some(b'#'))
                .from_reader(input),
            rec: ::csv::ByteRecord::new(),
        }
    }
}

impl<R: Read> Iterator for RowLines<R> {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        match self.rdr.read_byte_record(&mut self.rec) {
            Ok(true) => self.rec.position().map(|p| p.line()),
            Ok(false) | Err(_) => None,
        }
    }
}

// ---------------------------------------------------------------------------
// Paging
// ---------------------------------------------------------------------------

/// Every row of `table` from `offset` on, in pages of `page` rows (at most
/// [`MAX_LIST_LIMIT`]), until the `total` the appliance reports is reached.
/// Rows added or removed meanwhile may shift the pages (a row can be
/// missed or seen twice): it is a listing, not a snapshot. `each` sees
/// every page.
pub fn list_pages(
    client: &mut Client,
    table: Table,
    offset: u64,
    page: u64,
    mut each: impl FnMut(&Reply),
) -> Result<u64, ClientError> {
    let page = page.clamp(1, MAX_LIST_LIMIT as u64);
    let mut offset = offset;
    let mut pages = 0;
    loop {
        let reply = client.call(&list(table, Some(offset), Some(page)))?;
        let (Some(total), Some(n)) = (
            reply.u64("total"),
            reply
                .value
                .get("entries")
                .and_then(Value::as_array)
                .map(|e| e.len() as u64),
        ) else {
            return Err(ClientError::malformed(
                "a list response needs \"total\" and \"entries\"",
                &reply.line,
            ));
        };
        each(&reply);
        pages += 1;
        offset += n;
        if n == 0 || offset >= total {
            return Ok(pages);
        }
    }
}

// ---------------------------------------------------------------------------
// Human output
// ---------------------------------------------------------------------------

/// Columns left- or right-aligned, two spaces apart, no trailing blanks.
#[derive(Debug, Clone, Default)]
pub struct TextTable {
    header: Vec<String>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl TextTable {
    /// `columns` are `(name, right-aligned)`.
    pub fn new(columns: &[(&str, bool)]) -> TextTable {
        TextTable {
            header: columns.iter().map(|c| c.0.to_string()).collect(),
            right: columns.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut width: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        for r in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (w, right)) in width.iter().zip(&self.right).enumerate() {
                let cell = r.get(i).map(String::as_str).unwrap_or("");
                let pad = w.saturating_sub(cell.chars().count());
                if i > 0 {
                    line.push_str("  ");
                }
                if *right {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// The columns of a table, in the order of its CSV import (leaf names of
/// the entry's JSON: `decision.rate.peak_bps` is `peak_bps`).
pub fn columns(table: Table) -> &'static [&'static str] {
    match table {
        Table::Coupon => &[
            "id",
            "subscriber",
            "dst",
            "port",
            "level",
            "dscp",
            "dst_port",
            "dst_addr",
            "mss_clamp",
            "committed_bps",
            "peak_bps",
            "expires",
        ],
        Table::Login => &["subscriber", "login", "tier"],
        Table::Tier => &[
            "name",
            "level",
            "dscp",
            "dst_port",
            "dst_addr",
            "mss_clamp",
            "committed_bps",
            "peak_bps",
        ],
        Table::Sp => &[
            "id",
            "provider",
            "ip",
            "prefix",
            "port",
            "level",
            "dscp",
            "dst_port",
            "dst_addr",
            "mss_clamp",
            "committed_bps",
            "peak_bps",
        ],
        Table::Eligibility => &["dst", "port"],
        Table::Default => &[
            "level",
            "dscp",
            "dst_port",
            "dst_addr",
            "mss_clamp",
            "committed_bps",
            "peak_bps",
        ],
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// An entry as `(leaf name, text)` pairs, nested objects flattened (in
/// key order: callers put them in [`columns`] order). Anything but an
/// object is one pair named `value`.
pub fn flatten(entry: &Value) -> Vec<(String, String)> {
    fn walk(m: &Map<String, Value>, out: &mut Vec<(String, String)>) {
        for (k, v) in m {
            match v {
                Value::Object(inner) => walk(inner, out),
                v => out.push((k.clone(), cell(v))),
            }
        }
    }
    let mut out = Vec::new();
    match entry {
        Value::Object(m) => walk(m, &mut out),
        v => out.push(("value".to_string(), cell(v))),
    }
    out
}

/// `ok: 3 changes applied (seq 1042)`.
pub fn render_applied(v: &Value) -> String {
    let seq = v
        .get("seq")
        .and_then(Value::as_u64)
        .map(|s| format!(" (seq {s})"))
        .unwrap_or_default();
    match v.get("changes").and_then(Value::as_u64) {
        Some(1) => format!("ok: 1 change applied{seq}\n"),
        Some(n) => format!("ok: {n} changes applied{seq}\n"),
        None => format!("ok{seq}\n"),
    }
}

/// A `get` response for `table`: one `field  value` line per field, in
/// the table's column order.
pub fn render_entry(table: Table, v: &Value) -> String {
    let Some(entry) = v.get("entry") else {
        return format!("{v}\n");
    };
    let mut fields = flatten(entry);
    let rank = |k: &str| {
        columns(table)
            .iter()
            .position(|c| *c == k)
            .unwrap_or(usize::MAX)
    };
    fields.sort_by_key(|(k, _)| rank(k));
    let mut t = TextTable::new(&[("field", false), ("value", false)]);
    for (k, c) in fields {
        t.row(vec![k, c]);
    }
    // Drop the header: a record reads better without one.
    t.render()
        .lines()
        .skip(1)
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Rows of `table` as an aligned table: the table's columns that any row
/// uses, then any other field in order of appearance.
pub fn render_list(table: Table, entries: &[Value]) -> String {
    if entries.is_empty() {
        return format!("no rows in table {table}\n");
    }
    let rows: Vec<Vec<(String, String)>> = entries.iter().map(flatten).collect();
    let mut cols: Vec<String> = columns(table)
        .iter()
        .filter(|c| {
            rows.iter()
                .any(|r| r.iter().any(|(k, v)| k == *c && !v.is_empty()))
        })
        .map(|c| c.to_string())
        .collect();
    for r in &rows {
        for (k, _) in r {
            if !columns(table).contains(&k.as_str()) && !cols.contains(k) {
                cols.push(k.clone());
            }
        }
    }
    let header: Vec<(&str, bool)> = cols.iter().map(|c| (c.as_str(), false)).collect();
    let mut t = TextTable::new(&header);
    for r in rows {
        t.row(
            cols.iter()
                .map(|c| {
                    r.iter()
                        .find(|(k, _)| k == c)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                })
                .collect(),
        );
    }
    t.render()
}

/// `310 B`, `4.0 KiB`, `1.2 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// The `tables` array of a `tables` or `stats` response, with a total row.
pub fn render_tables(v: &Value) -> String {
    let Some(tables) = v.get("tables").and_then(Value::as_array) else {
        return format!("{v}\n");
    };
    let mut t = TextTable::new(&[
        ("table", false),
        ("entries", true),
        ("generation", true),
        ("memory", true),
    ]);
    let (mut entries, mut bytes) = (0u64, 0u64);
    for row in tables {
        let num = |f: &str| row.get(f).and_then(Value::as_u64);
        entries += num("entries").unwrap_or(0);
        bytes += num("approx_bytes").unwrap_or(0);
        t.row(vec![
            row.get("table").map(cell).unwrap_or_default(),
            row.get("entries").map(cell).unwrap_or_default(),
            row.get("generation").map(cell).unwrap_or_default(),
            num("approx_bytes").map(human_bytes).unwrap_or_default(),
        ]);
    }
    t.row(vec![
        "total".into(),
        entries.to_string(),
        String::new(),
        human_bytes(bytes),
    ]);
    t.render()
}

/// A `stats` response: sequence number, tables, store, and any other
/// field as `name: value`.
pub fn render_stats(v: &Value) -> String {
    let mut out = String::new();
    if let Some(seq) = v.get("seq") {
        out.push_str(&format!("seq: {}\n", cell(seq)));
    }
    if v.get("tables").is_some() {
        out.push('\n');
        out.push_str(&render_tables(v));
    }
    match v.get("store") {
        Some(Value::Object(s)) => {
            let num = |f: &str| s.get(f).and_then(Value::as_u64);
            out.push_str("\nstore:\n");
            let mut t = TextTable::new(&[("", false), ("", false)]);
            if let (Some(b), Some(r)) = (num("journal_bytes"), num("journal_records")) {
                t.row(vec![
                    "  journal".into(),
                    format!("{} in {r} records", human_bytes(b)),
                ]);
            }
            if let (Some(seq), Some(b)) = (num("snapshot_seq"), num("snapshot_bytes")) {
                t.row(vec![
                    "  snapshot".into(),
                    format!("{} at seq {seq}", human_bytes(b)),
                ]);
            }
            for (k, val) in s {
                if !matches!(
                    k.as_str(),
                    "journal_bytes" | "journal_records" | "snapshot_seq" | "snapshot_bytes"
                ) {
                    t.row(vec![format!("  {}", k.replace('_', " ")), cell(val)]);
                }
            }
            out.extend(t.render().lines().skip(1).map(|l| format!("{l}\n")));
        }
        Some(_) | None => out.push_str("\nstore: none (the policy is in memory only)\n"),
    }
    if let Some(levels) = v.pointer("/dataplane/levels").and_then(Value::as_array) {
        let parts: Vec<String> = levels
            .iter()
            .filter(|l| l["packets"].as_u64().unwrap_or(0) > 0)
            .map(|l| format!("L{} {} pkts", cell(&l["level"]), cell(&l["packets"])))
            .collect();
        out.push_str(&format!("packets per level: {}\n", parts.join("  ")));
    }
    for (k, val) in v.as_object().into_iter().flatten() {
        if !matches!(k.as_str(), "ok" | "seq" | "tables" | "store") {
            out.push_str(&format!("{k}: {}\n", cell(val)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;
    use std::sync::{Arc, Mutex};
    use std::thread;

    /// A control socket in a temp dir whose connections are answered,
    /// line by line, by `answer`: `None` closes the connection, `""`
    /// answers nothing, a text without a final newline is sent and the
    /// connection closed.
    fn fake_server(
        answer: impl FnMut(&str) -> Option<String> + Send + 'static,
    ) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let answer = Arc::new(Mutex::new(answer));
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let answer = Arc::clone(&answer);
                thread::spawn(move || {
                    let mut w = conn.try_clone().unwrap();
                    for line in BufReader::new(conn).lines() {
                        let Ok(line) = line else { return };
                        let reply = (answer.lock().unwrap())(&line);
                        match reply {
                            // Silence: the connection stays open.
                            Some(r) if r.is_empty() => {}
                            Some(r) => {
                                // A torn line is followed by a close.
                                if w.write_all(r.as_bytes()).is_err() || !r.ends_with('\n') {
                                    return;
                                }
                            }
                            None => return,
                        }
                    }
                });
            }
        });
        (dir, path)
    }

    fn policy_server() -> (tempfile::TempDir, PathBuf, Arc<Mutex<Policy>>) {
        let policy = Arc::new(Mutex::new(Policy::in_memory()));
        let p = Arc::clone(&policy);
        let (dir, path) = fake_server(move |l| Some(p.lock().unwrap().handle_line(l).to_line()));
        (dir, path, policy)
    }

    fn connect(path: &Path) -> Client {
        Client::connect(path, Some(Duration::from_secs(10))).unwrap()
    }

    fn coupons_csv(n: usize) -> String {
        let mut s = String::from("id,subscriber,level\n");
        for i in 0..n {
            s.push_str(&format!(
                "c{i},10.{}.{}.{},voice\n",
                i >> 16,
                (i >> 8) & 255,
                i & 255
            ));
        }
        s
    }

    #[test]
    fn batches_are_cut_by_rows_and_each_parses_as_an_add() {
        let mut b = Batcher::new(Table::Eligibility, 3, MAX_LINE_BYTES);
        for i in 0..7u64 {
            b.push(&format!(r#"{{"dst":"10.{i}.0.0/16"}}"#), i + 2)
                .unwrap();
        }
        let mut got = Vec::new();
        while let Some(batch) = b.next_ready() {
            got.push(batch);
        }
        assert_eq!(got.len(), 2, "a batch is cut as soon as it is full");
        b.finish();
        got.extend(b.next_ready());
        assert!(b.next_ready().is_none());
        let rows: Vec<usize> = got.iter().map(Batch::rows).collect();
        assert_eq!(rows, [3, 3, 1]);
        assert_eq!(got[1].source_lines, [5, 6, 7]);
        assert_eq!(got[1].span().to_string(), "lines 5-7 (3 rows)");
        assert_eq!(got[2].span().to_string(), "line 8 (1 row)");
        for batch in &got {
            match parse_request(&batch.line).unwrap() {
                crate::policy::Request::Apply { changes, .. } => {
                    assert_eq!(changes.len(), batch.rows())
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_batch_that_would_pass_the_line_limit_is_split() {
        let entry = r#"{"dst":"10.0.0.0/16"}"#;
        let head = r#"{"op":"add","table":"eligibility","entries":["#.len();
        // Room for exactly three entries.
        let max = head + 3 * entry.len() + 2 + BATCH_TAIL.len();
        let mut b = Batcher::new(Table::Eligibility, 1000, max);
        for i in 0..8 {
            b.push(entry, i).unwrap();
        }
        b.finish();
        let mut rows = Vec::new();
        while let Some(batch) = b.next_ready() {
            assert!(batch.line.len() <= max, "{} > {max}", batch.line.len());
            rows.push(batch.rows());
        }
        assert_eq!(rows, [3, 3, 2]);
        let mut b = Batcher::new(Table::Eligibility, 1000, max);
        let big = format!(r#"{{"dst":"{}"}}"#, "x".repeat(max));
        let e = b.push(&big, 9).unwrap_err();
        assert_eq!(e.source_line, 9);
        assert!(e.to_string().contains("line 9"), "{e}");
    }

    #[test]
    fn the_real_limit_splits_big_batches_of_full_coupons() {
        // A coupon with every field set, as the protocol doc sizes it.
        let entry = r#"{"id":"cp-000000000000000000000001","subscriber":"2001:db8:ffff:ffff:ffff:ffff:ffff:fff1","dst":"2001:db8:ffff:ffff::/64","port":443,"decision":{"level":"network-control","dscp":46,"dst_port":8443,"dst_addr":"2001:db8::9","mss_clamp":1400,"rate":{"committed_bps":2000000000,"peak_bps":4000000000}},"expires":1767225600}"#;
        let mut b = Batcher::new(Table::Coupon, 50_000, MAX_LINE_BYTES);
        for i in 0..50_000 {
            b.push(entry, i).unwrap();
        }
        b.finish();
        let mut n = 0;
        let mut batches = 0;
        while let Some(batch) = b.next_ready() {
            assert!(batch.line.len() <= MAX_LINE_BYTES);
            n += batch.rows();
            batches += 1;
        }
        assert_eq!(n, 50_000);
        assert!(batches > 1, "{batches}");
    }

    #[test]
    fn json_input_is_an_array_or_values_one_after_another() {
        let one = json_values(r#"[{"a":1},{"a":2}]"#, "f").unwrap();
        let lines = json_values("{\"a\":1}\n{\"a\":2}\n", "f").unwrap();
        assert_eq!(one, lines);
        assert_eq!(one.len(), 2);
        let e = json_values("{\"a\":1}\n{\"a\":", "f.json").unwrap_err();
        assert!(e.to_string().starts_with("f.json: not JSON"), "{e}");
        assert!(json_values("  ", "f").is_err());
        let r = batch_request(r#"{"op":"batch","changes":[]}"#, "f").unwrap();
        assert_eq!(r, json!({"op":"batch","changes":[]}));
        let r = batch_request(r#"{"op":"remove","table":"tier","key":{"name":"g"}}"#, "f").unwrap();
        assert_eq!(r["changes"][0]["op"], "remove");
    }

    #[test]
    fn a_plain_key_argument_names_the_key_field_of_its_table() {
        let k = |t, a, p| key_arg(t, a, p).unwrap();
        assert_eq!(k(Table::Coupon, "cp-1", None), json!({"id":"cp-1"}));
        assert_eq!(k(Table::Sp, "sp-1", None), json!({"id":"sp-1"}));
        assert_eq!(k(Table::Login, "::1", None), json!({"subscriber":"::1"}));
        assert_eq!(k(Table::Tier, "gold", None), json!({"name":"gold"}));
        assert_eq!(
            k(Table::Eligibility, "10.0.0.0/8", Some(53)),
            json!({"dst":"10.0.0.0/8","port":53})
        );
        assert_eq!(k(Table::Tier, r#"{"name":"x"}"#, None), json!({"name":"x"}));
        assert!(key_arg(Table::Default, "x", None).is_err());
        assert!(key_arg(Table::Coupon, "cp-1", Some(1)).is_err());
        assert!(key_arg(Table::Coupon, "{bad", None).is_err());
    }

    #[test]
    fn responses_are_ok_refused_or_malformed_never_a_panic() {
        let ok = parse_response(r#"{"ok":true,"changes":1,"seq":5}"#.into()).unwrap();
        assert_eq!(ok.value["seq"], 5);
        match parse_response(
            r#"{"ok":false,"error":{"index":3,"field":"entries[3].subscriber","reason":"bad"}}"#
                .into(),
        ) {
            Err(e @ ClientError::Refused { .. }) => {
                assert_eq!(e.to_string(), "entries[3].subscriber: bad (index 3)")
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            "",
            "nonsense",
            "[1,2]",
            r#"{"ok":"yes"}"#,
            r#"{"ok":false}"#,
            r#"{"ok":false,"error":"boom"}"#,
            r#"{"changes":1}"#,
        ] {
            match parse_response(bad.into()) {
                Err(ClientError::Malformed { .. }) => {}
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let long = format!(r#"{{"ok":"{}"}}"#, "é".repeat(1000));
        let e = parse_response(long).unwrap_err().to_string();
        assert!(e.len() < 600, "the excerpt is cut: {}", e.len());
    }

    #[test]
    fn a_missing_socket_says_the_appliance_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.sock");
        let e = Client::connect(&path, None).unwrap_err();
        assert!(matches!(e, ClientError::NotRunning { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("is the appliance (sluice) running?"), "{msg}");
        // A stale socket file (nobody listening) is the same story.
        drop(UnixListener::bind(&path).unwrap());
        let e = Client::connect(&path, None).unwrap_err();
        assert!(matches!(e, ClientError::NotRunning { .. }), "{e:?}");
    }

    #[test]
    fn a_silent_or_closing_appliance_is_an_error_not_a_hang() {
        let (_d, path) = fake_server(|_| Some(String::new()));
        let mut c = Client::connect(&path, Some(Duration::from_millis(100))).unwrap();
        let e = c.call(&stats()).unwrap_err();
        assert!(matches!(e, ClientError::Timeout { .. }), "{e:?}");
        assert!(e.to_string().contains("may still have been applied"), "{e}");
        // The connection is not trusted after that.
        assert!(c.call(&stats()).is_err());
        let (_d, path) = fake_server(|_| None);
        let e = connect(&path).call(&stats()).unwrap_err();
        assert!(matches!(e, ClientError::Closed { .. }), "{e:?}");
        let (_d, path) = fake_server(|_| Some("{\"ok\":tru".into()));
        let e = connect(&path).call(&stats()).unwrap_err();
        assert!(
            matches!(e, ClientError::Closed { .. }),
            "a torn line: {e:?}"
        );
        let (_d, path) = fake_server(|_| Some("hello\n".into()));
        let e = connect(&path).call(&stats()).unwrap_err();
        assert!(matches!(e, ClientError::Malformed { .. }), "{e:?}");
    }

    #[test]
    fn a_bad_request_is_refused_before_it_is_sent() {
        let (_d, path) = fake_server(|l| panic!("sent: {l}"));
        let mut c = connect(&path);
        let e = c
            .call(&add(
                Table::Login,
                vec![json!({"subscriber":"10.0.0.300","login":"a","tier":"t"})],
            ))
            .unwrap_err();
        match &e {
            ClientError::Refused {
                error,
                response: None,
            } => assert_eq!(error.field, "entries[0].subscriber"),
            other => panic!("{other:?}"),
        }
        let line = e.response_line().unwrap();
        assert!(
            line.starts_with(r#"{"ok":false,"error":{"index":0"#),
            "{line}"
        );
        let e = c.call_line(&"x".repeat(MAX_LINE_BYTES + 1)).unwrap_err();
        assert!(e.to_string().contains("split"), "{e}");
    }

    #[test]
    fn pages_are_read_until_the_total() {
        let (_d, path, policy) = policy_server();
        let mut c = connect(&path);
        let entries: Vec<Value> = (0..25)
            .map(|i| json!({"dst": format!("10.{i}.0.0/16")}))
            .collect();
        c.call(&add(Table::Eligibility, entries)).unwrap();
        let mut seen = 0;
        let pages = list_pages(&mut c, Table::Eligibility, 3, 10, |p| {
            seen += p.value["entries"].as_array().unwrap().len();
        })
        .unwrap();
        assert_eq!((pages, seen), (3, 22));
        let pages = list_pages(&mut c, Table::Coupon, 0, 10, |_| {}).unwrap();
        assert_eq!(pages, 1, "an empty table is one empty page");
        assert_eq!(policy.lock().unwrap().state().len(Table::Eligibility), 25);
    }

    #[test]
    fn an_import_checks_then_sends_batches_and_reports_each() {
        let (_d, path, policy) = policy_server();
        let text = coupons_csv(2500);
        assert_eq!(
            check_csv(Table::Coupon, text.as_bytes(), |_| {}).unwrap(),
            2500
        );
        let mut c = connect(&path);
        let mut seen = Vec::new();
        let r = send_csv(
            &mut c,
            Table::Coupon,
            || Ok(text.as_bytes()),
            1000,
            MAX_LINE_BYTES,
            |d| seen.push((d.span, d.total_rows)),
        )
        .unwrap();
        assert_eq!(
            r,
            ImportReport {
                rows: 2500,
                batches: 3
            }
        );
        assert_eq!(seen[0].0.to_string(), "lines 2-1001 (1000 rows)");
        assert_eq!(
            seen[2],
            (
                BatchSpan {
                    first_line: 2002,
                    last_line: 2501,
                    rows: 500
                },
                2500
            )
        );
        assert_eq!(policy.lock().unwrap().state().len(Table::Coupon), 2500);
    }

    #[test]
    fn a_refused_batch_names_its_csv_line_and_what_was_committed() {
        let (_d, path, policy) = policy_server();
        let mut c = connect(&path);
        // Line 1507 of the file (row 1505, with a comment line before it)
        // reuses an id the appliance already has.
        c.call(&add(
            Table::Coupon,
            vec![json!({"id":"c1505","subscriber":"192.0.2.1","decision":{"level":1}})],
        ))
        .unwrap();
        let mut text = coupons_csv(3000);
        text.insert_str("id,subscriber,level\n".len(), "# a comment\n");
        let e = send_csv(
            &mut c,
            Table::Coupon,
            || Ok(text.as_bytes()),
            1000,
            MAX_LINE_BYTES,
            |_| {},
        )
        .unwrap_err();
        assert_eq!(e.committed_rows, 1000);
        assert_eq!(e.committed_through, Some(1002));
        match &e.failure {
            ImportFailure::Refused {
                error,
                span,
                source_line,
                response,
            } => {
                assert_eq!(error.index, Some(505));
                assert_eq!(*source_line, Some(1508));
                assert_eq!(span.to_string(), "lines 1003-2002 (1000 rows)");
                assert!(response.is_some());
            }
            other => panic!("{other:?}"),
        }
        let msg = e.to_string();
        assert!(msg.starts_with("line 1508: entries[505].id: "), "{msg}");
        assert!(
            msg.contains("lines 1003-2002 (1000 rows), was not applied"),
            "{msg}"
        );
        assert!(
            msg.contains("1000 rows were committed before it (up to line 1002)"),
            "{msg}"
        );
        assert_eq!(policy.lock().unwrap().state().len(Table::Coupon), 1001);
    }

    #[test]
    fn a_connection_lost_midway_leaves_the_batch_in_flight_unknown() {
        let mut n = 0;
        let (_d, path) = fake_server(move |_| {
            n += 1;
            (n == 1).then(|| "{\"ok\":true,\"changes\":10,\"seq\":10}\n".to_string())
        });
        let text = coupons_csv(25);
        let e = send_csv(
            &mut connect(&path),
            Table::Coupon,
            || Ok(text.as_bytes()),
            10,
            MAX_LINE_BYTES,
            |_| {},
        )
        .unwrap_err();
        assert_eq!((e.committed_rows, e.committed_through), (10, Some(11)));
        assert!(
            matches!(&e.failure, ImportFailure::Connection { error: ClientError::Closed { .. }, span } if span.first_line == 12),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains(
                "the batch in flight, lines 12-21 (10 rows), may or may not have been applied"
            ),
            "{msg}"
        );
    }

    #[test]
    fn a_bad_row_is_found_by_the_check_pass() {
        let mut text = coupons_csv(100);
        text.push_str("c-bad,10.0.0.300,voice\n");
        let e = check_csv(Table::Coupon, text.as_bytes(), |_| {}).unwrap_err();
        assert_eq!((e.line, e.column.as_str()), (102, "subscriber"));
        let e = ImportError {
            committed_rows: 0,
            committed_through: None,
            failure: ImportFailure::Csv(e),
        };
        let msg = e.to_string();
        assert!(
            msg.starts_with("line 102, column `subscriber`: bad IP address"),
            "{msg}"
        );
        assert!(msg.ends_with("no rows were committed before it"), "{msg}");
    }

    #[test]
    fn lists_are_aligned_and_show_the_columns_in_use() {
        let rows = [
            json!({"id":"cp-1","subscriber":"10.0.0.8","dst":"203.0.113.0/24","port":443,"decision":{"level":"voice","dscp":46,"rate":{"committed_bps":2000000,"peak_bps":4000000}}}),
            json!({"id":"cp-20","subscriber":"2001:db8::8","decision":{"level":"premium"},"colour":"red"}),
        ];
        assert_eq!(
            render_list(Table::Coupon, &rows),
            "\
id     subscriber   dst             port  level    dscp  committed_bps  peak_bps  colour
cp-1   10.0.0.8     203.0.113.0/24  443   voice    46    2000000        4000000
cp-20  2001:db8::8                        premium                                 red
"
        );
        assert_eq!(render_list(Table::Tier, &[]), "no rows in table tier\n");
        assert_eq!(
            render_list(Table::Login, &[json!(7)]),
            "value\n7\n",
            "a row that is not an object is shown as it is"
        );
    }

    #[test]
    fn an_entry_is_one_field_per_line() {
        let v = json!({"ok":true,"entry":{"name":"gold","decision":{"level":"premium","dscp":"level"}}});
        assert_eq!(
            render_entry(Table::Tier, &v),
            "name   gold\nlevel  premium\ndscp   level\n"
        );
        assert_eq!(
            render_entry(Table::Tier, &json!({"ok":true})),
            "{\"ok\":true}\n"
        );
    }

    #[test]
    fn tables_and_stats_are_human_tables() {
        let v = json!({"ok":true,"seq":1042,"tables":[
            {"table":"coupon","entries":1,"generation":7,"approx_bytes":310},
            {"table":"login","entries":20000,"generation":2,"approx_bytes":5_000_000}],
            "store":{"journal_bytes":5120,"journal_records":4,"snapshot_seq":1000,"snapshot_bytes":81920,"compactions":1},
            "connections":2});
        assert_eq!(
            render_tables(&v),
            "\
table   entries  generation   memory
coupon        1           7    310 B
login     20000           2  4.8 MiB
total     20001              4.8 MiB
"
        );
        let s = render_stats(&v);
        assert!(s.starts_with("seq: 1042\n\ntable"), "{s}");
        assert!(s.contains("  journal      5.0 KiB in 4 records\n"), "{s}");
        assert!(s.contains("  snapshot     80.0 KiB at seq 1000\n"), "{s}");
        assert!(s.contains("  compactions  1\n"), "{s}");
        assert!(s.ends_with("connections: 2\n"), "{s}");
        assert!(render_stats(&json!({"ok":true,"seq":1})).contains("in memory only"));
        for odd in [
            json!(null),
            json!({"tables":"x"}),
            json!({"tables":[1,{"table":[]}]}),
            json!({"store":{"journal_bytes":"x"}}),
        ] {
            let _ = (
                render_tables(&odd),
                render_stats(&odd),
                render_entry(Table::Coupon, &odd),
                render_applied(&odd),
            );
        }
        assert_eq!(
            render_applied(&json!({"ok":true,"changes":3,"seq":9})),
            "ok: 3 changes applied (seq 9)\n"
        );
        assert_eq!(
            render_applied(&json!({"ok":true,"changes":1,"seq":9})),
            "ok: 1 change applied (seq 9)\n"
        );
    }

    #[test]
    fn bytes_read_as_people_write_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(human_bytes(u64::MAX), "16777216.0 TiB");
    }
}
