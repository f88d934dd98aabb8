//! The customer's client: its holder key, its installed coupons, in-band
//! redemption, and a local TCP forwarder that applies a coupon's modes when
//! no appliance is in the path. The binary `sluice-client` only parses
//! arguments and calls this module.
//!
//! State directory (default `$HOME/.sluice-client`, mode 0700):
//! - `holder.key`: the holder's secret key, PASERK `k4.secret`, 0600;
//! - `coupons/<id>.json`: installed [`Bundle`]s, 0600 (a bundle may carry
//!   its own holder key, which then takes precedence for that coupon).

use std::collections::HashSet;
use std::fs;
use std::io;
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs,
    UdpSocket,
};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};

use crate::bundle::{Bundle, BundleError};
use crate::claims::{valid_id, Claims, Mode};
use crate::keys::{create_private_dir, HolderKey, KeyError};
use crate::pop::{new_nonce, sign_proof, Proof};
use crate::time::{format_utc, now_unix};
use crate::window::{active_at, next_change};
use crate::wire::{RedeemRequest, Status, StatusResponse, DEFAULT_REDEEM_PORT};

/// The state directory's name under `$HOME`.
pub const DEFAULT_DIR_NAME: &str = ".sluice-client";

/// A client failure (not a refusal: those come back as a
/// [`StatusResponse`]). Names the file, coupon or address involved.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A key file problem.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A bundle problem.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// No holder key yet.
    #[error("no holder key at {}: run `sluice-client keygen` first (or install a bundle that carries one)", path.display())]
    NoHolderKey {
        /// Where it was expected.
        path: PathBuf,
    },
    /// The coupon names another holder than this client's key.
    #[error("coupon {id:?} is bound to holder {coupon_holder}, but this client's key is {ours}: give the issuer the output of `sluice-client keygen`")]
    HolderMismatch {
        /// The coupon.
        id: String,
        /// The coupon's `holder` claim.
        coupon_holder: String,
        /// This client's public key.
        ours: String,
    },
    /// No such installed coupon.
    #[error("coupon {id:?} is not installed in {} (see `sluice-client list`)", dir.display())]
    NotInstalled {
        /// The id asked for.
        id: String,
        /// The coupons directory.
        dir: PathBuf,
    },
    /// A bad address argument.
    #[error("{what} {value:?}: {expected}")]
    BadAddress {
        /// Which argument.
        what: &'static str,
        /// The value given.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: io::Error,
    },
    /// No status came back.
    #[error("no status from {via} after {attempts} attempt(s){}", last.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default())]
    NoAnswer {
        /// The appliance address.
        via: SocketAddr,
        /// Attempts made.
        attempts: u32,
        /// The last socket error, if any (e.g. connection refused).
        last: Option<String>,
    },
}

fn io_ctx(what: impl Into<String>) -> impl FnOnce(io::Error) -> ClientError {
    let what = what.into();
    move |source| ClientError::Io { what, source }
}

/// `$HOME/.sluice-client`, if `$HOME` is set.
pub fn default_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(DEFAULT_DIR_NAME))
}

/// An installed coupon: its bundle and its (unverified) claims.
#[derive(Debug, Clone)]
pub struct Installed {
    /// The stored bundle.
    pub bundle: Bundle,
    /// The token's claims, read without the issuer's key.
    pub claims: Claims,
    /// The issuer key id from the token's footer.
    pub kid: String,
}

/// The JSON form of an installed coupon for `list --json`.
#[derive(Serialize)]
struct ListEntry<'a> {
    id: &'a str,
    kid: &'a str,
    holder_key: &'static str,
    claims: &'a Claims,
}

