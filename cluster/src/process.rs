//! Spawning, watching and stopping one postmaster.
//!
//! We start `postgres` ourselves rather than through `pg_ctl`: the postmaster is
//! then our child, so we can reap it (no zombies under a container init that
//! does not), notice at once when it exits during startup, and it shares our
//! process group, so Ctrl-C on a test run stops it too.

use std::fs::{self, OpenOptions};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::bins::Binaries;
use crate::runas::RunAs;
use crate::ClusterError;

/// How often we re-check a condition while polling with a deadline.
pub const POLL: Duration = Duration::from_millis(10);

/// Why a start attempt failed; the first two are worth retrying.
#[derive(Debug)]
pub enum StartFailure {
    /// Another process holds our TCP port.
    AddressInUse(ClusterError),
    /// Leftovers of a killed instance (shared memory, lock file) still exist.
    Leftovers(ClusterError),
    /// Anything else.
    Fatal(ClusterError),
}

impl StartFailure {
    /// The underlying error, whatever the kind.
    pub fn into_error(self) -> ClusterError {
        match self {
            StartFailure::AddressInUse(e) | StartFailure::Leftovers(e) | StartFailure::Fatal(e) => {
                e
            }
        }
    }
}

/// Everything needed to start one node's postmaster.
pub struct Launch<'a> {
    /// Node name, for errors.
    pub name: &'a str,
    /// Its data directory.
    pub data_dir: &'a Path,
    /// Server log (stdout and stderr of the postmaster, appended).
    pub log: &'a Path,
    /// A directory every account may enter.
    pub cwd: &'a Path,
}

/// Starts the postmaster and waits until it accepts connections.
pub fn start(
    run: &RunAs,
    bins: &Binaries,
    l: &Launch<'_>,
    timeout: Duration,
) -> Result<Child, StartFailure> {
    let fatal = |e| StartFailure::Fatal(e);
    let log_offset = fs::metadata(l.log).map(|m| m.len()).unwrap_or(0);
    let log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(l.log)
        .map_err(|e| fatal(ClusterError::io(format!("open {}", l.log.display()), e)))?;
    let log_err = log_file
        .try_clone()
        .map_err(|e| fatal(ClusterError::io("dup log fd", e)))?;
    let mut child = run
        .command(&bins.postgres, l.cwd)
        .arg("-D")
        .arg(l.data_dir)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .spawn()
        .map_err(|e| {
            fatal(ClusterError::io(
                format!("spawn {}", bins.postgres.display()),
                e,
            ))
        })?;

    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let fresh = read_log_from(l.log, log_offset);
                let err = start_error(l, format!("postgres exited with {status}"), &fresh);
                return Err(classify(&fresh, err));
            }
            Ok(None) => {}
            Err(e) => return Err(fatal(ClusterError::io("waiting for postgres", e))),
        }
        if is_ready(l.data_dir, child.id()) {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = kill(pid_of(&child), Signal::SIGKILL);
            let _ = child.wait();
            let fresh = read_log_from(l.log, log_offset);
            return Err(fatal(start_error(
                l,
                format!("not accepting connections after {timeout:?}"),
                &fresh,
            )));
        }
        std::thread::sleep(POLL);
    }
}

fn classify(fresh_log: &str, err: ClusterError) -> StartFailure {
    if fresh_log.contains("Address already in use") {
        StartFailure::AddressInUse(err)
    } else if fresh_log.contains("pre-existing shared memory block")
        || fresh_log.contains("lock file")
    {
        StartFailure::Leftovers(err)
    } else {
        StartFailure::Fatal(err)
    }
}

fn start_error(l: &Launch<'_>, reason: String, fresh_log: &str) -> ClusterError {
    ClusterError::Start {
        node: l.name.to_string(),
        reason,
        log: l.log.to_path_buf(),
        log_tail: last_lines(fresh_log, 20),
    }
}

/// The postmaster writes its status into `postmaster.pid`; "ready" (or "standby"
/// with hot_standby off) means it accepts connections. The pid check skips a
/// stale file left by a killed predecessor.
fn is_ready(data_dir: &Path, pid: u32) -> bool {
    let Ok(text) = fs::read_to_string(data_dir.join("postmaster.pid")) else {
        return false;
    };
    pid_file_ready(&text, pid)
}

pub(crate) fn pid_file_ready(text: &str, pid: u32) -> bool {
    let mut lines = text.lines();
    let first = lines.next().map(str::trim);
    let status = lines.nth(6).map(str::trim);
    first == Some(pid.to_string().as_str()) && matches!(status, Some("ready") | Some("standby"))
}

/// Converts a child's id to a nix pid.
pub fn pid_of(child: &Child) -> Pid {
    Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX))
}

