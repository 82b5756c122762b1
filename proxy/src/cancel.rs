//! Cancel requests. pgrelay hands each client its own BackendKeyData, because the client's
//! statements run on different backends over time. A CancelRequest carrying that key is
//! delivered to whichever backend is running the client's statement at that moment.

use crate::backend::CancelKey;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// Where a session's current statement runs. Updated by the session on every lease, read
/// only by cancel requests, so the lock is uncontended on the data path.
#[derive(Default)]
pub struct CancelSlot {
    target: Mutex<Option<Arc<CancelTarget>>>,
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
    pub fn set(&self, target: &Arc<CancelTarget>) {
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = Some(target.clone());
    }

    pub fn clear(&self) {
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub fn get(&self) -> Option<Arc<CancelTarget>> {
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
        assert_eq!(reg.lookup(a.pid, &key), Some(target));
        assert_eq!(
            reg.lookup(a.pid, &(a.secret ^ 1).to_be_bytes()),
            None,
            "wrong key"
        );
        assert_eq!(reg.lookup(a.pid, &key[..3]), None, "short key");
        let pid = a.pid;
        drop(a);
        assert_eq!(reg.lookup(pid, &key), None, "ended session");
    }
}