impl Installed {
    /// The JSON object `list --json` prints for this coupon.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(ListEntry {
            id: &self.claims.id,
            kid: &self.kid,
            holder_key: if self.bundle.holder_secret.is_some() {
                "bundle"
            } else {
                "client"
            },
            claims: &self.claims,
        })
        .unwrap_or(serde_json::Value::Null)
    }

    /// A human description, several lines, evaluated at `now`.
    pub fn describe(&self, now: u64) -> String {
        let c = &self.claims;
        let modes = c
            .modes
            .iter()
            .map(|m| match m {
                Mode::Port(p) => format!("port {p}"),
                Mode::Addr(a) => format!("addr {a}"),
                Mode::Dscp(d) => format!("dscp {d}"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let mut scope = Vec::new();
        if !c.scope.hosts.is_empty() {
            scope.push(format!("hosts {}", c.scope.hosts.join(" ")));
        }
        if !c.scope.prefixes.is_empty() {
            let p: Vec<_> = c.scope.prefixes.iter().map(|p| p.to_string()).collect();
            scope.push(format!("prefixes {}", p.join(" ")));
        }
        if !c.scope.ports.is_empty() {
            let p: Vec<_> = c.scope.ports.iter().map(|p| p.to_string()).collect();
            scope.push(format!("ports {}", p.join(" ")));
        }
        let scope = if scope.is_empty() {
            "any destination".to_string()
        } else {
            scope.join("; ")
        };
        let state = if now < c.not_before {
            "not yet valid"
        } else if now >= c.expires {
            "expired"
        } else {
            "valid"
        };
        let windows = if c.windows.is_empty() {
            "always".to_string()
        } else {
            let list: Vec<_> = c.windows.iter().map(|w| w.to_string()).collect();
            let now_state = if active_at(&c.windows, now) {
                "active now"
            } else {
                "inactive now"
            };
            match next_change(&c.windows, now) {
                Some(t) => format!(
                    "{} UTC ({now_state}, changes at {})",
                    list.join(", "),
                    format_utc(t)
                ),
                None => format!("{} UTC ({now_state})", list.join(", ")),
            }
        };
        format!(
            "{id}  level {level} ({name})  {customer:?}\n  modes:       {modes}\n  scope:       {scope}\n  validity:    {from} to {to} ({state})\n  windows:     {windows}\n  redemptions: up to {max}\n  holder key:  {holder}\n",
            id = c.id,
            level = c.level,
            name = c.level_name(),
            customer = c.customer,
            from = format_utc(c.not_before),
            to = format_utc(c.expires),
            max = c.max_redemptions,
            holder = if self.bundle.holder_secret.is_some() {
                "in the bundle"
            } else {
                "this client's"
            },
        )
    }
}

/// The client's state directory.
#[derive(Debug, Clone)]
pub struct Client {
    dir: PathBuf,
}

impl Client {
    /// Opens (creating, mode 0700) the state directory and its `coupons/`.
    pub fn open(dir: &Path) -> Result<Client, ClientError> {
        create_private_dir(dir)?;
        create_private_dir(&dir.join("coupons"))?;
        Ok(Client {
            dir: dir.to_path_buf(),
        })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the holder key lives.
    pub fn holder_path(&self) -> PathBuf {
        self.dir.join("holder.key")
    }

    fn coupon_path(&self, id: &str) -> PathBuf {
        self.dir.join("coupons").join(format!("{id}.json"))
    }

    /// Creates the holder key if absent; returns its PASERK `k4.public` and
    /// whether it was created now.
    pub fn keygen(&self) -> Result<(String, bool), ClientError> {
        let path = self.holder_path();
        if path.exists() {
            return Ok((HolderKey::read(&path)?.public_paserk(), false));
        }
        let key = HolderKey::generate()?;
        key.write(&path)?;
        Ok((key.public_paserk(), true))
    }

    /// The client's own holder key.
    pub fn holder(&self) -> Result<HolderKey, ClientError> {
        let path = self.holder_path();
        if !path.exists() {
            return Err(ClientError::NoHolderKey { path });
        }
        Ok(HolderKey::read(&path)?)
    }

    /// Checks and stores a bundle file. The signature cannot be checked
    /// without the issuer's key; the claims' shape, the id and the holder
    /// key can: a bundle without a holder secret must name this client's
    /// key. Reinstalling a coupon replaces it.
    pub fn install(&self, bundle_path: &Path) -> Result<Installed, ClientError> {
        let bundle = Bundle::read(bundle_path)?;
        let installed = self.check(bundle)?;
        installed
            .bundle
            .write(&self.coupon_path(&installed.claims.id))?;
        Ok(installed)
    }

    fn check(&self, bundle: Bundle) -> Result<Installed, ClientError> {
        let installed = installed(bundle)?;
        self.holder_for(&installed)?;
        Ok(installed)
    }

    /// Every installed coupon, by id.
    pub fn list(&self) -> Result<Vec<Installed>, ClientError> {
        let dir = self.dir.join("coupons");
        let mut out = Vec::new();
        let entries = fs::read_dir(&dir).map_err(io_ctx(format!("reading {}", dir.display())))?;
        for e in entries {
            let path = e
                .map_err(io_ctx(format!("reading {}", dir.display())))?
                .path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            out.push(installed(Bundle::read(&path)?)?);
        }
        out.sort_by(|a, b| a.claims.id.cmp(&b.claims.id));
        Ok(out)
    }

    /// One installed coupon.
    pub fn get(&self, id: &str) -> Result<Installed, ClientError> {
        let not_installed = || ClientError::NotInstalled {
            id: id.to_string(),
            dir: self.dir.join("coupons"),
        };
        if !valid_id(id) {
            return Err(not_installed());
        }
        let path = self.coupon_path(id);
        if !path.exists() {
            return Err(not_installed());
        }
        installed(Bundle::read(&path)?)
    }

    /// The key that proves possession of `coupon`: the bundle's, else this
    /// client's, which must be the coupon's `holder`.
    pub fn holder_for(&self, coupon: &Installed) -> Result<HolderKey, ClientError> {
        if let Some(key) = coupon.bundle.holder()? {
            return Ok(key);
        }
        let key = self.holder()?;
        if key.public_paserk() != coupon.claims.holder {
            return Err(ClientError::HolderMismatch {
                id: coupon.claims.id.clone(),
                coupon_holder: coupon.claims.holder.clone(),
                ours: key.public_paserk(),
            });
        }
        Ok(key)
    }

    /// Redeems installed coupon `id` (see [`redeem`]).
    pub fn redeem(&self, id: &str, opts: &RedeemOptions) -> Result<StatusResponse, ClientError> {
        let coupon = self.get(id)?;
        let holder = self.holder_for(&coupon)?;
        redeem(&coupon, &holder, opts)
    }
}

/// A bundle's claims (checked for consistency, signature unverified) and
/// key id.
fn installed(bundle: Bundle) -> Result<Installed, ClientError> {
    let claims = bundle.claims()?;
    // `claims()` parsed the token, so its footer parses too.
    let kid = crate::token::peek_claims(&bundle.token)
        .map(|(_, kid)| kid)
        .unwrap_or_default();
    Ok(Installed {
        bundle,
        claims,
        kid,
    })
}

/// How to redeem.
#[derive(Debug, Clone)]
pub struct RedeemOptions {
    /// The appliance's redemption address.
    pub via: SocketAddr,
    /// Send from this address (bind to it); default: the address the
    /// kernel picks for `via`.
    pub src: Option<IpAddr>,
    /// How long to wait for a status per attempt.
    pub timeout: Duration,
    /// Attempts, each with a fresh nonce and timestamp.
    pub attempts: u32,
}

impl RedeemOptions {
    /// 1 s per attempt, 3 attempts, source chosen by the kernel.
    pub fn new(via: SocketAddr) -> RedeemOptions {
        RedeemOptions {
            via,
            src: None,
            timeout: Duration::from_secs(1),
            attempts: 3,
        }
    }
}

/// Parses `IP`, `IP:port` or `[IPv6]:port`; the port defaults to 7466.
pub fn parse_via(s: &str) -> Result<SocketAddr, ClientError> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let ip = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    ip.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, DEFAULT_REDEEM_PORT))
        .map_err(|_| ClientError::BadAddress {
            what: "--via",
            value: s.to_string(),
            expected: "an IP address, optionally with :port (default port 7466)",
        })
}

