//! The control socket: a Unix-domain stream socket speaking the
//! line-delimited JSON protocol of [`crate::policy::protocol`], served by
//! one thread with `mio`.
//!
//! - The socket file is created with mode 0600 (root only, as the appliance
//!   runs as root); its directory is created 0700 if missing.
//! - A stale socket file (nobody accepting on it) is replaced; a live one
//!   (another sluice) is an error, so two appliances never share a policy.
//! - Requests are handled one at a time, in arrival order per connection;
//!   each gets exactly one response line. A line longer than
//!   [`MAX_LINE_BYTES`] is answered with an error and skipped up to its end,
//!   without buffering it.
//! - The loop wakes at least every 100 ms to notice the stop flag (every
//!   10 ms when signed coupons are on, to serve the control packets the
//!   workers punt), and once a second removes the coupons that have
//!   expired (a journaled batch like any other), so an expired coupon
//!   stops granting within a second, and lets [`Coupons::sweep`] switch
//!   time-windowed and hostname-scoped coupons.
//! - `coupon_*` requests go to [`Coupons`]; punted frames too: redemption
//!   requests (answered through [`Dataplane::send`]) and DNS answers.
//! - Every accepted change reaches the [`Dataplane`] before its response
//!   is sent: an acknowledged change is already in the workers' tables.
use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token};
use thiserror::Error;

use crate::coupons::{self, wire, Binder, Coupons};
use crate::policy::protocol::{parse_request, ProtocolError, Request, Response, MAX_LINE_BYTES};
use crate::policy::{Change, Policy, PolicyState, Touched};

/// What the control thread drives besides the policy: the appliance's
/// fast-path tables. The unit type is a dataplane that does nothing
/// (tests, dry runs).
pub trait Dataplane {
    /// `state` has just accepted a batch that touched `touched` (computed
    /// before the batch): bring the fast tables in line. Runs before the
    /// response is sent.
    fn applied(&mut self, state: &PolicyState, touched: &Touched);

    /// Extra `stats` for the response: table fill, memory, counters.
    fn stats(&self) -> Option<serde_json::Value> {
        None
    }

    /// Control packets the workers handed over since the last call, at
    /// most `max`.
    fn punted(&mut self, _max: usize) -> Vec<PuntedFrame> {
        Vec::new()
    }

    /// Sends `frame` out of the subscriber port; false if it could not be
    /// queued.
    fn send(&mut self, _frame: &[u8]) -> bool {
        false
    }
}

/// A control packet from the workers: the whole Ethernet frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PuntedFrame {
    pub bytes: Vec<u8>,
    /// Consumed (a redemption request: answer it) or a copy of a
    /// forwarded packet (a DNS answer: learn from it).
    pub consumed: bool,
}

/// Punted frames handled per loop turn, so requests on the socket are not
/// starved by a flood.
const PUNTS_PER_TURN: usize = 512;

/// The policy and the dataplane as the coupon manager sees them.
struct Bind<'a, D: Dataplane> {
    policy: &'a mut Policy,
    dp: &'a mut D,
}

