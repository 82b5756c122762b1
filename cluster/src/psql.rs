//! Running SQL through `psql` over a node's private unix socket.
//!
//! psql keeps this crate free of a client library and of tokio; each call costs
//! one process spawn (~10 ms), which is fine for setup and assertions.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use crate::bins::Binaries;
use crate::runas::RunAs;
use crate::ClusterError;

/// Where and as whom to connect.
pub struct Target<'a> {
    /// The node's socket directory.
    pub socket_dir: &'a Path,
    /// The node's port (names the socket file).
    pub port: u16,
    /// Database name.
    pub db: &'a str,
}

/// Runs `sql` as the superuser and returns trimmed stdout (unaligned, tuples
/// only, so `SELECT 1` yields `"1"`). The script goes through stdin so it may
/// hold several statements, including ones that refuse transaction blocks.
pub fn run(
    run: &RunAs,
    bins: &Binaries,
    t: &Target<'_>,
    sql: &str,
) -> Result<String, ClusterError> {
    let mut child = run
        .command(&bins.psql, t.socket_dir)
        .args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-U",
            "postgres",
            "-h",
        ])
        .arg(t.socket_dir)
        .arg("-p")
        .arg(t.port.to_string())
        .arg("-d")
        .arg(t.db)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ClusterError::io(format!("spawn {}", bins.psql.display()), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A write error means psql exited early; its stderr explains why.
        let _ = stdin.write_all(sql.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| ClusterError::io("waiting for psql", e))?;
    if !out.status.success() {
        return Err(ClusterError::Command {
            command: format!("psql -p {} -d {}: {}", t.port, t.db, abbreviate(sql)),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Keeps error messages readable when the SQL is a long script.
fn abbreviate(sql: &str) -> String {
    let one_line = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(200) {
        Some((cut, _)) => format!("{}...", one_line.get(..cut).unwrap_or_default()),
        None => one_line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abbreviation() {
        let long = "x".repeat(300);
        let cases = [
            ("SELECT 1", "SELECT 1".to_string()),
            ("SELECT\n  1;\n\tSELECT 2", "SELECT 1; SELECT 2".to_string()),
            (long.as_str(), format!("{}...", "x".repeat(200))),
            ("é".repeat(250).as_str(), format!("{}...", "é".repeat(200))),
        ]
        .map(|(a, b)| (a.to_string(), b));
        for (sql, want) in cases {
            assert_eq!(abbreviate(&sql), want);
        }
    }
}