/// A UDP socket connected to `via`, bound to `src` if given; its local
/// address is the source the proof must name.
pub fn redeem_socket(via: SocketAddr, src: Option<IpAddr>) -> Result<UdpSocket, ClientError> {
    let bind_ip = src.unwrap_or(match via {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    });
    let sock = UdpSocket::bind((bind_ip, 0))
        .map_err(io_ctx(format!("binding a UDP socket to {bind_ip}")))?;
    // connect() makes the kernel pick the route and so the source address,
    // and filters datagrams to those from `via`.
    sock.connect(via)
        .map_err(io_ctx(format!("connecting a UDP socket to {via}")))?;
    Ok(sock)
}

/// Redeems `coupon` through the appliance at `opts.via`: each attempt
/// sends a request with a fresh proof (the socket's source address, now,
/// a new nonce) and waits `opts.timeout` for a status. A status counts as
/// the answer if it echoes the nonce of any attempt (a late answer to an
/// earlier attempt is still ours), or is a refusal without nonce (the
/// appliance could not read one) for this coupon or none. Other datagrams
/// are ignored.
pub fn redeem(
    coupon: &Installed,
    holder: &HolderKey,
    opts: &RedeemOptions,
) -> Result<StatusResponse, ClientError> {
    let sock = redeem_socket(opts.via, opts.src)?;
    let src = sock
        .local_addr()
        .map_err(io_ctx("reading the UDP socket's local address"))?
        .ip();
    let id = &coupon.claims.id;
    let mut sent: HashSet<String> = HashSet::new();
    let mut last = None;
    let mut buf = [0u8; 2048];
    for attempt in 1..=opts.attempts.max(1) {
        let proof = Proof {
            cid: id.clone(),
            src,
            ts: now_unix(),
            nonce: new_nonce()?,
        };
        let pop = sign_proof(holder, &coupon.bundle.token, &proof)?;
        let req = RedeemRequest {
            coupon: coupon.bundle.token.clone(),
            pop,
        }
        .encode();
        sent.insert(proof.nonce.clone());
        log::debug!(
            "redeem {id}: attempt {attempt}, {} bytes from {src} to {}",
            req.len(),
            opts.via
        );
        if let Err(e) = sock.send(&req) {
            last = Some(e.to_string());
            continue;
        }
        let deadline = Instant::now() + opts.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            sock.set_read_timeout(Some(left))
                .map_err(io_ctx("setting the UDP read timeout"))?;
            match sock.recv(&mut buf) {
                Ok(n) => {
                    let Ok(status) = StatusResponse::decode(&buf[..n]) else {
                        log::debug!(
                            "redeem {id}: ignoring a {n}-byte datagram that is not a status"
                        );
                        continue;
                    };
                    let ours = match &status.nonce {
                        Some(n) => sent.contains(n),
                        None => {
                            status.status == Status::Refused
                                && status.coupon.as_ref().is_none_or(|c| c == id)
                        }
                    };
                    if ours {
                        return Ok(status);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) => {
                    // E.g. ICMP port unreachable on the connected socket.
                    last = Some(e.to_string());
                    thread::sleep(left.min(Duration::from_millis(100)));
                    break;
                }
            }
        }
    }
    Err(ClientError::NoAnswer {
        via: opts.via,
        attempts: opts.attempts.max(1),
        last,
    })
}

