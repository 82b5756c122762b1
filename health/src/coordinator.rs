//! Where the epoch (fencing token) and its holder live. A single pgrelay decides alone
//! ([`LocalCoordinator`], a local file); several sidecars will share an etcd-backed one
//! (compare-and-swap on the epoch), which is why this is a trait and not a field.

use crate::failover::Authority;
use router::Epoch;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a pgrelay state file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("refusing to store epoch {new} below the stored epoch {old}")]
    EpochBackwards { old: u64, new: u64 },
}

pub trait Coordinator: Send + Sync {
    /// What was stored last (the default when nothing was).
    fn load(&self) -> Result<Authority, CoordinatorError>;
    /// Stores it durably before anything acts on it. An epoch lower than the stored one
    /// is refused.
    fn store(&self, authority: &Authority) -> Result<(), CoordinatorError>;
    /// The current epoch.
    fn epoch(&self) -> Epoch;
}

/// Keeps the authority in a small JSON file (or only in memory, for tests), replaced
/// atomically: written to a temporary file, synced, renamed over the old one, and the
/// directory synced, so a crash leaves either the old or the new state, never a mix.
#[derive(Debug, Default)]
pub struct LocalCoordinator {
    path: Option<PathBuf>,
    current: Mutex<Authority>,
}

impl LocalCoordinator {
    /// In memory only: a restart forgets the epoch.
    pub fn new(epoch: Epoch) -> Self {
        LocalCoordinator {
            path: None,
            current: Mutex::new(Authority {
                epoch,
                ..Authority::default()
            }),
        }
    }

    /// Backed by `path`, read now (a missing file is a first start).
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, CoordinatorError> {
        let path = path.into();
        let current = read(&path)?;
        Ok(LocalCoordinator {
            path: Some(path),
            current: Mutex::new(current),
        })
    }
}

fn read(path: &Path) -> Result<Authority, CoordinatorError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| CoordinatorError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Authority::default()),
        Err(source) => Err(CoordinatorError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(&dir)?.sync_all()
}

impl Coordinator for LocalCoordinator {
    fn load(&self) -> Result<Authority, CoordinatorError> {
        Ok(self.current.lock().map(|a| a.clone()).unwrap_or_default())
    }

    fn store(&self, authority: &Authority) -> Result<(), CoordinatorError> {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if authority.epoch < current.epoch {
            return Err(CoordinatorError::EpochBackwards {
                old: current.epoch.0,
                new: authority.epoch.0,
            });
        }
        if let Some(path) = &self.path {
            let mut bytes = serde_json::to_vec_pretty(authority).unwrap_or_default();
            bytes.push(b'\n');
            write_atomically(path, &bytes).map_err(|source| CoordinatorError::Write {
                path: path.clone(),
                source,
            })?;
        }
        *current = authority.clone();
        Ok(())
    }

    fn epoch(&self) -> Epoch {
        self.current.lock().map(|a| a.epoch).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(epoch: u64, primary: &str) -> Authority {
        Authority {
            epoch: Epoch(epoch),
            primary: Some(primary.into()),
            timeline: Some(2),
        }
    }

    #[test]
    fn file_survives_a_restart_and_refuses_going_back() {
        let dir = std::env::temp_dir().join(format!("pgrelay-coord-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        let _ = std::fs::remove_file(&path);
        let c = LocalCoordinator::open(&path).unwrap();
        assert_eq!(c.load().unwrap(), Authority::default());
        c.store(&auth(3, "pg1")).unwrap();
        let again = LocalCoordinator::open(&path).unwrap();
        assert_eq!(again.load().unwrap(), auth(3, "pg1"));
        assert_eq!(again.epoch(), Epoch(3));
        assert!(matches!(
            again.store(&auth(2, "pg0")),
            Err(CoordinatorError::EpochBackwards { old: 3, new: 2 })
        ));
        assert_eq!(LocalCoordinator::open(&path).unwrap().epoch(), Epoch(3));
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            LocalCoordinator::open(&path),
            Err(CoordinatorError::Corrupt { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn memory_only() {
        for e in [0, 1, u64::MAX] {
            let c: Box<dyn Coordinator> = Box::new(LocalCoordinator::new(Epoch(e)));
            assert_eq!(c.epoch(), Epoch(e));
        }
    }
}
