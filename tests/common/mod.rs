//! Shared helpers for the integration tests: run the real `sluice` binary,
//! write and read pcaps, build test traffic, and manage network namespaces
//! through `scripts/netns.sh` (the same helper the demo uses).
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use etherparse::PacketBuilder;
use pcap_file::pcap::{PcapPacket, PcapReader, PcapWriter};

pub const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
pub const SLUICECTL: &str = env!("CARGO_BIN_EXE_sluicectl");

/// Runs `sluicectl --socket <socket> <args>` and returns its output.
pub fn sluicectl(socket: &Path, args: &[&str]) -> Output {
    Command::new(SLUICECTL)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run sluicectl")
}

/// `sluicectl --json stats` of a running appliance, parsed.
pub fn stats(socket: &Path) -> serde_json::Value {
    let out = sluicectl(socket, &["--json", "stats"]);
    assert!(out.status.success(), "stats: {}", describe(&out));
    serde_json::from_slice(&out.stdout).expect("stats is JSON")
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Fails the test (not skips it) when not root: namespaces and taps need it.
pub fn require_root() {
    let out = Command::new("id").arg("-u").output().expect("run id -u");
    let uid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(
        uid, "0",
        "this test needs root (network namespaces, tap devices)"
    );
}

/// A short name unique to this process and call, for interfaces (<= 15
/// chars), namespaces and file names.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{tag}{}{n}", std::process::id() % 100_000)
}

/// Config TOML for a port pair with the given devices and defaults elsewhere.
pub fn config(sub: &str, up: &str) -> String {
    format!("[ports.subscriber]\ndevice = \"{sub}\"\n[ports.upstream]\ndevice = \"{up}\"\n")
}

