//! The appliance configuration: strict TOML, explicit defaults, `validate()`.
//!
//! The embedded default is `config/sluice.toml` (the documented example); a
//! test loads it. Unknown keys anywhere are an error that names the key.
use std::fmt;
use std::path::{Path, PathBuf};

use std::net::IpAddr;

pub use ipnet::IpNet;
use serde::Deserialize;
use thiserror::Error;

/// The default configuration file, embedded in the binary.
pub const DEFAULT_TOML: &str = include_str!("../../config/sluice.toml");

/// The largest rx burst a worker accepts (the dataplane's burst array size).
pub const MAX_BURST: usize = 256;

/// A configuration problem. The message names the field and what was expected.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("config field `{field}` = {value}: {expected}")]
    Invalid {
        field: &'static str,
        value: String,
        expected: String,
    },
}

fn invalid(
    field: &'static str,
    value: impl fmt::Debug,
    expected: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        field,
        value: format!("{value:?}"),
        expected: expected.into(),
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub eal: EalConfig,
    pub ports: PortsConfig,
    #[serde(default)]
    pub workers: WorkersConfig,
    #[serde(default)]
    pub mempool: MempoolConfig,
    /// Static rewrite rules (first match wins), applied to traffic from the
    /// subscriber side; replies get the inverse rewrite. Until the policy
    /// tables exist, this is how an operator (or a test) sets a treatment.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// The per-worker flow table that remembers each flow's decision and
    /// its reverse rewrite.
    #[serde(default)]
    pub flows: FlowsConfig,
    /// The control socket and the durable policy store.
    #[serde(default)]
    pub control: ControlConfig,
    /// Sizes of the workers' policy tables (fixed at start).
    #[serde(default)]
    pub tables: TablesSizes,
    /// The egress scheduler of ports with a `rate_bps`.
    #[serde(default)]
    pub scheduler: SchedulerConfig,
    /// Signed priority coupons: keys, in-band redemption, DNS snooping.
    #[serde(default)]
    pub coupons: CouponsConfig,
}

/// Slots of each ring between the workers and the control thread (punted
/// control packets one way, answers the other): a thousand control packets
/// per 10 ms poll of the control thread. They hold pool buffers, so the
/// pool budget counts them.
pub const PUNT_RING_SLOTS: usize = 1024;

/// Signed priority coupons (see the `sluice-coupon` crate and
/// `control/src/coupons/`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CouponsConfig {
    /// The issuer's keys (PASERK files, secret ones mode 0600); `None`:
    /// `<control.state_dir>/keys`.
    #[serde(default)]
    pub keys_dir: Option<PathBuf>,
    /// UDP destination port of in-band redemption requests, to any address
    /// beyond the appliance (the appliance consumes them and answers in
    /// that address's name); 0 turns in-band redemption off.
    #[serde(default = "default_redeem_port")]
    pub redeem_port: u16,
    /// How far a redemption's timestamp may be from the appliance's clock.
    #[serde(default = "default_max_skew")]
    pub max_skew_secs: u64,
    /// Learn hostname -> address from DNS answers crossing the appliance,
    /// for coupons scoped to hostnames.
    #[serde(default = "default_true")]
    pub snoop_dns: bool,
    /// Hostname -> address mappings kept at most.
    #[serde(default = "default_dns_entries")]
    pub dns_entries: usize,
    /// The resolvers whose answers are believed (their addresses, as seen
    /// upstream). Empty: any answer crossing from the upstream side, which
    /// lets a subscriber who runs a DNS server on the far side point a
    /// scoped hostname at an address of their choosing; set this in
    /// production.
    #[serde(default)]
    pub dns_resolvers: Vec<IpAddr>,
    /// In-band redemption requests handled per second from one source
    /// address (more are dropped and counted): the answers go to the
    /// request's source, so a spoofed source must not turn the appliance
    /// into a reflector.
    #[serde(default = "default_requests_per_source")]
    pub requests_per_source: u32,
}

fn default_requests_per_source() -> u32 {
    10
}

fn default_redeem_port() -> u16 {
    7466
}

fn default_max_skew() -> u64 {
    30
}

fn default_true() -> bool {
    true
}

fn default_dns_entries() -> usize {
    65536
}

