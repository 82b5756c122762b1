//! Locating the installed PostgreSQL programs.
//!
//! Debian splits them: server programs live only in `/usr/lib/postgresql/<v>/bin`,
//! while `/usr/bin` holds version-switching wrappers for client tools. We prefer
//! the real version directory so server and tools agree.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::ClusterError;

/// Absolute paths of the programs the cluster runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `initdb`, run once per template.
    pub initdb: PathBuf,
    /// The server itself; we spawn it directly so we own the child process.
    pub postgres: PathBuf,
    /// Clones a primary into a replica.
    pub pg_basebackup: PathBuf,
    /// Runs SQL for tests.
    pub psql: PathBuf,
}

impl Binaries {
    /// Finds the programs once per process (the answer cannot change under us
    /// in a test run, and `pg_config` costs a process spawn).
    pub fn get() -> Result<Binaries, ClusterError> {
        static CACHE: OnceLock<Binaries> = OnceLock::new();
        if let Some(b) = CACHE.get() {
            return Ok(b.clone());
        }
        let found = Binaries::locate()?;
        Ok(CACHE.get_or_init(|| found).clone())
    }

    /// Searches the candidate directories in priority order.
    pub fn locate() -> Result<Binaries, ClusterError> {
        let dirs = candidate_dirs();
        let find = |name: &str| find_in(&dirs, name);
        Ok(Binaries {
            initdb: find("initdb")?,
            postgres: find("postgres")?,
            pg_basebackup: find("pg_basebackup")?,
            psql: find("psql")?,
        })
    }
}

/// Candidate directories, best first: `PG_BINDIR`, `pg_config --bindir`, the newest
/// `/usr/lib/postgresql/*/bin`, then `PATH`.
fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("PG_BINDIR").filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(d));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !s.is_empty() {
                dirs.push(PathBuf::from(s));
            }
        }
    }
    if let Some(d) = newest_debian_bindir(Path::new("/usr/lib/postgresql")) {
        dirs.push(d);
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs
}

/// Picks the highest numeric version directory that has a `bin` inside.
fn newest_debian_bindir(root: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(root).ok()?;
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let version = parse_version(&name)?;
            let bin = e.path().join("bin");
            bin.is_dir().then_some((version, bin))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin)
}

/// Parses `15` or `9.6` into comparable numbers; anything else is not a version dir.
pub(crate) fn parse_version(name: &str) -> Option<Vec<u32>> {
    if name.is_empty() {
        return None;
    }
    name.split('.').map(|p| p.parse::<u32>().ok()).collect()
}

fn find_in(dirs: &[PathBuf], name: &str) -> Result<PathBuf, ClusterError> {
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| ClusterError::BinaryNotFound {
            program: name.to_string(),
            searched: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names() {
        let cases: &[(&str, Option<Vec<u32>>)] = &[
            ("15", Some(vec![15])),
            ("9.6", Some(vec![9, 6])),
            ("", None),
            ("15beta", None),
            ("bin", None),
            ("1..2", None),
        ];
        for (name, want) in cases {
            assert_eq!(&parse_version(name), want, "{name:?}");
        }
    }

    #[test]
    fn newest_version_dir_wins() {
        let root = tempfile::tempdir().unwrap();
        for v in ["9.6", "15", "13", "notaversion"] {
            std::fs::create_dir_all(root.path().join(v).join("bin")).unwrap();
        }
        std::fs::create_dir_all(root.path().join("16")).unwrap(); // no bin: skipped
        let got = newest_debian_bindir(root.path()).unwrap();
        assert_eq!(got, root.path().join("15").join("bin"));
    }

    #[test]
    fn missing_program_names_install_hint() {
        let err = find_in(&[PathBuf::from("/nonexistent")], "initdb").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("apt-get install postgresql"), "{msg}");
        assert!(msg.contains("/nonexistent"), "{msg}");
    }
}
