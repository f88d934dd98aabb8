//! Running a tool under test: spawn it, stamp every stdout line with the
//! runner's monotonic clock as it arrives, stop it on a condition or a
//! deadline (SIGTERM, then SIGKILL after a grace period), and keep
//! everything it printed.
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use thiserror::Error;

/// A command line, kept as tokens so that it can be both run and written
/// down exactly in RESULTS.md.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    pub program: String,
    pub args: Vec<String>,
    /// Working directory, if not the runner's.
    pub dir: Option<String>,
}

impl CommandSpec {
    pub fn new(program: impl Into<String>) -> CommandSpec {
        CommandSpec {
            program: program.into(),
            args: Vec::new(),
            dir: None,
        }
    }

    pub fn arg(mut self, a: impl Into<String>) -> CommandSpec {
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> CommandSpec
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The EAL arguments every DPDK tool the runner starts shares: its own
    /// `--file-prefix` (runs never collide), no hugepages, `mem_mb` of
    /// memory, no shared config.
    pub fn private_eal(self, file_prefix: &str, mem_mb: u32) -> CommandSpec {
        self.args([
            "--file-prefix".to_owned(),
            file_prefix.to_owned(),
            "--no-huge".to_owned(),
            "-m".to_owned(),
            mem_mb.to_string(),
            "--no-shconf".to_owned(),
        ])
    }

    /// Prefixes `stdbuf -oL`, so that a C program's stdout is line-buffered
    /// even into a pipe and each line arrives (and is timed) when printed.
    pub fn line_buffered(self) -> CommandSpec {
        let mut args = vec!["-oL".to_owned(), self.program];
        args.extend(self.args);
        CommandSpec {
            program: "stdbuf".to_owned(),
            args,
            dir: self.dir,
        }
    }

    /// The command as one shell-quoted line.
    pub fn display(&self) -> String {
        let mut out = String::new();
        if let Some(d) = &self.dir {
            out.push_str(&format!("(cd {} && ", shell_quote(d)));
        }
        out.push_str(&shell_quote(&self.program));
        for a in &self.args {
            out.push(' ');
            out.push_str(&shell_quote(a));
        }
        if self.dir.is_some() {
            out.push(')');
        }
        out
    }
}

/// Quotes `s` for a POSIX shell when it has anything but safe characters.
pub fn shell_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./=,:@%+".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A stdout line and when it arrived (seconds since spawn).
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub t: f64,
    pub text: String,
}

/// Everything a finished run left behind.
#[derive(Debug)]
pub struct Finished {
    pub stdout: Vec<Line>,
    pub stderr: String,
    pub status: ExitStatus,
    /// True when the runner stopped it (condition or deadline), false when
    /// it exited by itself.
    pub stopped_by_runner: bool,
    /// True when it ignored SIGTERM and had to be killed.
    pub killed: bool,
}

impl Finished {
    pub fn stdout_text(&self) -> String {
        let mut s = String::new();
        for l in &self.stdout {
            s.push_str(&l.text);
            s.push('\n');
        }
        s
    }

    /// The last `n` lines of stdout and stderr, for error messages.
    pub fn tail(&self, n: usize) -> String {
        let text = format!("{}{}", self.stdout_text(), self.stderr);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

#[derive(Debug, Error)]
pub enum ProcessError {
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("waiting for `{command}`: {source}")]
    Wait {
        command: String,
        source: std::io::Error,
    },
}

/// How long to keep reading a tool's pipes after it has exited.
const DRAIN: Duration = Duration::from_secs(2);

/// What to do after each stdout line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    Stop,
}