impl Default for CouponsConfig {
    fn default() -> Self {
        CouponsConfig {
            keys_dir: None,
            redeem_port: default_redeem_port(),
            max_skew_secs: default_max_skew(),
            snoop_dns: true,
            dns_entries: default_dns_entries(),
            dns_resolvers: Vec::new(),
            requests_per_source: default_requests_per_source(),
        }
    }
}

impl CouponsConfig {
    /// Where the issuer keys live.
    pub fn keys_dir(&self, control: &ControlConfig) -> PathBuf {
        self.keys_dir
            .clone()
            .unwrap_or_else(|| control.state_dir.join("keys"))
    }
}

/// How shaped ports schedule their egress.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// `levels`: eight priority levels (strict with ceilings, then DRR,
    /// flow fairness and CoDel in best effort). `fifo`: one tail-drop queue
    /// at the same shaped rate, for comparison.
    #[serde(default)]
    pub mode: SchedMode,
    /// Packets each level may hold (per port and worker).
    #[serde(default = "default_queue_packets")]
    pub queue_packets: u32,
    /// Framing bytes per packet the shaper counts: preamble and SFD 8,
    /// inter-frame gap 12, FCS 4.
    #[serde(default = "default_overhead")]
    pub overhead_bytes: u32,
    /// CoDel target sojourn time, microseconds.
    #[serde(default = "default_codel_target")]
    pub codel_target_us: u64,
    /// CoDel interval, microseconds.
    #[serde(default = "default_codel_interval")]
    pub codel_interval_us: u64,
    /// What a metered binding's packets above its peak rate get.
    #[serde(default)]
    pub over_peak: OverPeak,
}

/// The fate of metered packets above the binding's peak rate.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OverPeak {
    /// Dropped (counted).
    #[default]
    Drop,
    /// Sent at best effort (counted).
    Demote,
}

/// The scheduling discipline of shaped ports.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SchedMode {
    #[default]
    Levels,
    Fifo,
}

fn default_queue_packets() -> u32 {
    512
}

fn default_overhead() -> u32 {
    24
}

fn default_codel_target() -> u64 {
    5_000
}

fn default_codel_interval() -> u64 {
    100_000
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            mode: SchedMode::default(),
            queue_packets: default_queue_packets(),
            overhead_bytes: default_overhead(),
            codel_target_us: default_codel_target(),
            codel_interval_us: default_codel_interval(),
            over_peak: OverPeak::default(),
        }
    }
}

/// How many bindings the workers' policy tables hold. Allocated whole at
/// start-up (about 84 bytes a binding); a policy with more rows than fit
/// is served only as far as it fits, with an error counted and logged.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TablesSizes {
    /// Coupon bindings (one per coupon, up to four per subscriber).
    #[serde(default = "default_bindings")]
    pub coupons: u32,
    /// Login bindings (one per subscriber address).
    #[serde(default = "default_bindings")]
    pub logins: u32,
    /// Meters for rows with a rate (a coupon, an SP allocation, each login
    /// of a rated tier, the default); 24 bytes each, plus 64 per worker.
    #[serde(default = "default_meters")]
    pub meters: u32,
}

fn default_meters() -> u32 {
    1 << 16
}

fn default_bindings() -> u32 {
    1 << 20
}

impl Default for TablesSizes {
    fn default() -> Self {
        TablesSizes {
            coupons: default_bindings(),
            logins: default_bindings(),
            meters: default_meters(),
        }
    }
}

/// Where the control socket listens and where accepted policy is kept.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Unix-domain socket for `sluicectl` (created mode 0600).
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Directory of the policy journal and snapshots (created if missing).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
}

fn default_socket() -> PathBuf {
    "/run/sluice/control.sock".into()
}

fn default_state_dir() -> PathBuf {
    "/var/lib/sluice".into()
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: default_socket(),
            state_dir: default_state_dir(),
        }
    }
}

