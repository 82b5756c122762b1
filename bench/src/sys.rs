//! Small facts about the machine and processes: file descriptor limits, RSS, load,
//! wall-clock stamps, program lookup, an HTTP probe.

use anyhow::{bail, Context, Result};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Raises RLIMIT_NOFILE so this process and its children (pgrelay, PgBouncer, pgbench)
/// can hold `want` descriptors; root may raise the hard limit too. Returns the soft
/// limit now in force.
pub fn raise_nofile(want: u64) -> Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(NOFILE)")?;
    if soft >= want {
        return Ok(soft);
    }
    let new_hard = if hard < want && nix::unistd::Uid::effective().is_root() {
        want
    } else {
        hard
    };
    let new_soft = want.min(new_hard);
    setrlimit(Resource::RLIMIT_NOFILE, new_soft, new_hard)
        .or_else(|_| setrlimit(Resource::RLIMIT_NOFILE, hard, hard))
        .context("setrlimit(NOFILE)")?;
    Ok(getrlimit(Resource::RLIMIT_NOFILE)
        .context("getrlimit(NOFILE)")?
        .0)
}

/// A `Vm*` figure (e.g. `VmRSS`, `VmHWM`) of a process, in KiB.
pub fn vm_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix(field).and_then(|r| r.strip_prefix(':')) {
            let kib = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("parse {field} in {line:?}"))?;
            return Ok(kib);
        }
    }
    bail!("no {field} in /proc/{pid}/status")
}

/// CPU time a process has used (user + system), in microseconds. /proc counts it in
/// USER_HZ ticks, which are 1/100 s on every Linux architecture.
pub fn cpu_micros(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may contain spaces:
    // state is field 3, utime 14 and stime 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("parse /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("field {} of /proc/{pid}/stat", i + 3))
    };
    Ok((tick(11)? + tick(12)?) * 10_000)
}

/// The 1-minute load average, as /proc/loadavg prints it.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// UTC now as `YYYYMMDD-HHMMSS` (output folder names) and `YYYY-MM-DD HH:MM:SS UTC`.
pub fn stamps() -> (String, String) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let t = secs % 86_400;
    let (hh, mm, ss) = (t / 3600, t % 3600 / 60, t % 60);
    (
        format!("{y:04}{m:02}{d:02}-{hh:02}{mm:02}{ss:02}"),
        format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02} UTC"),
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's
/// algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A PostgreSQL client program (pgbench), from the newest `/usr/lib/postgresql/*/bin`
/// (Debian keeps the real programs there), else from PATH.
pub fn pg_program(name: &str) -> PathBuf {
    let mut dirs: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let v: Option<Vec<u32>> = e
                        .file_name()
                        .to_string_lossy()
                        .split('.')
                        .map(|p| p.parse().ok())
                        .collect();
                    Some((v?, e.path().join("bin")))
                })
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs.into_iter()
        .rev()
        .map(|(_, d)| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// First line of `program --version`, or why not.
pub fn version_of(program: &Path) -> String {
    match std::process::Command::new(program)
        .arg("--version")
        .output()
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string(),
        Err(e) => format!("? ({e})"),
    }
}

/// The HTTP status of `GET path` on 127.0.0.1:`port`, or None if nothing answered.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head).ok()?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
    }

    #[test]
    fn own_rss_is_read() {
        assert!(vm_kib(std::process::id(), "VmRSS").unwrap() > 0);
        assert!(vm_kib(std::process::id(), "VmNope").is_err());
    }
}

#[cfg(test)]
mod cpu_tests {
    #[test]
    fn own_cpu_time_is_read_and_grows() {
        let me = std::process::id();
        let before = super::cpu_micros(me).unwrap();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(super::cpu_micros(me).unwrap() >= before);
        assert!(super::cpu_micros(u32::MAX).is_err());
    }
}
