//! The proxies under test, each a child process with its own config in a temp dir:
//! the real `pgrelay` binary, Debian's PgBouncer (as `nobody` when we are root, since
//! PgBouncer refuses to run as root) and the bare relay (this binary, see `relay`).
//! Dropping one stops it.

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, Uid, User};
use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A child process stopped (SIGTERM, then SIGKILL) on drop.
pub struct Proc {
    name: String,
    child: Option<Child>,
    /// Its log file, quoted when it fails.
    pub log: PathBuf,
    /// Where to copy the log when it stops (when it lives in the temp dir).
    save_log: Option<PathBuf>,
    /// Keeps its config dir alive.
    _dir: tempfile::TempDir,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Fails with the log's tail if the process has exited.
    fn check_alive(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                bail!(
                    "{} exited during start-up ({status}); log {}:\n{}",
                    self.name,
                    self.log.display(),
                    tail(&self.log, 15)
                );
            }
        }
        Ok(())
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(to) = self.save_log.take() {
            let _ = std::fs::copy(&self.log, to);
        }
    }
}

/// How often pgrelay logged a node leaving `Up` (suspect, down, lagging: logged as
/// warnings), so a run shows whether heartbeats held under its load.
pub fn health_warnings(log: &Path) -> usize {
    std::fs::read_to_string(log).map_or(0, |text| {
        text.lines()
            .filter(|l| l.contains("node state changed") && l.contains("WARN"))
            .count()
    })
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A pgrelay to start: which nodes, how clients authenticate.
pub struct PgrelaySpec<'a> {
    pub name: &'a str,
    /// (name, port) of each node, primary first.
    pub nodes: Vec<(String, u16)>,
    pub auth: &'a str,
    pub pool_size: u32,
    pub max_clients: u32,
}

/// The YAML config of `spec` (every key is in config.example.yaml).
pub fn pgrelay_config(spec: &PgrelaySpec<'_>, port: u16, admin_port: u16, dir: &Path) -> String {
    let mut y = String::new();
    let _ = writeln!(y, "listen: 127.0.0.1:{port}");
    let _ = writeln!(y, "admin:\n  listen: 127.0.0.1:{admin_port}");
    let _ = writeln!(y, "nodes:");
    for (name, p) in &spec.nodes {
        let _ = writeln!(y, "  - name: {name}\n    host: 127.0.0.1\n    port: {p}");
    }
    let _ = writeln!(
        y,
        "users:\n  - name: {}\n    password: {}",
        cluster::APP_USER,
        cluster::APP_PASSWORD
    );
    let (su, su_password) = (cluster::SUPERUSER, cluster::SUPERUSER_PASSWORD);
    let _ = writeln!(
        y,
        "control:\n  user: {su}\n  password: {su_password}\n  database: postgres"
    );
    let _ = writeln!(y, "auth: {}", spec.auth);
    let _ = writeln!(y, "pool:\n  size: {}", spec.pool_size);
    let _ = writeln!(y, "limits:\n  max_clients: {}", spec.max_clients);
    let _ = writeln!(y, "routing:\n  consistency: session");
    // A benchmark must not promote a replica because a loaded 2-core machine delayed
    // some heartbeats: detect and report only.
    let _ = writeln!(
        y,
        "failover:\n  mode: manual\n  state_file: {}",
        dir.join("state.json").display()
    );
    y
}

