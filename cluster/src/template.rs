//! A cached, ready-to-copy primary data directory.
//!
//! initdb plus creating the `app` role and database takes 1–2 s; copying the
//! result takes tens of milliseconds. The template is built once per machine
//! (keyed by server version, layout revision and owner), in a private build
//! directory that is renamed into place, so concurrent test processes either
//! win the rename or adopt the winner's copy — nobody sees a half-built one.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::bins::Binaries;
use crate::conf::{quote_conf, COMMON_CONF, NODE_CONF, PG_HBA};
use crate::process::{self, Launch};
use crate::psql::{self, Target};
use crate::runas::RunAs;
use crate::{ClusterError, APP_DB, APP_PASSWORD, APP_USER, SUPERUSER, SUPERUSER_PASSWORD};

/// Bump when the template's contents change, so stale caches are ignored.
const LAYOUT: &str = "v3";

/// Returns the template's data directory, building it if needed.
pub fn ensure(run: &RunAs, bins: &Binaries) -> Result<PathBuf, ClusterError> {
    // One builder per process; other processes are handled by the rename.
    static BUILD: Mutex<()> = Mutex::new(());
    let _guard = BUILD.lock().unwrap_or_else(|p| p.into_inner());

    let version = server_version(run, bins)?;
    let root = std::env::temp_dir();
    let final_dir = root.join(format!(
        "pgcluster-template-{LAYOUT}-{version}-u{}",
        run.uid()
    ));
    let data = final_dir.join("data");
    if data.join("PG_VERSION").is_file() {
        return Ok(data);
    }
    let build = tempfile::Builder::new()
        .prefix("pgcluster-template-build-")
        .tempdir_in(&root)
        .map_err(|e| ClusterError::io("create template build dir", e))?;
    run.own(build.path())?;
    build_into(run, bins, build.path())?;
    let build_path = build.keep();
    match fs::rename(&build_path, &final_dir) {
        Ok(()) => Ok(data),
        Err(e) => {
            let _ = fs::remove_dir_all(&build_path);
            if data.join("PG_VERSION").is_file() {
                Ok(data) // another process won the race
            } else {
                Err(ClusterError::io(
                    format!("rename template into {}", final_dir.display()),
                    e,
                ))
            }
        }
    }
}

/// `postgres --version` reduced to a path-safe token such as `15.18`.
fn server_version(run: &RunAs, bins: &Binaries) -> Result<String, ClusterError> {
    let out = run
        .command(&bins.postgres, Path::new("/"))
        .arg("--version")
        .output()
        .map_err(|e| ClusterError::io(format!("spawn {}", bins.postgres.display()), e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(version_token(&text))
}

pub(crate) fn version_token(version_output: &str) -> String {
    let token = version_output
        .split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))
        .unwrap_or("unknown");
    token
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn build_into(run: &RunAs, bins: &Binaries, dir: &Path) -> Result<(), ClusterError> {
    let data = dir.join("data");
    let pwfile = dir.join("pwfile");
    run.write_file(&pwfile, SUPERUSER_PASSWORD)?;
    let out = run
        .command(&bins.initdb, dir)
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            SUPERUSER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        ])
        .args(["-E", "UTF8", "--locale=C", "-N"])
        .arg(format!("--pwfile={}", pwfile.display()))
        .output()
        .map_err(|e| ClusterError::io(format!("spawn {}", bins.initdb.display()), e))?;
    if !out.status.success() {
        return Err(ClusterError::Command {
            command: format!("initdb -D {}", data.display()),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let _ = fs::remove_file(&pwfile);
    run.write_file(&data.join("pg_hba.conf"), PG_HBA)?;
    let conf_path = data.join("postgresql.conf");
    let mut conf = fs::read_to_string(&conf_path)
        .map_err(|e| ClusterError::io(format!("read {}", conf_path.display()), e))?;
    conf.push_str(COMMON_CONF);
    run.write_file(&conf_path, &conf)?;

    // Socket-only while building: no TCP port to collide on.
    let node_conf = data.join(NODE_CONF);
    let socket = dir.to_string_lossy();
    run.write_file(
        &node_conf,
        &format!(
            "listen_addresses = ''\nport = 5432\nunix_socket_directories = {}\n",
            quote_conf(&socket)
        ),
    )?;
    let log = dir.join("build.log");
    let launch = Launch {
        name: "template",
        data_dir: &data,
        log: &log,
        cwd: dir,
    };
    let mut child =
        process::start(run, bins, &launch, Duration::from_secs(60)).map_err(|f| f.into_error())?;
    let target = Target {
        socket_dir: dir,
        port: 5432,
        db: "postgres",
    };
    let setup = format!(
        "CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}';\n\
         CREATE DATABASE {APP_DB} OWNER {APP_USER};\n"
    );
    let created = psql::run(run, bins, &target, &setup);
    // A clean (fast) shutdown leaves a consistent directory that copies start from.
    let stopped = process::shutdown(&mut child, Signal::SIGINT, Duration::from_secs(60));
    created?;
    stopped?;
    fs::remove_file(&node_conf)
        .map_err(|e| ClusterError::io(format!("remove {}", node_conf.display()), e))?;
    let _ = fs::remove_file(data.join("postmaster.opts"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_tokens() {
        let cases = [
            (
                "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n",
                "15.18",
            ),
            ("postgres (PostgreSQL) 17beta1", "17beta1"),
            ("postgres (PostgreSQL) 16/x", "16_x"),
            ("", "unknown"),
        ];
        for (input, want) in cases {
            assert_eq!(version_token(input), want, "{input:?}");
        }
    }
}