/// Signals the postmaster and reaps it, escalating to SIGKILL at the deadline.
/// SIGINT is pg_ctl's "fast" mode, SIGQUIT its "immediate" mode.
pub fn shutdown(child: &mut Child, signal: Signal, timeout: Duration) -> Result<(), ClusterError> {
    let pid = pid_of(child);
    if child.try_wait().ok().flatten().is_some() {
        return Ok(());
    }
    kill(pid, signal).map_err(|source| ClusterError::Signal {
        signal: signal.to_string(),
        pid: pid.as_raw(),
        source,
    })?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return Ok(()),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
            _ => {
                let _ = kill(pid, Signal::SIGKILL);
                let _ = child.wait();
                return Err(ClusterError::Timeout {
                    what: format!("postmaster {pid} to exit after {signal}"),
                    waited: timeout,
                });
            }
        }
    }
}

/// Kills the postmaster like a crash and waits until it and the server
/// processes it had forked are gone, so a restart finds no leftovers in use.
pub fn crash(child: &mut Child, timeout: Duration) -> Result<(), ClusterError> {
    let pid = pid_of(child);
    let orphans = children_of(pid.as_raw());
    kill(pid, Signal::SIGKILL).map_err(|source| ClusterError::Signal {
        signal: "SIGKILL".into(),
        pid: pid.as_raw(),
        source,
    })?;
    child
        .wait()
        .map_err(|e| ClusterError::io("reaping killed postmaster", e))?;
    let deadline = Instant::now() + timeout;
    while orphans.iter().any(|&p| alive(p)) {
        if Instant::now() >= deadline {
            return Err(ClusterError::Timeout {
                what: format!("children of killed postmaster {pid} to exit"),
                waited: timeout,
            });
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

/// Pids whose parent is `parent`, from /proc.
pub fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| parse_stat(&s))
                .is_some_and(|(_, ppid)| ppid == parent)
        })
        .collect()
}

/// A process counts as alive unless it is gone or a zombie (our container's
/// init may never reap orphans).
pub fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => parse_stat(&s).is_some_and(|(state, _)| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// Extracts (state, ppid) from /proc/<pid>/stat; the command name may contain
/// spaces and parentheses, so parse after its last `)`.
pub(crate) fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

fn read_log_from(path: &Path, offset: u64) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset).unwrap_or(0).min(bytes.len());
    String::from_utf8_lossy(bytes.get(start..).unwrap_or_default()).into_owned()
}

/// The whole log's tail, for errors raised after startup.
pub fn log_tail(path: &Path, n: usize) -> String {
    last_lines(&read_log_from(path, 0), n)
}

pub(crate) fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(n);
    lines.get(skip..).unwrap_or_default().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing() {
        let cases: &[(&str, Option<(char, i32)>)] = &[
            ("123 (postgres) S 1 2 3", Some(('S', 1))),
            ("7 (a b) (c)) Z 42 0", Some(('Z', 42))),
            ("garbage", None),
            ("1 (x) R", None),
            ("1 (x) R notanumber", None),
            ("", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_stat(input), *want, "{input:?}");
        }
    }

    #[test]
    fn pid_file_status() {
        let file = |pid: &str, status: &str| {
            format!("{pid}\n/data\n1700000000\n5432\n/tmp\n127.0.0.1\n  1234   5678\n{status}\n")
        };
        let cases = [
            (file("42", "ready   "), 42, true),
            (file("42", "standby "), 42, true),
            (file("42", "starting"), 42, false),
            (file("41", "ready   "), 42, false),
            ("42\n".to_string(), 42, false),
            (String::new(), 42, false),
        ];
        for (text, pid, want) in cases {
            assert_eq!(pid_file_ready(&text, pid), want, "{text:?}");
        }
    }

    #[test]
    fn tails() {
        let cases = [
            ("a\nb\nc\n", 2, "b\nc"),
            ("a", 5, "a"),
            ("", 3, ""),
            ("a\nb", 0, ""),
        ];
        for (text, n, want) in cases {
            assert_eq!(last_lines(text, n), want, "{text:?} {n}");
        }
    }

    #[test]
    fn start_failures_are_classified() {
        let e = || ClusterError::Topology("x".into());
        let cases = [
            (
                "LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use",
                "addr",
            ),
            (
                "FATAL:  pre-existing shared memory block (key 1, ID 2) is still in use",
                "left",
            ),
            (
                "FATAL:  lock file \"postmaster.pid\" already exists",
                "left",
            ),
            ("FATAL:  data directory has wrong ownership", "fatal"),
        ];
        for (log, want) in cases {
            let got = match classify(log, e()) {
                StartFailure::AddressInUse(_) => "addr",
                StartFailure::Leftovers(_) => "left",
                StartFailure::Fatal(_) => "fatal",
            };
            assert_eq!(got, want, "{log}");
        }
    }

    #[test]
    fn own_process_is_alive_and_missing_is_not() {
        assert!(alive(std::process::id() as i32));
        assert!(!alive(i32::MAX));
    }
}
