//! What a result was measured on: CPU, core count, kernel, DPDK version,
//! TSC frequency, and the git revision of the tree.
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::process::output_of;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub nproc: usize,
    pub kernel: String,
    pub dpdk_version: Option<String>,
    /// TSC ticks per second, measured (see [`measure_tsc_hz`]).
    pub tsc_hz: f64,
    /// The kernel's "cpu MHz" from /proc/cpuinfo, kept as a cross-check.
    pub cpuinfo_mhz: Option<f64>,
    /// True when /proc/cpuinfo shows constant_tsc and nonstop_tsc, i.e. the
    /// TSC ticks at one rate whatever the core's clock does.
    pub invariant_tsc: bool,
    pub git_rev: Option<String>,
    pub git_dirty: bool,
}

impl Machine {
    /// Probes the machine. `repo` is the source tree whose revision is
    /// recorded.
    pub fn probe(repo: &Path) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let repo_s = repo.to_string_lossy();
        let git_rev = output_of("git", &["-C", &repo_s, "rev-parse", "--short", "HEAD"]);
        let git_dirty = output_of("git", &["-C", &repo_s, "status", "--porcelain"])
            .is_some_and(|s| !s.is_empty());
        Machine {
            cpu_model: cpu_model(&cpuinfo).unwrap_or_else(|| "unknown".into()),
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "unknown".into()),
            dpdk_version: output_of("pkg-config", &["--modversion", "libdpdk"]),
            tsc_hz: measure_tsc_hz(Duration::from_millis(300))
                .or_else(|| cpu_mhz(&cpuinfo).map(|m| m * 1e6))
                .unwrap_or(f64::NAN),
            cpuinfo_mhz: cpu_mhz(&cpuinfo),
            invariant_tsc: cpu_flag(&cpuinfo, "constant_tsc") && cpu_flag(&cpuinfo, "nonstop_tsc"),
            git_rev,
            git_dirty,
        }
    }

    /// `d1ebc3f`, `d1ebc3f-dirty`, or `unknown`.
    pub fn revision(&self) -> String {
        match &self.git_rev {
            Some(r) if self.git_dirty => format!("{r}-dirty"),
            Some(r) => r.clone(),
            None => "unknown".into(),
        }
    }

    /// One line for tables and RESULTS.md.
    pub fn summary(&self) -> String {
        let mhz = self
            .cpuinfo_mhz
            .map(|m| format!(", /proc/cpuinfo {m:.3} MHz"))
            .unwrap_or_default();
        format!(
            "{} ({} CPUs), Linux {}, DPDK {}, TSC {:.3} MHz measured{}{}, git {}",
            self.cpu_model,
            self.nproc,
            self.kernel,
            self.dpdk_version.as_deref().unwrap_or("unknown"),
            self.tsc_hz / 1e6,
            mhz,
            if self.invariant_tsc {
                ", invariant TSC"
            } else {
                ", TSC NOT invariant: cycle figures are approximate"
            },
            self.revision()
        )
    }
}

/// CPU time on the whole machine versus this process and the children it
/// has waited for, so that a scenario can say how much *other* work shared
/// the machine while it measured (a 2-CPU VM shared with builds and other
/// benchmarks is the normal case here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuAccount {
    /// Busy ticks over all CPUs (user, nice, system, irq, softirq).
    pub busy: u64,
    /// Ticks the hypervisor gave to someone else.
    pub steal: u64,
    /// This process plus its reaped children (utime, stime, cutime, cstime).
    pub own: u64,
    pub at: Instant,
}

/// Other work seen between two [`CpuAccount`] readings, in CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct OtherLoad {
    /// Average number of CPUs busy with processes that are not the runner
    /// or the tools it ran.
    pub other_cpus: f64,
    /// Average number of CPUs stolen by the hypervisor.
    pub steal_cpus: f64,
    pub secs: f64,
}

impl CpuAccount {
    pub fn now() -> Option<CpuAccount> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        let (busy, steal) = parse_proc_stat(&stat)?;
        Some(CpuAccount {
            busy,
            steal,
            own: parse_self_stat(&own)?,
            at: Instant::now(),
        })
    }

    /// What happened between `self` and a later reading.
    pub fn other_load(&self, later: &CpuAccount, ticks_per_sec: f64) -> OtherLoad {
        let secs = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let busy = later.busy.saturating_sub(self.busy) as f64;
        let own = later.own.saturating_sub(self.own) as f64;
        OtherLoad {
            other_cpus: ((busy - own).max(0.0) / ticks_per_sec) / secs,
            steal_cpus: (later.steal.saturating_sub(self.steal) as f64 / ticks_per_sec) / secs,
            secs,
        }
    }
}

/// The kernel's clock tick for /proc times (USER_HZ, almost always 100).
pub fn clock_ticks() -> f64 {
    output_of("getconf", &["CLK_TCK"])
        .and_then(|s| s.parse().ok())
        .unwrap_or(100.0)
}