/// Starts `pgrelay --config FILE` on free loopback ports and waits until `/ready`
/// answers 200 (a primary is known).
pub fn start_pgrelay(bin: &Path, spec: &PgrelaySpec<'_>, logs: &Path) -> Result<(Proc, u16)> {
    let dir = tempfile::Builder::new()
        .prefix("pgrelay-bench-")
        .tempdir()
        .context("temp dir")?;
    let port = cluster::free_port()?;
    let admin_port = cluster::free_port()?;
    let config = dir.path().join("pgrelay.yaml");
    std::fs::write(&config, pgrelay_config(spec, port, admin_port, dir.path()))?;
    let log = logs.join(format!("{}.log", spec.name));
    let log_file = File::create(&log).with_context(|| format!("create {}", log.display()))?;
    let mut cmd = Command::new(bin);
    // No inherited PGRELAY_* variable may override the file (or be an unknown key).
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PGRELAY_") {
            cmd.env_remove(k);
        }
    }
    let child = cmd
        .arg("--config")
        .arg(&config)
        .env(
            "PGRELAY_LOG",
            std::env::var("BENCH_PGRELAY_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    let mut proc = Proc {
        name: spec.name.to_string(),
        child: Some(child),
        log,
        save_log: None,
        _dir: dir,
    };
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        proc.check_alive()?;
        if crate::sys::http_status(admin_port, "/ready") == Some(200) && cluster::accepting(port) {
            return Ok((proc, port));
        }
        if Instant::now() > deadline {
            bail!(
                "{} not ready after {START_TIMEOUT:?}; log:\n{}",
                spec.name,
                tail(&proc.log, 15)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Debian's PgBouncer, or the one on PATH.
pub fn find_pgbouncer() -> Option<PathBuf> {
    let fixed = PathBuf::from("/usr/sbin/pgbouncer");
    if fixed.is_file() {
        return Some(fixed);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("pgbouncer"))
        .find(|p| p.is_file())
}

/// PgBouncer's ini: transaction pooling in front of the primary's app database.
pub fn pgbouncer_ini(primary_port: u16, port: u16, dir: &Path, pool_size: u32) -> String {
    let d = dir.display();
    format!(
        "[databases]
{db} = host=127.0.0.1 port={primary_port} dbname={db}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {d}/userlist.txt
pool_mode = transaction
max_client_conn = 2000
default_pool_size = {pool_size}
logfile = {d}/pgbouncer.log
pidfile = {d}/pgbouncer.pid
log_connections = 0
log_disconnections = 0
ignore_startup_parameters = extra_float_digits,options
",
        db = cluster::APP_DB
    )
}

/// Starts PgBouncer on a free loopback port; as `nobody` (owning its dir) when root.
pub fn start_pgbouncer(
    bin: &Path,
    primary_port: u16,
    pool_size: u32,
    logs: &Path,
) -> Result<(Proc, u16)> {
    let dir = tempfile::Builder::new()
        .prefix("pgbouncer-bench-")
        .tempdir()
        .context("temp dir")?;
    let port = cluster::free_port()?;
    let drop_to = if Uid::effective().is_root() {
        let user = User::from_name("nobody")?.context("no `nobody` user to run PgBouncer as")?;
        Some((user.uid, user.gid))
    } else {
        None
    };
    let ini = dir.path().join("pgbouncer.ini");
    let userlist = dir.path().join("userlist.txt");
    std::fs::write(
        &ini,
        pgbouncer_ini(primary_port, port, dir.path(), pool_size),
    )?;
    std::fs::write(
        &userlist,
        format!("\"{}\" \"{}\"\n", cluster::APP_USER, cluster::APP_PASSWORD),
    )?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
    if let Some((uid, gid)) = drop_to {
        for p in [dir.path(), &ini, &userlist] {
            nix::unistd::chown(p, Some(uid), Some(gid))
                .with_context(|| format!("chown {}", p.display()))?;
        }
    }
    let log = dir.path().join("pgbouncer.log");
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .env("LC_ALL", "C")
        .current_dir(dir.path())
        .arg(&ini)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some((uid, gid)) = drop_to {
        cmd.uid(uid.as_raw()).gid(gid.as_raw());
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    let proc = Proc {
        name: "pgbouncer".into(),
        child: Some(child),
        log,
        save_log: Some(logs.join("pgbouncer.log")),
        _dir: dir,
    };
    until_accepting(proc, port)
}

/// Starts this binary as the bare relay (see `relay`) in front of the primary.
pub fn start_bare_relay(primary_port: u16, logs: &Path) -> Result<(Proc, u16)> {
    let dir = tempfile::Builder::new()
        .prefix("bare-relay-bench-")
        .tempdir()
        .context("temp dir")?;
    let port = cluster::free_port()?;
    let log = logs.join("bare-relay.log");
    let log_file = File::create(&log).with_context(|| format!("create {}", log.display()))?;
    let child = Command::new(std::env::current_exe()?)
        .arg("--bare-relay")
        .arg(port.to_string())
        .arg(primary_port.to_string())
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .context("spawn the bare relay")?;
    let proc = Proc {
        name: "bare relay".into(),
        child: Some(child),
        log,
        save_log: None,
        _dir: dir,
    };
    until_accepting(proc, port)
}

/// Waits until `proc` accepts connections on `port`; fails with its log if it exits
/// or takes too long.
fn until_accepting(mut proc: Proc, port: u16) -> Result<(Proc, u16)> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        proc.check_alive()?;
        if cluster::accepting(port) {
            return Ok((proc, port));
        }
        if Instant::now() > deadline {
            bail!(
                "{} not accepting after {START_TIMEOUT:?}; log:\n{}",
                proc.name,
                tail(&proc.log, 15)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgrelay_config_has_the_keys() {
        let spec = PgrelaySpec {
            name: "x",
            nodes: vec![("pg0".into(), 5000), ("pg1".into(), 5001)],
            auth: "trust",
            pool_size: 20,
            max_clients: 11000,
        };
        let y = pgrelay_config(&spec, 6000, 6001, Path::new("/tmp/d"));
        for want in [
            "listen: 127.0.0.1:6000",
            "  listen: 127.0.0.1:6001",
            "    port: 5001",
            "auth: trust",
            "  size: 20",
            "  max_clients: 11000",
            "  state_file: /tmp/d/state.json",
        ] {
            assert!(y.lines().any(|l| l == want), "missing {want:?} in\n{y}");
        }
    }

    #[test]
    fn pgbouncer_ini_is_transaction_mode() {
        let ini = pgbouncer_ini(5000, 6000, Path::new("/d"), 20);
        for want in [
            "app = host=127.0.0.1 port=5000 dbname=app",
            "listen_port = 6000",
            "pool_mode = transaction",
            "default_pool_size = 20",
            "auth_file = /d/userlist.txt",
        ] {
            assert!(ini.lines().any(|l| l == want), "missing {want:?} in\n{ini}");
        }
    }
}