/// One line for a status: `granted: level 3 (premium) until ...` or
/// `refused: <reason>: <detail>`.
pub fn format_status(s: &StatusResponse) -> String {
    match s.status {
        Status::Granted => {
            let level = s.level.unwrap_or_default();
            let name = crate::claims::LEVEL_NAMES
                .get(usize::from(level))
                .copied()
                .unwrap_or("?");
            let until = s.until.map(format_utc).unwrap_or_else(|| "?".to_string());
            if s.detail.is_empty() {
                format!("granted: level {level} ({name}) until {until}")
            } else {
                format!(
                    "granted: level {level} ({name}) until {until}: {}",
                    s.detail
                )
            }
        }
        Status::Refused => format!(
            "refused: {}: {}",
            s.reason.map_or("unknown", |r| r.name()),
            if s.detail.is_empty() {
                s.reason.map(|r| r.to_string()).unwrap_or_default()
            } else {
                s.detail.clone()
            }
        ),
    }
}

/// Where the forwarder connects, after applying a coupon's modes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardTarget {
    /// Host name or IP (the coupon's address in addr mode).
    pub host: String,
    /// Port (the coupon's port in port mode).
    pub port: u16,
    /// DSCP to set on the outgoing socket (dscp mode).
    pub dscp: Option<u8>,
}