/// A static rule: what it matches (every omitted field matches anything)
/// and what it does.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// A name for counters and logs.
    pub name: String,
    /// Destination prefix, e.g. "198.18.0.2/32" or "2001:db8::/64".
    pub dst: Option<IpNet>,
    /// Source (subscriber) prefix.
    pub src: Option<IpNet>,
    /// "tcp" or "udp".
    pub protocol: Option<Protocol>,
    /// Destination port.
    pub dst_port: Option<u16>,
    /// Set DSCP (0..=63) in the IPv4 TOS / IPv6 traffic class.
    pub dscp: Option<u8>,
    /// Rewrite the destination port to this one (replies are rewritten back).
    pub remap_port: Option<u16>,
    /// Rewrite the destination address to this one (replies are rewritten back).
    pub remap_ip: Option<IpAddr>,
    /// Clamp the MSS option of TCP SYN and SYN-ACK to this value.
    pub mss: Option<u16>,
}

/// A transport protocol a rule can match.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

/// Flow-table sizing and timeouts.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FlowsConfig {
    /// Flows per worker. Each worker's table takes 256 bytes per flow of
    /// capacity (4 slots of 64 bytes, rounded up to a power of two) plus
    /// 128 per flow for tails: 24 MiB at the default 65 536, 6 GiB at the
    /// most (2^24).
    #[serde(default = "default_flow_capacity")]
    pub capacity: u32,
    /// Idle timeout of an established flow, seconds.
    #[serde(default = "default_idle_secs")]
    pub idle_timeout_secs: u32,
    /// Timeout after a TCP FIN or RST was seen, seconds.
    #[serde(default = "default_closing_secs")]
    pub closing_timeout_secs: u32,
}

fn default_flow_capacity() -> u32 {
    65536
}

fn default_idle_secs() -> u32 {
    300
}

fn default_closing_secs() -> u32 {
    10
}

impl Default for FlowsConfig {
    fn default() -> Self {
        FlowsConfig {
            capacity: default_flow_capacity(),
            idle_timeout_secs: default_idle_secs(),
            closing_timeout_secs: default_closing_secs(),
        }
    }
}

/// Extra EAL arguments and the runtime-file prefix.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EalConfig {
    #[serde(default = "default_eal_args")]
    pub args: Vec<String>,
    #[serde(default = "default_file_prefix")]
    pub file_prefix: String,
}

fn default_eal_args() -> Vec<String> {
    ["--no-huge", "-m", "512", "--no-shconf"]
        .map(String::from)
        .to_vec()
}

fn default_file_prefix() -> String {
    "auto".into()
}

impl Default for EalConfig {
    fn default() -> Self {
        EalConfig {
            args: default_eal_args(),
            file_prefix: default_file_prefix(),
        }
    }
}

/// The port pair: subscriber side and upstream side.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PortsConfig {
    pub subscriber: PortConfig,
    pub upstream: PortConfig,
}

/// One port.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    /// A vdev spec (`net_null0,copy=1`) or a PCI address (`0000:03:00.0`).
    pub device: String,
    #[serde(default = "default_desc")]
    pub rx_desc: u16,
    #[serde(default = "default_desc")]
    pub tx_desc: u16,
    /// Shape this port's egress to this many bits/s on the wire (framing
    /// overhead included, see `scheduler.overhead_bytes`), so that queues
    /// build inside Sluice, where the scheduler decides who waits. Unset:
    /// no scheduler on this port, packets go as fast as the port takes
    /// them. With several workers each gets an equal share.
    #[serde(default)]
    pub rate_bps: Option<u64>,
}

fn default_desc() -> u16 {
    1024
}

/// Worker cores and burst size.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkersConfig {
    #[serde(default)]
    pub main_core: u32,
    #[serde(default = "default_cores")]
    pub cores: Vec<u32>,
    #[serde(default = "default_burst")]
    pub burst: usize,
}

fn default_cores() -> Vec<u32> {
    vec![1]
}

fn default_burst() -> usize {
    32
}

impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig {
            main_core: 0,
            cores: default_cores(),
            burst: default_burst(),
        }
    }
}

/// The packet-buffer pool.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MempoolConfig {
    #[serde(default = "default_mbufs")]
    pub mbufs: u32,
    #[serde(default = "default_cache")]
    pub cache: u32,
    #[serde(default = "default_data_room")]
    pub data_room: u16,
}

fn default_mbufs() -> u32 {
    16383
}

fn default_cache() -> u32 {
    256
}