impl<D: Dataplane> Binder for Bind<'_, D> {
    fn state(&self) -> &PolicyState {
        self.policy.state()
    }
    fn commit(&mut self, batch: &[Change]) -> Result<(), String> {
        apply(self.policy, self.dp, batch)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Dataplane for () {
    fn applied(&mut self, _: &PolicyState, _: &Touched) {}
}

/// How often expired coupons are removed.
const EXPIRY_SWEEP: Duration = Duration::from_secs(1);

const LISTENER: Token = Token(0);
const MAX_CONNECTIONS: usize = 64;

/// Why the control socket could not be set up.
#[derive(Debug, Error)]
pub enum ServerError {
    #[error("control socket {path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    #[error("control socket {0} is in use: is another sluice running?")]
    InUse(PathBuf),
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> ServerError + 'a {
    move |source| ServerError::Io {
        path: path.to_owned(),
        op,
        source,
    }
}

struct Conn {
    stream: UnixStream,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// Skipping the rest of an over-long line.
    discarding: bool,
    closed: bool,
}

/// The bound control socket.
pub struct ControlServer {
    path: PathBuf,
    poll: Poll,
    listener: UnixListener,
    conns: HashMap<Token, Conn>,
    next: usize,
}

impl ControlServer {
    /// Binds the socket at `path` (mode 0600).
    pub fn bind(path: &Path) -> Result<ControlServer, ServerError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::create_dir_all(dir).map_err(io_err(path, "create directory"))?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(io_err(path, "chmod directory"))?;
            }
        }
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServerError::InUse(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(io_err(path, "remove stale socket"))?;
        }
        let mut listener = UnixListener::bind(path).map_err(io_err(path, "bind"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err(path, "chmod"))?;
        let poll = Poll::new().map_err(io_err(path, "poll"))?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(io_err(path, "register"))?;
        Ok(ControlServer {
            path: path.to_owned(),
            poll,
            listener,
            conns: HashMap::new(),
            next: 1,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves requests until `stop` is raised. `dp` sees every accepted
    /// change before its response is sent, so an acknowledged change is
    /// already visible to the workers.
    pub fn run(&mut self, policy: &mut Policy, stop: &AtomicBool, dp: &mut impl Dataplane) {
        self.run_with(policy, None, stop, dp)
    }

    /// [`ControlServer::run`] with signed coupons: `coupon_*` requests,
    /// punted control packets, and the coupons' own sweep.
    pub fn run_with(
        &mut self,
        policy: &mut Policy,
        mut coupons: Option<&mut Coupons>,
        stop: &AtomicBool,
        dp: &mut impl Dataplane,
    ) {
        let mut events = Events::with_capacity(64);
        let mut last_sweep = std::time::Instant::now();
        if let Some(c) = coupons.as_deref_mut() {
            // Repairs a crash between the ledger and the policy.
            c.reconcile_all(unix_now(), &mut Bind { policy, dp });
        }
        let wait = if coupons.is_some() {
            Duration::from_millis(10)
        } else {
            Duration::from_millis(100)
        };
        while !stop.load(Ordering::Relaxed) {
            if last_sweep.elapsed() >= EXPIRY_SWEEP {
                last_sweep = std::time::Instant::now();
                sweep_expired(policy, dp);
                if let Some(c) = coupons.as_deref_mut() {
                    c.sweep(unix_now(), &mut Bind { policy, dp });
                }
            }
            if let Some(c) = coupons.as_deref_mut() {
                serve_punts(c, policy, dp);
            }
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() != ErrorKind::Interrupted {
                    log::error!("control socket poll failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
            for ev in events.iter() {
                if ev.token() == LISTENER {
                    self.accept();
                    continue;
                }
                let token = ev.token();
                if let Some(conn) = self.conns.get_mut(&token) {
                    if ev.is_readable() {
                        serve(conn, policy, coupons.as_deref_mut(), dp);
                    }
                    flush(conn);
                    if conn.closed && conn.wbuf.is_empty() {
                        let mut c = self.conns.remove(&token).expect("present");
                        let _ = self.poll.registry().deregister(&mut c.stream);
                    }
                }
            }
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    if self.conns.len() >= MAX_CONNECTIONS {
                        let _ = stream.write_all(
                            Response::error(ProtocolError::new(
                                None,
                                "",
                                "too many control connections",
                            ))
                            .to_line()
                            .as_bytes(),
                        );
                        continue;
                    }
                    let token = Token(self.next);
                    self.next += 1;
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if self
                        .poll
                        .registry()
                        .register(&mut stream, token, interest)
                        .is_ok()
                    {
                        self.conns.insert(
                            token,
                            Conn {
                                stream,
                                rbuf: Vec::new(),
                                wbuf: Vec::new(),
                                discarding: false,
                                closed: false,
                            },
                        );
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("control socket accept: {e}");
                    return;
                }
            }
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn respond(conn: &mut Conn, r: &Response) {
    conn.wbuf.extend_from_slice(r.to_line().as_bytes());
    if conn.wbuf.last() != Some(&b'\n') {
        conn.wbuf.push(b'\n');
    }
}

/// Answers the redemption requests and learns from the DNS answers the
/// workers punted.
fn serve_punts(c: &mut Coupons, policy: &mut Policy, dp: &mut impl Dataplane) {
    let frames = dp.punted(PUNTS_PER_TURN);
    if frames.is_empty() {
        return;
    }
    let now = unix_now();
    for f in frames {
        let Some(d) = wire::datagram(&f.bytes) else {
            if f.consumed {
                c.count_unanswerable();
            }
            continue;
        };
        if f.consumed {
            // Answered only when it is a redemption request at all, from a
            // unicast source: garbage, or a spoofed broadcast/multicast
            // source, is counted and gets nothing back (no reflection).
            if !d.payload.starts_with(sluice_coupon::wire::REDEEM_MAGIC) || !wire::unicast(&d) {
                c.count_unanswerable();
                continue;
            }
            if !c.admit(d.src, now) {
                continue;
            }
            let outcome = c.redeem_packet(d.payload, d.src, now, &mut Bind { policy, dp });
            let status = coupons::status_payload(&outcome, d.payload);
            let sent = wire::answer(&d, &status).is_some_and(|a| dp.send(&a));
            c.count_answer(sent);
        } else {
            c.dns_answer(d.payload, d.src, d.dst, now, &mut Bind { policy, dp });
        }
    }
}

/// Removes the coupons expired by now, as a journaled batch.
fn sweep_expired(policy: &mut Policy, dp: &mut impl Dataplane) {
    let now = unix_now();
    let batch = policy.state().expired_coupons(now);
    if batch.is_empty() {
        return;
    }
    if let Err(e) = apply(policy, dp, &batch) {
        log::warn!("removing {} expired coupon(s): {e}", batch.len());
    }
}

/// Commits `batch` and passes it on to the dataplane.
fn apply(
    policy: &mut Policy,
    dp: &mut impl Dataplane,
    batch: &[Change],
) -> Result<crate::policy::Applied, crate::policy::CommitError> {
    let (a, touched) = policy.commit_touched(batch)?;
    dp.applied(policy.state(), &touched);
    Ok(a)
}

/// Reads what is available, answering every complete line.
fn serve(
    conn: &mut Conn,
    policy: &mut Policy,
    mut coupons: Option<&mut Coupons>,
    dp: &mut impl Dataplane,
) {
    let mut chunk = [0u8; 64 * 1024];
    loop {
        match conn.stream.read(&mut chunk) {
            Ok(0) => {
                conn.closed = true;
                break;
            }
            Ok(n) => {
                let mut data = &chunk[..n];
                while !data.is_empty() {
                    let nl = memchr::memchr(b'\n', data);
                    let (part, rest) = match nl {
                        Some(i) => (&data[..i], &data[i + 1..]),
                        None => (data, &data[..0]),
                    };
                    if !conn.discarding {
                        conn.rbuf.extend_from_slice(part);
                        if conn.rbuf.len() > MAX_LINE_BYTES {
                            respond(
                                conn,
                                &Response::error(ProtocolError::line_too_long(conn.rbuf.len())),
                            );
                            conn.rbuf = Vec::new();
                            conn.discarding = true;
                        }
                    }
                    if nl.is_some() {
                        if conn.discarding {
                            conn.discarding = false;
                        } else {
                            let line = std::mem::take(&mut conn.rbuf);
                            handle(conn, policy, coupons.as_deref_mut(), dp, &line);
                        }
                    }
                    data = rest;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => {
                conn.closed = true;
                break;
            }
        }
    }
}

fn handle(
    conn: &mut Conn,
    policy: &mut Policy,
    coupons: Option<&mut Coupons>,
    dp: &mut impl Dataplane,
    line: &[u8],
) {
    let text = match std::str::from_utf8(line) {
        Ok(t) => t.trim(),
        Err(_) => {
            respond(
                conn,
                &Response::error(ProtocolError::new(None, "", "request is not UTF-8")),
            );
            return;
        }
    };
    if text.is_empty() {
        return;
    }
    // A policy request first: asking whether a 10k-row batch is a coupon
    // request would decode the whole line once more. A coupon request is
    // never a policy request (its op is `coupon_*`), so it fails here.
    let parsed = parse_request(text);
    if parsed.is_err() && coupons::is_coupon_request(text) {
        let v = match coupons {
            Some(c) => c.handle(text, unix_now(), &mut Bind { policy, dp }),
            None => serde_json::json!({"ok": false, "error": {"field": "op",
                "reason": "signed coupons are not enabled on this control socket"}}),
        };
        conn.wbuf.extend_from_slice(v.to_string().as_bytes());
        conn.wbuf.push(b'\n');
        return;
    }
    let response = match parsed {
        Err(e) => Response::error(e),
        Ok(Request::Apply { op, changes }) => match apply(policy, dp, &changes) {
            Ok(a) => Response::applied(a),
            Err(e) => Response::commit_error(op, e),
        },
        Ok(Request::Stats) => Response {
            dataplane: dp.stats(),
            coupons: coupons.map(|c| c.stats()),
            ..policy.execute(Request::Stats)
        },
        Ok(req) => policy.execute(req),
    };
    respond(conn, &response);
}

fn flush(conn: &mut Conn) {
    while !conn.wbuf.is_empty() {
        match conn.stream.write(&conn.wbuf) {
            Ok(0) => {
                conn.closed = true;
                conn.wbuf.clear();
            }
            Ok(n) => {
                conn.wbuf.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                conn.closed = true;
                conn.wbuf.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::sync::Arc;

    fn serve_in_background(
        dir: &Path,
    ) -> (PathBuf, Arc<AtomicBool>, std::thread::JoinHandle<Policy>) {
        let path = dir.join("ctl/control.sock");
        let mut server = ControlServer::bind(&path).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let h = std::thread::spawn(move || {
            let mut policy = Policy::in_memory();
            server.run(&mut policy, &s, &mut ());
            policy
        });
        (path, stop, h)
    }

    fn ask(stream: &mut std::os::unix::net::UnixStream, line: &str) -> String {
        stream.write_all(line.as_bytes()).unwrap();
        stream.write_all(b"\n").unwrap();
        let mut r = BufReader::new(stream.try_clone().unwrap());
        let mut out = String::new();
        r.read_line(&mut out).unwrap();
        out
    }

    #[test]
    fn requests_get_one_response_each_and_bad_ones_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (path, stop, h) = serve_in_background(dir.path());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mut c = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let ok = ask(
            &mut c,
            r#"{"op":"add","table":"tier","entries":[{"name":"gold","decision":{"level":"premium"}}]}"#,
        );
        assert!(ok.contains("\"ok\":true"), "{ok}");
        let bad = ask(
            &mut c,
            r#"{"op":"add","table":"login","entries":[{"subscriber":"10.0.0.300","login":"a","tier":"gold"}]}"#,
        );
        assert!(
            bad.contains("\"ok\":false") && bad.contains("subscriber"),
            "{bad}"
        );
        let trunc = ask(&mut c, r#"{"op":"add","table":"#);
        assert!(trunc.contains("\"ok\":false"), "{trunc}");
        // A line over the cap is refused without being buffered whole.
        let long = format!(
            "{{\"op\":\"stats\",\"x\":\"{}\"}}",
            "a".repeat(MAX_LINE_BYTES + 10)
        );
        let r = ask(&mut c, &long);
        assert!(r.contains("\"ok\":false"), "{}", &r[..r.len().min(200)]);
        let t = ask(&mut c, r#"{"op":"tables"}"#);
        assert!(t.contains("\"ok\":true"), "{t}");
        stop.store(true, Ordering::Relaxed);
        let policy = h.join().unwrap();
        assert_eq!(
            policy.state().seq(),
            1,
            "only the good request changed the policy"
        );
        assert!(!path.exists(), "socket removed at shutdown");
    }

    #[test]
    fn a_live_socket_is_not_stolen() {
        let dir = tempfile::tempdir().unwrap();
        let (path, stop, h) = serve_in_background(dir.path());
        match ControlServer::bind(&path) {
            Err(ServerError::InUse(_)) => {}
            other => panic!("expected InUse, got {:?}", other.err()),
        }
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap();
        // Stale file: replaced.
        std::fs::write(&path, b"").unwrap();
        assert!(ControlServer::bind(&path).is_ok());
    }
}