impl ForwardTarget {
    /// Applies `claims`' modes to `to` (`HOST:PORT`, `[IPv6]:PORT`).
    pub fn for_coupon(claims: &Claims, to: &str) -> Result<ForwardTarget, ClientError> {
        let bad = || ClientError::BadAddress {
            what: "--to",
            value: to.to_string(),
            expected: "HOST:PORT or [IPv6]:PORT",
        };
        let (host, port) = to.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        // An IPv6 address must be bracketed, or the port is ambiguous.
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => v6.parse::<Ipv6Addr>().map_err(|_| bad())?.to_string(),
            None if host.is_empty() || host.contains([':', '[', ']']) => return Err(bad()),
            None => host.to_string(),
        };
        if port == 0 {
            return Err(bad());
        }
        Ok(ForwardTarget {
            host: claims.addr().map_or(host, |a| a.to_string()),
            port: claims.port().unwrap_or(port),
            dscp: claims.dscp(),
        })
    }
}

/// Connects to the target with its DSCP set (`IP_TOS` / `IPV6_TCLASS` =
/// dscp << 2) before the handshake, so every packet carries it.
pub fn connect_upstream(target: &ForwardTarget, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}:{} resolves to no address", target.host, target.port),
    );
    for addr in (target.host.as_str(), target.port).to_socket_addrs()? {
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        if let Some(dscp) = target.dscp {
            let tos = u32::from(dscp) << 2;
            match addr {
                SocketAddr::V4(_) => sock.set_tos(tos)?,
                SocketAddr::V6(_) => sock.set_tclass_v6(tos)?,
            }
        }
        match sock.connect_timeout(&addr.into(), timeout) {
            Ok(()) => return Ok(sock.into()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn pipe(mut from: TcpStream, mut to: TcpStream) -> io::Result<u64> {
    let n = io::copy(&mut from, &mut to);
    // Pass the half-close on; the other direction may still be running.
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
    n
}

/// Accepts one connection on `listener`, connects upstream, and copies
/// bytes both ways on two threads. Returns the thread that finishes when
/// both directions are done.
pub fn forward_one(
    listener: &TcpListener,
    target: &ForwardTarget,
) -> io::Result<thread::JoinHandle<()>> {
    let (client, peer) = listener.accept()?;
    let target = target.clone();
    Ok(thread::spawn(move || {
        let upstream = match connect_upstream(&target, Duration::from_secs(10)) {
            Ok(u) => u,
            Err(e) => {
                log::warn!("{peer}: connecting to {}:{}: {e}", target.host, target.port);
                return;
            }
        };
        let up_addr = upstream
            .peer_addr()
            .map_or_else(|_| "?".to_string(), |a| a.to_string());
        log::info!(
            "{peer} -> {up_addr}{}",
            target
                .dscp
                .map(|d| format!(" dscp {d}"))
                .unwrap_or_default()
        );
        let (Ok(client2), Ok(upstream2)) = (client.try_clone(), upstream.try_clone()) else {
            log::warn!("{peer}: cloning the sockets failed");
            return;
        };
        let up = thread::spawn(move || pipe(client2, upstream2));
        let down = pipe(upstream, client);
        let up = up.join().ok().and_then(Result::ok);
        log::info!(
            "{peer} -> {up_addr} closed: {} bytes up, {} bytes down",
            up.unwrap_or(0),
            down.unwrap_or(0)
        );
    }))
}

/// Serves `listener` forever, one [`forward_one`] per connection.
pub fn forward(listener: &TcpListener, target: &ForwardTarget) -> io::Result<()> {
    loop {
        match forward_one(listener, target) {
            Ok(_) => {}
            // A connection that died before accept finished is not fatal.
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::tests::sample;
    use crate::keys::KeyRing;
    use crate::redeem::verify_redemption;
    use crate::refusal::Refusal;
    use crate::wire::Echo;
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;

    struct Setup {
        _tmp: tempfile::TempDir,
        client: Client,
        ring: KeyRing,
        bundle_path: PathBuf,
        claims: Claims,
    }

    /// A client dir with its own key, and a bundle for a coupon issued to it
    /// (valid now, for a day).
    fn setup(bundled_key: bool) -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let client = Client::open(&tmp.path().join("state")).unwrap();
        let mut ring = KeyRing::new();
        ring.insert_secret(&HolderKey::generate().unwrap().secret_paserk(), 1)
            .unwrap();
        let holder = if bundled_key {
            HolderKey::generate().unwrap()
        } else {
            client.keygen().unwrap();
            client.holder().unwrap()
        };
        let mut claims = sample(&holder);
        claims.not_before = now_unix() - 60;
        claims.expires = now_unix() + 86_400;
        let token = crate::issue(&ring, &claims).unwrap();
        let bundle = Bundle::new(token, bundled_key.then_some(&holder)).unwrap();
        let bundle_path = tmp.path().join("bundle.json");
        bundle.write(&bundle_path).unwrap();
        Setup {
            _tmp: tmp,
            client,
            ring,
            bundle_path,
            claims,
        }
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn keygen_creates_once_with_private_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let c = Client::open(&tmp.path().join("c")).unwrap();
        assert_eq!(mode(c.dir()), 0o700);
        assert_eq!(mode(&c.dir().join("coupons")), 0o700);
        let (pk, created) = c.keygen().unwrap();
        assert!(created && pk.starts_with("k4.public."));
        assert_eq!(mode(&c.holder_path()), 0o600);
        assert_eq!(c.keygen().unwrap(), (pk, false));
    }

    #[test]
    fn install_list_and_get() {
        let s = setup(false);
        let inst = s.client.install(&s.bundle_path).unwrap();
        assert_eq!(inst.claims, s.claims);
        let stored = s.client.dir().join("coupons").join("cp-0001.json");
        assert_eq!(mode(&stored), 0o600);
        let list = s.client.list().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].claims.id, "cp-0001");
        assert_eq!(list[0].kid, s.ring.signing_key().unwrap().kid);
        let text = list[0].describe(now_unix());
        assert!(text.contains("level 3 (premium)"), "{text}");
        assert!(text.contains("port 8443, dscp 46"), "{text}");
        assert!(text.contains("mon-fri 18:00-23:00"), "{text}");
        assert!(text.contains("(valid)"), "{text}");
        assert_eq!(list[0].to_json()["claims"]["level"], 3);
        assert_eq!(s.client.get("cp-0001").unwrap().claims, s.claims);
        assert!(matches!(
            s.client.get("nope"),
            Err(ClientError::NotInstalled { .. })
        ));
        assert!(matches!(
            s.client.get("../x"),
            Err(ClientError::NotInstalled { .. })
        ));
    }

    #[test]
    fn install_refuses_a_coupon_for_another_holder() {
        let s = setup(true);
        // Strip the bundled key: the coupon's holder is not this client.
        let mut b = Bundle::read(&s.bundle_path).unwrap();
        b.holder_secret = None;
        b.write(&s.bundle_path).unwrap();
        s.client.keygen().unwrap();
        let e = s.client.install(&s.bundle_path).unwrap_err();
        assert!(matches!(e, ClientError::HolderMismatch { .. }), "{e}");
        // Without any key at all, the error says to run keygen.
        let s = setup(true);
        let mut b = Bundle::read(&s.bundle_path).unwrap();
        b.holder_secret = None;
        b.write(&s.bundle_path).unwrap();
        let e = s.client.install(&s.bundle_path).unwrap_err();
        assert!(e.to_string().contains("keygen"), "{e}");
    }

    #[test]
    fn a_bundled_holder_key_is_stored_with_the_coupon() {
        let s = setup(true);
        let inst = s.client.install(&s.bundle_path).unwrap();
        assert!(inst.bundle.holder_secret.is_some());
        assert!(!s.client.holder_path().exists());
        let got = s.client.get("cp-0001").unwrap();
        assert_eq!(
            s.client.holder_for(&got).unwrap().public_paserk(),
            s.claims.holder
        );
    }

    #[test]
    fn via_parsing_defaults_the_port() {
        assert_eq!(
            parse_via("192.0.2.1").unwrap(),
            "192.0.2.1:7466".parse().unwrap()
        );
        assert_eq!(
            parse_via("192.0.2.1:9").unwrap(),
            "192.0.2.1:9".parse().unwrap()
        );
        assert_eq!(
            parse_via("[2001:db8::1]").unwrap(),
            "[2001:db8::1]:7466".parse().unwrap()
        );
        assert_eq!(
            parse_via("2001:db8::1").unwrap(),
            "[2001:db8::1]:7466".parse().unwrap()
        );
        assert!(parse_via("appliance.example")
            .unwrap_err()
            .to_string()
            .contains("--via"));
    }

    /// A fake appliance on loopback: verifies each request and answers as
    /// `answer` says; `None` drops the request.
    fn appliance(
        ring: KeyRing,
        answer: impl Fn(usize, Result<crate::Redemption, Refusal>, Echo) -> Option<StatusResponse>
            + Send
            + 'static,
        requests: usize,
    ) -> (SocketAddr, thread::JoinHandle<Vec<String>>) {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        let h = thread::spawn(move || {
            let mut nonces = Vec::new();
            let mut buf = [0u8; 2048];
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            for i in 0..requests {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    break;
                };
                let echo = Echo::of(&buf[..n]);
                nonces.extend(echo.nonce.clone());
                let r = verify_redemption(&ring, &buf[..n], from.ip(), now_unix(), 30);
                if let Some(s) = answer(i, r, echo) {
                    sock.send_to(&s.encode(), from).unwrap();
                }
            }
            nonces
        });
        (addr, h)
    }

    fn grant(r: Result<crate::Redemption, Refusal>, echo: Echo) -> StatusResponse {
        match r {
            Ok(r) => StatusResponse::granted(
                &r.claims.id,
                Some(&r.nonce),
                r.claims.level,
                r.claims.expires,
                "",
            ),
            Err(e) => StatusResponse::refused(&echo, e, e.to_string()),
        }
    }

    #[test]
    fn redeem_is_granted_by_an_appliance_that_verifies_it() {
        let s = setup(false);
        s.client.install(&s.bundle_path).unwrap();
        let (via, h) = appliance(s.ring, |_, r, e| Some(grant(r, e)), 1);
        let status = s
            .client
            .redeem("cp-0001", &RedeemOptions::new(via))
            .unwrap();
        assert_eq!(status.status, Status::Granted, "{status:?}");
        assert_eq!(status.level, Some(3));
        assert!(format_status(&status).starts_with("granted: level 3 (premium) until "));
        assert_eq!(h.join().unwrap().len(), 1);
    }

    #[test]
    fn redeem_reports_a_refusal() {
        let s = setup(false);
        s.client.install(&s.bundle_path).unwrap();
        // This appliance does not trust the issuer.
        let (via, _h) = appliance(KeyRing::new(), |_, r, e| Some(grant(r, e)), 1);
        let status = s
            .client
            .redeem("cp-0001", &RedeemOptions::new(via))
            .unwrap();
        assert_eq!(status.reason, Some(Refusal::UnknownKey));
        assert_eq!(status.coupon.as_deref(), Some("cp-0001"));
        assert!(format_status(&status).starts_with("refused: unknown_key: "));
    }

    #[test]
    fn each_attempt_has_a_fresh_nonce_and_a_lost_request_is_retried() {
        let s = setup(false);
        s.client.install(&s.bundle_path).unwrap();
        let (via, h) = appliance(s.ring, |i, r, e| (i > 0).then(|| grant(r, e)), 2);
        let mut opts = RedeemOptions::new(via);
        opts.timeout = Duration::from_millis(300);
        let status = s.client.redeem("cp-0001", &opts).unwrap();
        assert_eq!(status.status, Status::Granted);
        let nonces = h.join().unwrap();
        assert_eq!(nonces.len(), 2);
        assert_ne!(nonces[0], nonces[1]);
    }

    #[test]
    fn redeem_times_out_without_an_answer() {
        let s = setup(false);
        s.client.install(&s.bundle_path).unwrap();
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut opts = RedeemOptions::new(silent.local_addr().unwrap());
        opts.timeout = Duration::from_millis(100);
        opts.attempts = 2;
        let e = s.client.redeem("cp-0001", &opts).unwrap_err();
        assert!(
            matches!(e, ClientError::NoAnswer { attempts: 2, .. }),
            "{e}"
        );
    }

    #[test]
    fn forward_target_applies_the_coupon_modes() {
        let holder = HolderKey::generate().unwrap();
        let mut c = sample(&holder);
        let t = ForwardTarget::for_coupon(&c, "game.example:443").unwrap();
        assert_eq!(
            t,
            ForwardTarget {
                host: "game.example".into(),
                port: 8443,
                dscp: Some(46)
            }
        );
        c.modes = vec![Mode::Addr("2001:db8::9".parse().unwrap())];
        let t = ForwardTarget::for_coupon(&c, "[2001:db8::1]:443").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.dscp),
            ("2001:db8::9", 443, None)
        );
        for bad in ["nohost", ":80", "h:0", "h:x", "2001:db8::1:80"] {
            assert!(ForwardTarget::for_coupon(&c, bad).is_err(), "{bad}");
        }
    }

    /// The "priority endpoint": reads to EOF, answers upper-cased, returns
    /// what it read.
    fn upper_echo_server() -> (u16, thread::JoinHandle<Vec<u8>>) {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let h = thread::spawn(move || {
            let (mut s, _) = server.accept().unwrap();
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).unwrap();
            s.write_all(&buf.to_ascii_uppercase()).unwrap();
            buf
        });
        (port, h)
    }

    #[test]
    fn upstream_socket_carries_the_coupon_dscp() {
        let (port, srv) = upper_echo_server();
        let target = ForwardTarget {
            host: "127.0.0.1".into(),
            port,
            dscp: Some(46),
        };
        let mut upstream = connect_upstream(&target, Duration::from_secs(5)).unwrap();
        assert_eq!(socket2::SockRef::from(&upstream).tos().unwrap(), 46 << 2);
        upstream.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        upstream.read_to_end(&mut back).unwrap();
        assert_eq!(srv.join().unwrap(), b"");
    }

    #[test]
    fn forwarder_sends_to_the_coupon_port_and_copies_both_ways() {
        let (server_port, srv) = upper_echo_server();
        let holder = HolderKey::generate().unwrap();
        let mut c = sample(&holder);
        c.modes = vec![Mode::Port(server_port), Mode::Dscp(46)];
        // --to names port 9; the port mode sends it to the server instead.
        let target = ForwardTarget::for_coupon(&c, "127.0.0.1:9").unwrap();
        assert_eq!(target.port, server_port);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let fwd = thread::spawn(move || forward_one(&listener, &target).unwrap().join().unwrap());
        let mut user = TcpStream::connect(local).unwrap();
        user.write_all(b"hello priority").unwrap();
        user.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        user.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"HELLO PRIORITY");
        assert_eq!(srv.join().unwrap(), b"hello priority");
        fwd.join().unwrap();
    }
}