fn default_data_room() -> u16 {
    2176
}

impl Default for MempoolConfig {
    fn default() -> Self {
        MempoolConfig {
            mbufs: default_mbufs(),
            cache: default_cache(),
            data_room: default_data_room(),
        }
    }
}

/// What a port's `device` string names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    /// A PCI device, allowed with `-a`. The ethdev name is the address.
    Pci(String),
    /// A virtual device created with `--vdev spec`; `name` is the part
    /// before the first comma, which is also the ethdev name.
    Vdev { name: String, spec: String },
}

impl Device {
    /// Parses a device string; `field` names it in errors.
    pub fn parse(field: &'static str, s: &str) -> Result<Device, ConfigError> {
        let s = s.trim();
        if is_pci_address(s) {
            return Ok(Device::Pci(s.to_owned()));
        }
        let name = s.split(',').next().unwrap_or_default();
        let driver_ok = ["net_", "eth_"].iter().any(|p| name.starts_with(p)) && name.len() > 4;
        if !driver_ok || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(invalid(
                field,
                s,
                "a PCI address (0000:03:00.0) or a vdev spec starting with a net_ driver name \
                 (net_tap0,iface=sl0; net_null0,copy=1; net_pcap0,rx_pcap=in.pcap,tx_pcap=out.pcap)",
            ));
        }
        Ok(Device::Vdev {
            name: name.to_owned(),
            spec: s.to_owned(),
        })
    }

    /// The ethdev name DPDK gives the port.
    pub fn port_name(&self) -> &str {
        match self {
            Device::Pci(a) => a,
            Device::Vdev { name, .. } => name,
        }
    }
}

fn is_pci_address(s: &str) -> bool {
    // [dddd:]bb:dd.f, hex digits.
    let (bdf, dom_ok) = match s.matches(':').count() {
        2 => {
            let (dom, rest) = s.split_once(':').unwrap_or_default();
            (
                rest,
                dom.len() == 4 && dom.chars().all(|c| c.is_ascii_hexdigit()),
            )
        }
        1 => (s, true),
        _ => return false,
    };
    let Some((bus, devfn)) = bdf.split_once(':') else {
        return false;
    };
    let Some((dev, func)) = devfn.split_once('.') else {
        return false;
    };
    dom_ok
        && bus.len() == 2
        && dev.len() == 2
        && func.len() == 1
        && [bus, dev, func]
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}