/// Writes `toml` into a new file in `dir` and returns its path. Unless the
/// text has its own `[control]` section, the control socket and the policy
/// store go into `dir` too, so tests never share them.
pub fn write_config(dir: &Path, toml: &str) -> PathBuf {
    let name = unique("cfg");
    let p = dir.join(format!("{name}.toml"));
    let mut text = toml.to_owned();
    if !text.contains("[control]") {
        text.push_str(&format!(
            "\n[control]\nsocket = \"{}\"\nstate_dir = \"{}\"\n",
            dir.join(format!("{name}.sock")).display(),
            dir.join(format!("{name}-state")).display()
        ));
    }
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs sluice to completion with a time limit and returns its output.
pub fn run(args: &[&str], limit: Duration) -> Output {
    let child = Command::new(SLUICE)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice");
    wait_limit(child, limit)
}

fn wait_limit(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "sluice did not exit within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Text of both output streams, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A sluice running in the background; stopped with SIGINT.
pub struct Running {
    child: Option<Child>,
    pub json: PathBuf,
    /// Exists while sluice's ports are started (`--ready-file`).
    pub ready: PathBuf,
}

impl Running {
    pub fn start(config: &Path, json: PathBuf) -> Running {
        let ready = json.with_extension("ready");
        let child = Command::new(SLUICE)
            .arg("--ready-file")
            .arg(&ready)
            .arg("--config")
            .arg(config)
            .arg("--stats-json")
            .arg(&json)
            .args(["--stats-interval", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sluice");
        Running {
            child: Some(child),
            json,
            ready,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Waits until the ports are up (the ready file exists).
    pub fn wait_ready(&self) {
        let until = Instant::now() + Duration::from_secs(60);
        while !self.ready.exists() {
            assert!(Instant::now() < until, "sluice not ready within 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Sends SIGINT and waits (bounded) for a clean exit.
    pub fn stop(mut self) -> Output {
        let child = self.child.take().unwrap();
        let ok = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        wait_limit(child, Duration::from_secs(20))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The final report sluice wrote with `--stats-json`.
pub fn report(path: &Path) -> serde_json::Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Sum of one lane counter over all workers, for `direction`.
pub fn lane_total(report: &serde_json::Value, direction: &str, field: &str) -> u64 {
    report["workers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|w| w["lanes"].as_array().unwrap().iter())
        .filter(|l| l["direction"] == direction)
        .map(|l| l[field].as_u64().unwrap())
        .sum()
}

pub fn port<'a>(report: &'a serde_json::Value, role: &str) -> &'a serde_json::Value {
    report["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["role"] == role)
        .unwrap()
}

pub fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let mut w = PcapWriter::new(File::create(path).unwrap()).unwrap();
    for (i, f) in frames.iter().enumerate() {
        let ts = Duration::from_millis(i as u64);
        w.write_packet(&PcapPacket::new(ts, f.len() as u32, f))
            .unwrap();
    }
}

pub fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    let mut r = PcapReader::new(File::open(path).unwrap()).unwrap();
    let mut v = Vec::new();
    while let Some(p) = r.next_packet() {
        v.push(p.unwrap().data.into_owned());
    }
    v
}

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const V4_A: [u8; 4] = [198, 18, 0, 1];
const V4_B: [u8; 4] = [198, 18, 0, 2];
const V6_A: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const V6_B: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// Replies from the upstream host to the first frames of [`mixed_traffic`],
/// as a remapping `rule` would have made them: from `server_port` (the
/// remapped ports) or from `server_v4`/`server_v6` (the remapped address).
pub fn replies(
    server_v4: [u8; 4],
    server_v6: [u8; 16],
    tcp_port: u16,
    udp_port: u16,
) -> Vec<Vec<u8>> {
    let eth = || PacketBuilder::ethernet2(MAC_B, MAC_A);
    vec![
        frame(|v| {
            eth()
                .ipv4(server_v4, V4_A, 64)
                .tcp(tcp_port, 40000, 100, 65535)
                .ack(101)
                .write(v, b"reply-v4")
        }),
        frame(|v| {
            eth()
                .ipv4(server_v4, V4_A, 64)
                .udp(udp_port, 5353)
                .write(v, b"dns-answer")
        }),
        frame(|v| {
            eth()
                .ipv6(server_v6, V6_A, 64)
                .tcp(443, 40001, 100, 1000)
                .ack(159)
                .write(v, b"reply-v6")
        }),
        // Not part of any flow: must pass untouched.
        frame(|v| {
            eth()
                .ipv4(V4_B, V4_A, 64)
                .tcp(22, 50000, 1, 100)
                .ack(1)
                .write(v, b"ssh")
        }),
    ]
}

fn frame(write: impl FnOnce(&mut Vec<u8>) -> Result<(), etherparse::WriteError>) -> Vec<u8> {
    let mut v = Vec::new();
    write(&mut v).expect("build test frame");
    v
}

/// Mixed traffic: IPv4/IPv6 x TCP/UDP, untagged, 802.1Q and QinQ, ICMP,
/// ARP, a TCP SYN, and a truncated frame. Valid checksums on every complete
/// packet. `seed` varies the payload bytes.
pub fn mixed_traffic(seed: u8) -> Vec<Vec<u8>> {
    let p: Vec<u8> = (0..200u16).map(|i| (i as u8) ^ seed).collect();
    let eth = || PacketBuilder::ethernet2(MAC_A, MAC_B);
    let mut frames = vec![
        frame(|v| {
            eth()
                .ipv4(V4_A, V4_B, 64)
                .tcp(40000, 80, 1, 65535)
                .ack(7)
                .write(v, &p[..100])
        }),
        frame(|v| eth().ipv4(V4_A, V4_B, 64).udp(5353, 53).write(v, &p[..40])),
        frame(|v| {
            eth()
                .ipv6(V6_A, V6_B, 64)
                .tcp(40001, 443, 9, 1000)
                .ack(1)
                .write(v, &p[..150])
        }),
        frame(|v| {
            eth()
                .ipv6(V6_A, V6_B, 64)
                .udp(5060, 5060)
                .write(v, &p[..10])
        }),
        frame(|v| {
            eth()
                .single_vlan(100)
                .ipv4(V4_A, V4_B, 64)
                .tcp(40002, 8080, 5, 512)
                .syn()
                .write(v, &[])
        }),
        frame(|v| {
            eth()
                .double_vlan(200, 300)
                .ipv6(V6_A, V6_B, 64)
                .udp(1234, 4321)
                .write(v, &p[..64])
        }),
        frame(|v| {
            eth()
                .ipv4(V4_A, V4_B, 64)
                .icmpv4_echo_request(1, 1)
                .write(v, &p[..56])
        }),
        frame(|v| {
            use etherparse::TcpOptionElement::*;
            eth()
                .ipv4(V4_A, V4_B, 64)
                .tcp(40003, 80, 77, 64240)
                .syn()
                .options(&[
                    MaximumSegmentSize(1460),
                    SelectiveAcknowledgementPermitted,
                    WindowScale(7),
                ])
                .expect("tcp options")
                .write(v, &[])
        }),
    ];
    // ARP request: who-has 198.18.0.2 tell 198.18.0.1, padded to 60 bytes.
    let mut arp = vec![0xff; 6];
    arp.extend(MAC_A);
    arp.extend([0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    arp.extend(MAC_A);
    arp.extend(V4_A);
    arp.extend([0; 6]);
    arp.extend(V4_B);
    arp.resize(60, 0);
    frames.push(arp);
    // Truncated: an IPv4/TCP frame cut inside its TCP header.
    let mut cut = frames[0].clone();
    cut.truncate(14 + 20 + 8);
    frames.push(cut);
    frames
}

/// Network namespaces created through scripts/netns.sh; deleted on Drop.
pub struct Namespaces {
    pub a: String,
    pub b: String,
}

impl Namespaces {
    /// Waits for the two tap interfaces, moves them into new namespaces and
    /// assigns the addresses.
    pub fn up(sluice: &Running, if_a: &str, addr_a: &str, if_b: &str, addr_b: &str) -> Namespaces {
        let ns = Namespaces {
            a: format!("sl-{if_a}"),
            b: format!("sl-{if_b}"),
        };
        let out = Command::new(repo().join("scripts/netns.sh"))
            .args(["up", &ns.a, if_a, addr_a, &ns.b, if_b, addr_b, "30"])
            .env("READY_FILE", &sluice.ready)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "netns.sh up failed: {}",
            describe(&out)
        );
        ns
    }

    /// Runs a command inside namespace `ns`.
    pub fn exec(ns: &str, cmd: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).args(cmd);
        c
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            // Kill anything still running inside (servers, captures).
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").arg(pid).status();
                }
            }
        }
        let _ = Command::new(repo().join("scripts/netns.sh"))
            .args(["down", &self.a, &self.b])
            .status();
    }
}

/// Sluice between two namespaces with `rules`, plus helpers to move data
/// and capture on either side.
pub struct Bench {
    pub dir: tempfile::TempDir,
    pub sluice: Option<Running>,
    pub ns: Namespaces,
    pub if_a: String,
    pub if_b: String,
    /// The control socket of this appliance.
    pub socket: PathBuf,
}

impl Bench {
    pub fn new(rules: &str) -> Bench {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        let (if_a, if_b) = (unique("ra"), unique("rb"));
        let toml = format!(
            "{}{rules}",
            config(
                &format!("net_tap0,iface={if_a}"),
                &format!("net_tap1,iface={if_b}")
            )
        );
        let cfg = write_config(dir.path(), &toml);
        let sluice = Running::start(&cfg, dir.path().join("report.json"));
        let ns = Namespaces::up(&sluice, &if_a, "198.18.0.1/24", &if_b, "198.18.0.2/24");
        Bench {
            dir,
            socket: cfg.with_extension("sock"),
            sluice: Some(sluice),
            ns,
            if_a,
            if_b,
        }
    }

    /// Starts tcpdump on the subscriber (`a`) or upstream side.
    pub fn capture(&self, a: bool, name: &str) -> (std::process::Child, std::path::PathBuf) {
        let (ns, ifname) = if a {
            (&self.ns.a, &self.if_a)
        } else {
            (&self.ns.b, &self.if_b)
        };
        let path = self.dir.path().join(format!("{name}.pcap"));
        let child = Namespaces::exec(
            ns,
            &[
                "tcpdump",
                "-i",
                ifname,
                "-nn",
                "-U",
                "-w",
                path.to_str().unwrap(),
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        (child, path)
    }

    /// Sends 1 MiB from the subscriber host to `dst:port`, received by a
    /// server in the upstream namespace listening on `listen` (addr:port).
    pub fn transfer(&self, dst: &str, port: u16, listen: &str) {
        let sent: Vec<u8> = (0..1u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        let d = self.dir.path();
        std::fs::write(d.join("sent"), &sent).unwrap();
        let received = d.join("received");
        let mut server = Namespaces::exec(
            &self.ns.b,
            &[
                "socat",
                "-u",
                &format!("TCP-LISTEN:{listen},reuseaddr"),
                &format!("OPEN:{},creat,trunc", received.display()),
            ],
        )
        .spawn()
        .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let client = Namespaces::exec(
            &self.ns.a,
            &[
                "timeout",
                "30",
                "socat",
                "-u",
                &format!("OPEN:{}", d.join("sent").display()),
                &format!("TCP:{dst}:{port}"),
            ],
        )
        .output()
        .unwrap();
        assert!(
            client.status.success(),
            "client to {dst}:{port}: {}",
            describe(&client)
        );
        assert!(server.wait().unwrap().success());
        assert!(
            std::fs::read(&received).unwrap() == sent,
            "transfer corrupted"
        );
    }

    /// Stops sluice (the captures in `dir` stay until the bench drops).
    pub fn stop(&mut self) -> serde_json::Value {
        std::thread::sleep(Duration::from_millis(300));
        let out = self.sluice.take().unwrap().stop();
        assert!(out.status.success(), "{}", describe(&out));
        let r = report(&self.dir.path().join("report.json"));
        assert_eq!(r["pool_in_use"], 0, "{r:#}");
        r
    }
}

/// A background process (a server, a DNS server) killed and reaped when
/// this drops.
pub struct Background(pub Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until the capture file `pcap` stops growing (at most 10 s): on
/// this 2-core machine tcpdump can lag a burst by seconds, and what it has
/// not read from the kernel when it is stopped is lost.
pub fn settle(pcap: &Path) {
    let until = Instant::now() + Duration::from_secs(10);
    let size = || std::fs::metadata(pcap).map_or(0, |m| m.len());
    let mut last = size();
    let mut quiet = 0;
    while quiet < 3 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(200));
        let now = size();
        quiet = if now == last { quiet + 1 } else { 0 };
        last = now;
    }
}

pub fn stop_capture(mut c: std::process::Child) {
    std::thread::sleep(Duration::from_millis(300));
    let _ = Command::new("kill")
        .args(["-INT", &c.id().to_string()])
        .status();
    let _ = c.wait();
}

/// Lines tcpdump prints for `filter` in `pcap`.
pub fn count(pcap: &std::path::Path, filter: &str) -> usize {
    let out = Command::new("tcpdump")
        .args(["-nn", "-r", pcap.to_str().unwrap(), filter])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// What tshark says of each of `frames` (by number): enough to tell which
/// side sent it and what was wrong, should a checksum check fail.
pub fn describe_frames(pcap: &std::path::Path, frames: &[String]) -> String {
    const FIELDS: [&str; 11] = [
        "ip.src",
        "tcp.srcport",
        "ip.dst",
        "tcp.dstport",
        "ip.dsfield.dscp",
        "tcp.flags.str",
        "tcp.len",
        "frame.len",
        "frame.cap_len",
        "ip.checksum.status",
        "tcp.checksum.status",
    ];
    frames
        .iter()
        .take(5)
        .map(|n| {
            let filter = format!("frame.number == {n}");
            let values: Vec<String> = FIELDS
                .iter()
                .map(|f| format!("{f}={}", tshark_fields(pcap, &filter, f).join(",")))
                .collect();
            format!("frame {n}: {}", values.join(" "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The subscriber host's address in every bench (namespace a).
pub const SUBSCRIBER: &str = "198.18.0.1";

/// Frames of an upstream-side (namespace b) capture that the appliance
/// wrote, i.e. those from the subscriber host, whose IP or TCP checksum is
/// wrong, described ([`describe_frames`]); empty if none. The server's own
/// frames are left out: tcpdump sees them on their way out, before the
/// kernel's offloaded checksum is filled in, so they test the kernel, not
/// the appliance (CI caught one so: a bare ACK from the server, its IP
/// checksum good and its TCP checksum partial).
pub fn bad_checksums_from_subscriber(pcap: &Path) -> String {
    let filter =
        format!("ip.src == {SUBSCRIBER} && (ip.checksum.status == 0 || tcp.checksum.status == 0)");
    let bad = tshark_fields(pcap, &filter, "frame.number");
    if bad.is_empty() {
        String::new()
    } else {
        format!(
            "bad checksums in frames {bad:?}:\n{}",
            describe_frames(pcap, &bad)
        )
    }
}

/// tshark field values for `filter`.
pub fn tshark_fields(pcap: &std::path::Path, filter: &str, field: &str) -> Vec<String> {
    let out = Command::new("tshark")
        .args(["-r", pcap.to_str().unwrap()])
        .args([
            "-o",
            "ip.check_checksum:TRUE",
            "-o",
            "tcp.check_checksum:TRUE",
        ])
        .args(["-Y", filter, "-T", "fields", "-e", field])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}