/// Runs `spec` with stdin from /dev/null. `on_line` sees every stdout line
/// as it arrives; when it returns [`Verdict::Stop`], or `deadline` passes,
/// the process gets SIGTERM, and SIGKILL if it is still alive `grace` later.
/// The runner's own threads that read the child's output stay on the main
/// core ([`pin_current_thread`]), off the worker's.
pub fn run(
    spec: &CommandSpec,
    deadline: Duration,
    grace: Duration,
    mut on_line: impl FnMut(&Line) -> Verdict,
) -> Result<Finished, ProcessError> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(d) = &spec.dir {
        cmd.current_dir(d);
    }
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|source| ProcessError::Spawn {
        command: spec.display(),
        source,
    })?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel::<Line>();
    thread::spawn(move || {
        pin_current_thread(crate::bench::MAIN_LCORE);
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let t = start.elapsed().as_secs_f64();
                    let text = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_owned();
                    if tx.send(Line { t, text }).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let (etx, erx) = mpsc::channel::<String>();
    thread::spawn(move || {
        pin_current_thread(crate::bench::MAIN_LCORE);
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        let _ = etx.send(String::from_utf8_lossy(&s).into_owned());
    });

    let mut lines = Vec::new();
    let mut stopped_by_runner = false;
    loop {
        let left = deadline.saturating_sub(start.elapsed());
        if left.is_zero() {
            stopped_by_runner = true;
            break;
        }
        match rx.recv_timeout(left) {
            Ok(line) => {
                let verdict = on_line(&line);
                lines.push(line);
                if verdict == Verdict::Stop {
                    stopped_by_runner = true;
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                stopped_by_runner = true;
                break;
            }
            // stdout closed: the process is exiting by itself.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let mut killed = false;
    if stopped_by_runner {
        killed = terminate(&mut child, grace);
    }
    let status = child.wait().map_err(|source| ProcessError::Wait {
        command: spec.display(),
        source,
    })?;
    // Whatever it printed while shutting down (final totals) comes after.
    // The readers are not joined: a grandchild that inherited the pipes
    // could keep them open long after the tool itself has gone.
    let drain_until = Instant::now() + DRAIN;
    loop {
        let left = drain_until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => break,
        }
    }
    let stderr = erx
        .recv_timeout(drain_until.saturating_duration_since(Instant::now()))
        .unwrap_or_default();
    Ok(Finished {
        stdout: lines,
        stderr,
        status,
        stopped_by_runner,
        killed,
    })
}

/// Sends SIGTERM (through kill(1), which keeps this crate free of unsafe
/// code), waits up to `grace`, then SIGKILLs. Returns true if it had to kill.
fn terminate(child: &mut Child, grace: Duration) -> bool {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let until = Instant::now() + grace;
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    true
}

/// Runs a short helper command to completion and returns its stdout, or
/// `None` if it could not run or failed.
pub fn output_of(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// True when `program` is found (as a path or on PATH).
pub fn on_path(program: &str) -> bool {
    if program.contains('/') {
        return std::path::Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Restricts the calling thread to `core` (threads it spawns later inherit
/// that), so that the runner's own work (control-socket clients, output
/// readers) never lands on the worker's core while a measurement runs: on a
/// real appliance nothing else runs on a worker core either. Done with
/// `taskset -p` on the thread's id (read from `/proc/thread-self`): no
/// unsafe code here. Best effort: a failure is reported once and ignored.
pub fn pin_current_thread(core: u32) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    let tid = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name().map(|s| s.to_string_lossy().into_owned()));
    let ok = tid.is_some_and(|tid| {
        Command::new("taskset")
            .args(["-p", "-c", &core.to_string(), &tid])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !ok {
        WARNED.call_once(|| {
            eprintln!("warning: could not pin the runner's threads to core {core} (taskset)")
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_leaves_plain_tokens_alone() {
        assert_eq!(shell_quote("net_null0,copy=1"), "net_null0,copy=1");
        assert_eq!(shell_quote("0,1,0,1"), "0,1,0,1");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn line_buffering_wraps_the_command() {
        let c = CommandSpec::new("dpdk-testpmd")
            .args(["-l", "0,1"])
            .line_buffered();
        assert_eq!(c.display(), "stdbuf -oL dpdk-testpmd -l 0,1");
    }

    #[test]
    fn lines_are_timed_and_a_stop_verdict_ends_the_run() {
        let spec = CommandSpec::new("sh").args(["-c", "echo one; echo two; exec sleep 30"]);
        let f = run(
            &spec,
            Duration::from_secs(20),
            Duration::from_secs(2),
            |l| {
                if l.text == "two" {
                    Verdict::Stop
                } else {
                    Verdict::Continue
                }
            },
        )
        .unwrap();
        assert!(f.stopped_by_runner);
        let texts: Vec<&str> = f.stdout.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["one", "two"]);
        assert!(f.stdout[0].t <= f.stdout[1].t);
    }

    #[test]
    fn a_process_that_exits_by_itself_is_not_marked_stopped() {
        let spec = CommandSpec::new("sh").args(["-c", "echo hi; echo err >&2; exit 3"]);
        let f = run(
            &spec,
            Duration::from_secs(20),
            Duration::from_secs(2),
            |_| Verdict::Continue,
        )
        .unwrap();
        assert!(!f.stopped_by_runner);
        assert_eq!(f.status.code(), Some(3));
        assert_eq!(f.stderr.trim(), "err");
        assert_eq!(f.tail(5), "hi\nerr");
    }
}