impl Config {
    /// The embedded default configuration.
    pub fn embedded_default() -> Config {
        Config::from_toml(DEFAULT_TOML, "embedded default")
            .expect("the embedded default config is valid (tested)")
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text, &path.display().to_string())
    }

    /// Checks every cross-field rule. Parsing already rejected unknown keys
    /// and wrong types.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.coupons;
        if !(1..=3600).contains(&c.max_skew_secs) {
            return Err(invalid(
                "coupons.max_skew_secs",
                c.max_skew_secs,
                "1..=3600 seconds",
            ));
        }
        if c.redeem_port == 53 {
            return Err(invalid(
                "coupons.redeem_port",
                c.redeem_port,
                "a port other than DNS's 53 (0 turns redemption off)",
            ));
        }
        if !(1..=10_000).contains(&c.requests_per_source) {
            return Err(invalid(
                "coupons.requests_per_source",
                c.requests_per_source,
                "1..=10000 per second",
            ));
        }
        if !(16..=10_000_000).contains(&c.dns_entries) {
            return Err(invalid(
                "coupons.dns_entries",
                c.dns_entries,
                "16..=10000000",
            ));
        }
        let sub = Device::parse("ports.subscriber.device", &self.ports.subscriber.device)?;
        let up = Device::parse("ports.upstream.device", &self.ports.upstream.device)?;
        if sub.port_name() == up.port_name() {
            return Err(invalid(
                "ports.upstream.device",
                &self.ports.upstream.device,
                "a different device than ports.subscriber.device",
            ));
        }
        for (field, p) in [
            ("ports.subscriber", &self.ports.subscriber),
            ("ports.upstream", &self.ports.upstream),
        ] {
            for (name, d) in [("rx_desc", p.rx_desc), ("tx_desc", p.tx_desc)] {
                if !(32..=16384).contains(&d) {
                    let _ = name;
                    return Err(invalid(field, d, format!("{name} in 32..=16384")));
                }
            }
        }
        let w = &self.workers;
        if w.cores.is_empty() {
            return Err(invalid(
                "workers.cores",
                &w.cores,
                "at least one worker core",
            ));
        }
        if w.cores.len() > 64 {
            return Err(invalid(
                "workers.cores",
                &w.cores,
                "at most 64 worker cores",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for &c in &w.cores {
            if c == w.main_core {
                return Err(invalid(
                    "workers.cores",
                    &w.cores,
                    format!("cores other than workers.main_core ({})", w.main_core),
                ));
            }
            if c >= 1024 || !seen.insert(c) {
                return Err(invalid(
                    "workers.cores",
                    &w.cores,
                    "distinct core ids below 1024",
                ));
            }
        }
        if w.main_core >= 1024 {
            return Err(invalid(
                "workers.main_core",
                w.main_core,
                "a core id below 1024",
            ));
        }
        if !(1..=MAX_BURST).contains(&w.burst) {
            return Err(invalid(
                "workers.burst",
                w.burst,
                format!("1..={MAX_BURST}"),
            ));
        }
        let m = &self.mempool;
        if m.cache > 512 || (m.cache as u64) * 3 > (m.mbufs as u64) * 2 {
            return Err(invalid(
                "mempool.cache",
                m.cache,
                "at most 512 and at most mbufs / 1.5 (a DPDK limit)",
            ));
        }
        if m.data_room < 1152 {
            return Err(invalid(
                "mempool.data_room",
                m.data_room,
                "at least 1152 (128 bytes of headroom plus a 1024-byte frame)",
            ));
        }
        let needed = self.mbufs_needed();
        if (m.mbufs as u64) < needed {
            return Err(invalid(
                "mempool.mbufs",
                m.mbufs,
                format!(
                    "at least {needed}: every rx/tx descriptor of every queue, the worker \
                     bursts and the per-lcore caches must fit"
                ),
            ));
        }
        for a in &self.eal.args {
            let flag = a.split('=').next().unwrap_or_default();
            if [
                "-l",
                "--lcores",
                "-c",
                "--main-lcore",
                "--file-prefix",
                "--vdev",
                "-a",
                "--allow",
            ]
            .contains(&flag)
            {
                return Err(invalid(
                    "eal.args",
                    a,
                    "no lcore, vdev, allow-list or file-prefix flags: they are derived from \
                     [workers], [ports] and eal.file_prefix",
                ));
            }
        }
        if self.eal.file_prefix.is_empty()
            || !self
                .eal
                .file_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid(
                "eal.file_prefix",
                &self.eal.file_prefix,
                "\"auto\" or letters, digits, '-' and '_'",
            ));
        }
        self.validate_rules()
    }

    fn validate_rules(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::BTreeSet::new();
        for r in &self.rules {
            if r.name.is_empty() || !names.insert(r.name.as_str()) {
                return Err(invalid(
                    "rules.name",
                    &r.name,
                    "a non-empty name, unique among rules",
                ));
            }
            if r.dscp.is_none() && r.remap_port.is_none() && r.remap_ip.is_none() && r.mss.is_none()
            {
                return Err(invalid(
                    "rules",
                    &r.name,
                    "at least one action: dscp, remap_port, remap_ip or mss",
                ));
            }
            if let Some(d) = r.dscp {
                if d > 63 {
                    return Err(invalid("rules.dscp", d, "a DSCP value in 0..=63"));
                }
            }
            if (r.remap_port.is_some() || r.dst_port.is_some()) && r.protocol.is_none() {
                return Err(invalid(
                    "rules.protocol",
                    &r.name,
                    "\"tcp\" or \"udp\" when the rule matches or remaps a port",
                ));
            }
            if r.remap_port == Some(0) || r.dst_port == Some(0) {
                return Err(invalid("rules.remap_port", &r.name, "ports in 1..=65535"));
            }
            if let Some(m) = r.mss {
                if !(536..=9000).contains(&m) {
                    return Err(invalid("rules.mss", m, "an MSS in 536..=9000"));
                }
                if r.protocol == Some(Protocol::Udp) {
                    return Err(invalid("rules.mss", &r.name, "mss only on tcp rules"));
                }
            }
            if let Some(ip) = r.remap_ip {
                match r.dst {
                    Some(net) if net.addr().is_ipv4() == ip.is_ipv4() => {}
                    _ => {
                        return Err(invalid(
                            "rules.remap_ip",
                            ip,
                            "a `dst` prefix of the same address family as remap_ip",
                        ))
                    }
                }
            }
            if let (Some(a), Some(b)) = (r.src, r.dst) {
                if a.addr().is_ipv4() != b.addr().is_ipv4() {
                    return Err(invalid("rules.src", a, "the same address family as dst"));
                }
            }
        }
        // sockaddr_un.sun_path holds 108 bytes including the NUL.
        let sock = self.control.socket.as_os_str().len();
        if sock == 0 || sock > 107 {
            return Err(invalid(
                "control.socket",
                &self.control.socket,
                "a path of 1..=107 bytes (the Unix socket address limit)",
            ));
        }
        if self.control.state_dir.as_os_str().is_empty() {
            return Err(invalid(
                "control.state_dir",
                &self.control.state_dir,
                "a directory path",
            ));
        }
        for (field, p) in [
            ("ports.subscriber.rate_bps", &self.ports.subscriber),
            ("ports.upstream.rate_bps", &self.ports.upstream),
        ] {
            if let Some(r) = p.rate_bps {
                if !(64_000..=400_000_000_000).contains(&r) {
                    return Err(invalid(field, r, "64000..=400000000000 bits/s"));
                }
            }
        }
        let sc = &self.scheduler;
        if !(16..=65536).contains(&sc.queue_packets) {
            return Err(invalid(
                "scheduler.queue_packets",
                sc.queue_packets,
                "16..=65536 packets",
            ));
        }
        if sc.overhead_bytes > 64 {
            return Err(invalid(
                "scheduler.overhead_bytes",
                sc.overhead_bytes,
                "0..=64 bytes",
            ));
        }
        if sc.codel_target_us == 0 || sc.codel_interval_us < sc.codel_target_us {
            return Err(invalid(
                "scheduler.codel_target_us",
                (sc.codel_target_us, sc.codel_interval_us),
                "a target above 0 and an interval at least the target",
            ));
        }
        for (field, n) in [
            ("tables.coupons", self.tables.coupons),
            ("tables.logins", self.tables.logins),
            ("tables.meters", self.tables.meters),
        ] {
            if !(1..=1 << 24).contains(&n) {
                return Err(invalid(field, n, "1..=16777216 bindings"));
            }
        }
        let f = &self.flows;
        if !(1024..=1 << 24).contains(&f.capacity) {
            return Err(invalid(
                "flows.capacity",
                f.capacity,
                "1024..=16777216 entries",
            ));
        }
        if f.idle_timeout_secs == 0 || f.closing_timeout_secs == 0 {
            return Err(invalid(
                "flows.idle_timeout_secs",
                (f.idle_timeout_secs, f.closing_timeout_secs),
                "timeouts of at least 1 s",
            ));
        }
        Ok(())
    }

    /// Buffers the ports and workers can hold at once.
    pub fn mbufs_needed(&self) -> u64 {
        let q = self.workers.cores.len() as u64;
        let ports = [&self.ports.subscriber, &self.ports.upstream];
        let desc: u64 = ports
            .iter()
            .map(|p| q * (p.rx_desc as u64 + p.tx_desc as u64))
            .sum();
        let lcores = q + 1;
        // Packets the schedulers of shaped ports may hold at once.
        let shaped = ports.iter().filter(|p| p.rate_bps.is_some()).count() as u64;
        let queued = q * shaped * 8 * u64::from(self.scheduler.queue_packets);
        // Control packets waiting in the punt rings (to and from the
        // control thread).
        let punted = if self.coupons.redeem_port != 0 || self.coupons.snoop_dns {
            2 * PUNT_RING_SLOTS as u64
        } else {
            0
        };
        desc + queued
            + punted
            + lcores * (self.mempool.cache as u64 + 2 * self.workers.burst as u64)
    }

    /// The two port devices, subscriber first.
    pub fn devices(&self) -> (Device, Device) {
        // validate() already accepted both.
        let parse = |s: &str| Device::parse("ports", s).expect("validated");
        (
            parse(&self.ports.subscriber.device),
            parse(&self.ports.upstream.device),
        )
    }

    /// The full EAL argument list: program name, lcores, file prefix, the
    /// configured extra args, the ports' devices, then `extra` (the command
    /// line's arguments after `--`, which come last so they win).
    pub fn eal_args(&self, program: &str, pid: u32, extra: &[String]) -> Vec<String> {
        let w = &self.workers;
        let mut cores = vec![w.main_core];
        cores.extend(&w.cores);
        let lcores = cores
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let prefix = if self.eal.file_prefix == "auto" {
            format!("sluice-{pid}")
        } else {
            self.eal.file_prefix.clone()
        };
        let mut args = vec![
            program.to_owned(),
            "-l".into(),
            lcores,
            "--main-lcore".into(),
            w.main_core.to_string(),
            "--file-prefix".into(),
            prefix,
        ];
        args.extend(self.eal.args.iter().cloned());
        let (sub, up) = self.devices();
        let mut any_pci = false;
        for d in [sub, up] {
            match d {
                Device::Pci(a) => {
                    any_pci = true;
                    args.extend(["-a".into(), a]);
                }
                Device::Vdev { spec, .. } => args.extend(["--vdev".into(), spec]),
            }
        }
        // With only virtual ports, keep EAL away from every PCI device.
        if !any_pci && !extra.iter().any(|a| a == "-a" || a.starts_with("--allow")) {
            args.push("--no-pci".into());
        }
        args.extend(extra.iter().cloned());
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(edit: &str) -> Result<Config, ConfigError> {
        let base = r#"
[ports.subscriber]
device = "net_null0,copy=1"
[ports.upstream]
device = "net_null1,copy=1"
"#;
        Config::from_toml(&format!("{base}\n{edit}"), "test")
    }

    #[test]
    fn example_file_is_the_embedded_default_and_valid() {
        let cfg = Config::embedded_default();
        assert_eq!(cfg.workers.cores, vec![1]);
        assert_eq!(cfg.devices().0.port_name(), "net_tap0");
        // Every key in the example equals its serde default, but the demo's
        // shaped upstream rate.
        let minimal = Config::from_toml(
            "[ports.subscriber]\ndevice = \"net_tap0,iface=sl-sub\"\n\
             [ports.upstream]\ndevice = \"net_tap1,iface=sl-up\"\nrate_bps = 50000000\n",
            "minimal",
        )
        .unwrap();
        assert_eq!(cfg, minimal);
        assert_eq!(cfg.ports.subscriber.rate_bps, None);
    }

    #[test]
    fn unknown_key_is_rejected_by_name() {
        let e = with("[workers]\ncorez = [1]").unwrap_err().to_string();
        assert!(e.contains("unknown field `corez`"), "{e}");
        let e = with("[bogus]\nx = 1").unwrap_err().to_string();
        assert!(e.contains("unknown field `bogus`"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = with("[workers]\nburst = \"lots\"").unwrap_err().to_string();
        assert!(e.contains("burst"), "{e}");
    }

    #[test]
    fn invalid_values_name_field_and_expectation() {
        let cases = [
            ("[workers]\nburst = 0", "workers.burst"),
            ("[workers]\nburst = 1000", "workers.burst"),
            ("[workers]\ncores = []", "workers.cores"),
            ("[workers]\ncores = [0]", "workers.cores"),
            ("[workers]\ncores = [1, 1]", "workers.cores"),
            ("[mempool]\nmbufs = 1000\ncache = 32", "mempool.mbufs"),
            ("[mempool]\ncache = 100000", "mempool.cache"),
            ("[mempool]\ndata_room = 100", "mempool.data_room"),
            ("[eal]\nargs = [\"-l\", \"0-1\"]", "eal.args"),
            ("[eal]\nfile_prefix = \"a/b\"", "eal.file_prefix"),
            ("[coupons]\nredeem_port = 53", "coupons.redeem_port"),
            ("[coupons]\nmax_skew_secs = 0", "coupons.max_skew_secs"),
            ("[coupons]\ndns_entries = 1", "coupons.dns_entries"),
            ("[coupons]\nredeem = 1", "redeem"),
        ];
        for (edit, field) in cases {
            let e = with(edit).unwrap_err().to_string();
            assert!(e.contains(field), "{edit:?} gave {e}");
        }
    }

    #[test]
    fn rules_parse_with_every_action() {
        let cfg = with(
            r#"
[[rules]]
name = "web"
dst = "198.18.0.2/32"
protocol = "tcp"
dst_port = 80
remap_port = 8080
remap_ip = "198.18.0.3"
dscp = 46
mss = 1360
[[rules]]
name = "v6-voice"
dst = "2001:db8::/64"
dscp = 46
"#,
        )
        .unwrap();
        assert_eq!(cfg.rules.len(), 2);
        assert_eq!(cfg.rules[0].remap_port, Some(8080));
        assert_eq!(cfg.rules[1].dst.unwrap().prefix_len(), 64);
    }

    #[test]
    fn bad_rules_name_the_field() {
        let cases = [
            ("[[rules]]\nname = \"a\"", "at least one action"),
            ("[[rules]]\nname = \"a\"\ndscp = 64", "rules.dscp"),
            ("[[rules]]\nname = \"a\"\nremap_port = 80", "rules.protocol"),
            (
                "[[rules]]\nname = \"a\"\nremap_ip = \"1.2.3.4\"",
                "rules.remap_ip",
            ),
            (
                "[[rules]]\nname = \"a\"\ndst = \"2001:db8::/64\"\nremap_ip = \"1.2.3.4\"",
                "rules.remap_ip",
            ),
            (
                "[[rules]]\nname = \"a\"\ndst = \"300.1.1.1/8\"\ndscp = 1",
                "dst",
            ),
            (
                "[[rules]]\nname = \"a\"\nprotocol = \"sctp\"\ndscp = 1",
                "protocol",
            ),
            (
                "[[rules]]\nname = \"a\"\nprotocol = \"tcp\"\nmss = 100",
                "rules.mss",
            ),
            (
                "[[rules]]\nname = \"a\"\ndscp = 1\n[[rules]]\nname = \"a\"\ndscp = 2",
                "rules.name",
            ),
            (
                "[[rules]]\nname = \"a\"\ndscp = 1\ncolour = 3",
                "unknown field `colour`",
            ),
            ("[flows]\ncapacity = 10", "flows.capacity"),
        ];
        for (edit, needle) in cases {
            let e = with(edit).unwrap_err().to_string();
            assert!(e.contains(needle), "{edit:?} gave {e}");
        }
    }

    #[test]
    fn same_device_twice_is_rejected() {
        let e = Config::from_toml(
            "[ports.subscriber]\ndevice = \"net_null0\"\n[ports.upstream]\ndevice = \"net_null0,copy=1\"\n",
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("ports.upstream.device"), "{e}");
    }

    #[test]
    fn devices_parse_pci_and_vdev() {
        assert_eq!(
            Device::parse("f", "0000:03:00.0").unwrap(),
            Device::Pci("0000:03:00.0".into())
        );
        assert_eq!(
            Device::parse("f", "03:00.1").unwrap(),
            Device::Pci("03:00.1".into())
        );
        let d = Device::parse("f", "net_pcap0,rx_pcap=a.pcap").unwrap();
        assert_eq!(d.port_name(), "net_pcap0");
        for bad in [
            "",
            "eth0",
            "net_",
            "00:03:00.0.1",
            "net_tap0 ,iface=x",
            "xyz,iface=1",
        ] {
            assert!(Device::parse("f", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn eal_args_derive_lcores_devices_and_prefix() {
        let cfg = with("[workers]\nmain_core = 0\ncores = [1]").unwrap();
        let a = cfg.eal_args("sluice", 42, &["--log-level=8".into()]);
        let s = a.join(" ");
        assert!(
            s.starts_with("sluice -l 0,1 --main-lcore 0 --file-prefix sluice-42"),
            "{s}"
        );
        assert!(
            s.contains("--vdev net_null0,copy=1 --vdev net_null1,copy=1 --no-pci"),
            "{s}"
        );
        assert!(s.ends_with("--log-level=8"), "{s}");
    }
}
