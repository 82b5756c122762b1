//! Cancel requests. pgrelay hands each client its own BackendKeyData, because the client's
//! statements run on different backends over time. A CancelRequest carrying that key is
//! delivered to whichever backend is running the client's statement at that moment.

use crate::backend::CancelKey;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Where a session's current statement runs. Written by its session on every lease and
/// release, read only by cancel requests, so the writes avoid atomic read-modify-writes
/// (each a full barrier, which `perf annotate` showed among the lease path's costliest
/// instructions): release only lowers a flag, and a lease of the backend the slot
/// already names only raises it.
#[derive(Default)]
pub struct CancelSlot {
    /// The backend the session last ran on, kept past its release.
    target: Mutex<Option<Arc<CancelTarget>>>,
    /// Address of the `CancelTarget` in `target`, so the session (the only writer) can
    /// tell without the lock whether a lease changes it. Comparing addresses is sound
    /// because `target` keeps that allocation alive: no other target can have it.
    current: AtomicUsize,
    /// A statement of the session is running on `target`.
    running: AtomicBool,
}

/// Where and with which key to cancel what runs on one server connection. Made once
/// per connection and shared with the slot of each session it serves: a lease costs
/// no copy.
#[derive(Debug, PartialEq, Eq)]
pub struct CancelTarget {
    pub addr: String,
    pub key: CancelKey,
}

impl CancelSlot {
    /// The session's statements run on `target` from now on. Only its session calls
    /// `set` and `clear`.
    pub fn set(&self, target: &Arc<CancelTarget>) {
        let addr = Arc::as_ptr(target) as usize;
        if self.current.load(Ordering::Relaxed) != addr {
            *self.target.lock().unwrap_or_else(|e| e.into_inner()) = Some(target.clone());
            self.current.store(addr, Ordering::Relaxed);
        }
        self.running.store(true, Ordering::Release);
    }

    /// The session is not running anything.
    pub fn clear(&self) {
        self.running.store(false, Ordering::Release);
    }

    pub fn get(&self) -> Option<Arc<CancelTarget>> {
        if !self.running.load(Ordering::Acquire) {
            return None;
        }
        self.target
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

struct Entry {
    secret: u32,
    slot: Arc<CancelSlot>,
}

/// Process-wide map from the keys pgrelay issued to the sessions that hold them.
#[derive(Default)]
pub struct CancelRegistry {
    next_pid: AtomicU32,
    sessions: Mutex<HashMap<u32, Entry>>,
}

/// Unregisters the session when it ends.
pub struct Registration {
    pub pid: u32,
    pub secret: u32,
    pub slot: Arc<CancelSlot>,
    registry: Arc<CancelRegistry>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.pid);
    }
}

impl CancelRegistry {
    pub fn register(self: &Arc<Self>) -> Registration {
        let secret: u32 = rand::random();
        let slot = Arc::new(CancelSlot::default());
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let pid = loop {
            // Skip 0 and any pid still in use after wrap-around.
            let pid = self
                .next_pid
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_add(1);
            if pid != 0 && !sessions.contains_key(&pid) {
                break pid;
            }
        };
        sessions.insert(
            pid,
            Entry {
                secret,
                slot: slot.clone(),
            },
        );
        Registration {
            pid,
            secret,
            slot,
            registry: self.clone(),
        }
    }

    /// The backend to cancel for a client's (pid, key), if the key matches and the
    /// session is running something. A wrong key finds nothing, as in PostgreSQL.
    pub fn lookup(&self, pid: u32, key: &[u8]) -> Option<Arc<CancelTarget>> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let entry = sessions.get(&pid)?;
        if key != entry.secret.to_be_bytes() {
            return None;
        }
        entry.slot.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_requires_the_right_key_and_a_running_statement() {
        let reg = Arc::new(CancelRegistry::default());
        let a = reg.register();
        let b = reg.register();
        assert_ne!(a.pid, b.pid);
        let key = a.secret.to_be_bytes();
        assert_eq!(
            reg.lookup(a.pid, &key),
            None,
            "idle session: nothing to cancel"
        );
        let backend = CancelKey {
            pid: 42,
            key: vec![1, 2, 3, 4],
        };
        let target = Arc::new(CancelTarget {
            addr: "127.0.0.1:5432".into(),
            key: backend,
        });
        a.slot.set(&target);
        assert_eq!(reg.lookup(a.pid, &key), Some(target.clone()));
        assert_eq!(
            reg.lookup(a.pid, &(a.secret ^ 1).to_be_bytes()),
            None,
            "wrong key"
        );
        assert_eq!(reg.lookup(a.pid, &key[..3]), None, "short key");
        a.slot.clear();
        assert_eq!(reg.lookup(a.pid, &key), None, "released: nothing to cancel");
        a.slot.set(&target);
        assert_eq!(
            reg.lookup(a.pid, &key),
            Some(target.clone()),
            "same backend again"
        );
        let other = Arc::new(CancelTarget {
            addr: "127.0.0.1:5433".into(),
            key: CancelKey {
                pid: 43,
                key: vec![5, 6, 7, 8],
            },
        });
        a.slot.set(&other);
        assert_eq!(reg.lookup(a.pid, &key), Some(other), "another backend");
        let pid = a.pid;
        drop(a);
        assert_eq!(reg.lookup(pid, &key), None, "ended session");
    }
}