/// (busy, steal) ticks from the aggregate `cpu ` line of /proc/stat.
pub fn parse_proc_stat(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice;
    // guest time is already included in user.
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    Some((at(0) + at(1) + at(2) + at(5) + at(6), at(7)))
}

/// utime + stime + cutime + cstime from /proc/self/stat.
pub fn parse_self_stat(stat: &str) -> Option<u64> {
    // The command name is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14.
    let field = |n: usize| f.get(n - 3)?.parse::<i64>().ok();
    Some((field(14)? + field(15)? + field(16)? + field(17)?).max(0) as u64)
}

/// The first "model name" in /proc/cpuinfo.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    field(cpuinfo, "model name").map(str::to_owned)
}

/// The first "cpu MHz" in /proc/cpuinfo.
pub fn cpu_mhz(cpuinfo: &str) -> Option<f64> {
    field(cpuinfo, "cpu MHz")?.parse().ok()
}

fn cpu_flag(cpuinfo: &str, flag: &str) -> bool {
    field(cpuinfo, "flags").is_some_and(|f| f.split_whitespace().any(|x| x == flag))
}

fn field<'a>(cpuinfo: &'a str, key: &str) -> Option<&'a str> {
    cpuinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim())
    })
}

/// Counts TSC ticks across `span` of the monotonic clock. The kernel's
/// "cpu MHz" is the core clock where the CPU reports one, which need not be
/// the TSC rate, and DPDK's own estimate is rounded (it reports 2600 MHz on
/// a 2596.1 MHz TSC here), so the runner measures.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub fn measure_tsc_hz(span: Duration) -> Option<f64> {
    // SAFETY: RDTSC reads a counter; it has no memory effects and every
    // x86_64 CPU has it.
    let rdtsc = || unsafe { core::arch::x86_64::_rdtsc() };
    let (t0, c0) = (Instant::now(), rdtsc());
    std::thread::sleep(span);
    let (c1, t1) = (rdtsc(), Instant::now());
    let secs = t1.duration_since(t0).as_secs_f64();
    (c1 > c0 && secs > 0.0).then(|| (c1 - c0) as f64 / secs)
}

#[cfg(not(target_arch = "x86_64"))]
pub fn measure_tsc_hz(_span: Duration) -> Option<f64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPUINFO: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n\
cpu MHz\t\t: 2596.122\nflags\t\t: fpu tsc constant_tsc nonstop_tsc rdtscp\n\nprocessor\t: 1\n\
model name\t: AMD EPYC\ncpu MHz\t\t: 2596.122\n";

    #[test]
    fn cpuinfo_fields() {
        assert_eq!(cpu_model(CPUINFO).as_deref(), Some("AMD EPYC"));
        assert_eq!(cpu_mhz(CPUINFO), Some(2596.122));
        assert!(cpu_flag(CPUINFO, "nonstop_tsc"));
        assert!(!cpu_flag(CPUINFO, "nonstop"));
        assert_eq!(cpu_model(""), None);
    }

    #[test]
    fn proc_stat_busy_and_steal() {
        let stat = "cpu  100 5 50 1000 7 3 2 11 0 0\ncpu0 50 2 25 500 3 1 1 5 0 0\n";
        assert_eq!(parse_proc_stat(stat), Some((160, 11)));
        assert_eq!(parse_proc_stat("intr 1 2 3"), None);
    }

    #[test]
    fn self_stat_with_a_spaced_command_name() {
        let s = "1234 (sluice perf) S 1 1234 1234 0 -1 4194560 100 0 0 0 \
                 70 30 400 100 20 0 3 0 500 0 0";
        assert_eq!(parse_self_stat(s), Some(600));
    }

    #[test]
    fn other_load_subtracts_own_and_children() {
        let t0 = Instant::now();
        let a = CpuAccount {
            busy: 1000,
            steal: 0,
            own: 100,
            at: t0,
        };
        let b = CpuAccount {
            busy: 1000 + 300,
            steal: 20,
            own: 100 + 200,
            at: t0 + Duration::from_secs(2),
        };
        let l = a.other_load(&b, 100.0);
        assert!((l.other_cpus - 0.5).abs() < 1e-9, "{l:?}");
        assert!((l.steal_cpus - 0.1).abs() < 1e-9);
    }

    #[test]
    fn reading_this_machine_works() {
        if let Some(a) = CpuAccount::now() {
            let b = CpuAccount::now().unwrap();
            assert!(b.busy >= a.busy && b.own >= a.own);
        }
    }

    #[test]
    fn measured_tsc_is_plausible() {
        if let Some(hz) = measure_tsc_hz(Duration::from_millis(50)) {
            assert!((1e8..1e10).contains(&hz), "{hz}");
        }
    }
}
