//! Running PostgreSQL programs as an account they accept.
//!
//! The server refuses to run as root, and our tests do run as root in CI
//! containers, so every program is started as `nobody` there and every file it
//! touches is handed over to that account. As a normal user nothing changes.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::unistd::{Gid, Uid, User};

use crate::ClusterError;

/// The identity PostgreSQL programs run under.
#[derive(Debug, Clone, Copy)]
pub struct RunAs {
    /// `Some` only when we are root and must drop privileges.
    drop_to: Option<(Uid, Gid)>,
}

impl RunAs {
    /// Decides once, from the effective uid, whether to drop privileges.
    pub fn detect() -> Result<RunAs, ClusterError> {
        if !Uid::effective().is_root() {
            return Ok(RunAs { drop_to: None });
        }
        let user = User::from_name("nobody")
            .map_err(|e| ClusterError::User(format!("looking up `nobody`: {e}")))?
            .ok_or_else(|| ClusterError::User("no `nobody` user in /etc/passwd".into()))?;
        Ok(RunAs {
            drop_to: Some((user.uid, user.gid)),
        })
    }

    /// The uid files must belong to (the server checks its data dir owner).
    pub fn uid(&self) -> Uid {
        self.drop_to.map_or_else(Uid::effective, |(u, _)| u)
    }

    /// A command with a predictable environment: no inherited `PG*` variables
    /// (a developer's PGHOST must not redirect a test), C messages so we can
    /// recognise errors, and a working directory every account can enter.
    pub fn command(&self, program: impl AsRef<OsStr>, cwd: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear().env("LC_ALL", "C").current_dir(cwd);
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        if let Some((uid, gid)) = self.drop_to {
            cmd.uid(uid.as_raw()).gid(gid.as_raw());
        }
        cmd
    }

    /// Gives one path to the run-as account (no-op when not root).
    pub fn own(&self, path: &Path) -> Result<(), ClusterError> {
        if let Some((uid, gid)) = self.drop_to {
            nix::unistd::chown(path, Some(uid), Some(gid))
                .map_err(|e| ClusterError::io(format!("chown {}", path.display()), e.into()))?;
        }
        Ok(())
    }

    /// Creates a private directory owned by the run-as account.
    pub fn create_dir(&self, path: &Path) -> Result<(), ClusterError> {
        fs::create_dir_all(path)
            .map_err(|e| ClusterError::io(format!("mkdir {}", path.display()), e))?;
        set_mode(path, 0o700)?;
        self.own(path)
    }

    /// Writes a file and gives it to the run-as account.
    pub fn write_file(&self, path: &Path, contents: &str) -> Result<(), ClusterError> {
        fs::write(path, contents)
            .map_err(|e| ClusterError::io(format!("write {}", path.display()), e))?;
        self.own(path)
    }

    /// Recursively copies a data directory (regular files and dirs only, which is
    /// all a stopped data dir holds), owned by the run-as account. Copying beats
    /// re-running initdb by about a second per primary.
    pub fn copy_dir(&self, from: &Path, to: &Path) -> Result<(), ClusterError> {
        fs::create_dir(to).map_err(|e| ClusterError::io(format!("mkdir {}", to.display()), e))?;
        set_mode(to, 0o700)?;
        self.own(to)?;
        let entries = fs::read_dir(from)
            .map_err(|e| ClusterError::io(format!("read {}", from.display()), e))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| ClusterError::io(format!("read {}", from.display()), e))?;
            let src = entry.path();
            let dst = to.join(entry.file_name());
            let ty = entry
                .file_type()
                .map_err(|e| ClusterError::io(format!("stat {}", src.display()), e))?;
            if ty.is_dir() {
                self.copy_dir(&src, &dst)?;
            } else if ty.is_file() {
                fs::copy(&src, &dst).map_err(|e| {
                    ClusterError::io(format!("copy {} to {}", src.display(), dst.display()), e)
                })?;
                self.own(&dst)?;
            }
        }
        Ok(())
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ClusterError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| ClusterError::io(format!("chmod {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn copy_dir_copies_tree_and_owner() {
        let run = RunAs::detect().unwrap();
        let src = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("a/b")).unwrap();
        fs::write(src.path().join("a/b/f"), "hello").unwrap();
        fs::write(src.path().join("top"), "x").unwrap();
        let dst_root = tempfile::tempdir().unwrap();
        let dst = dst_root.path().join("copy");
        run.copy_dir(src.path(), &dst).unwrap();
        assert_eq!(fs::read_to_string(dst.join("a/b/f")).unwrap(), "hello");
        assert_eq!(fs::read_to_string(dst.join("top")).unwrap(), "x");
        for p in [dst.clone(), dst.join("a/b"), dst.join("a/b/f")] {
            assert_eq!(fs::metadata(&p).unwrap().uid(), run.uid().as_raw(), "{p:?}");
        }
        assert_eq!(fs::metadata(&dst).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn command_drops_pg_environment() {
        let run = RunAs::detect().unwrap();
        let cmd = run.command("true", Path::new("/"));
        let keys: Vec<_> = cmd.get_envs().map(|(k, _)| k.to_owned()).collect();
        assert!(
            keys.iter().all(|k| k == "LC_ALL" || k == "PATH"),
            "{keys:?}"
        );
    }
}
