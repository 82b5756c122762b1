//! Live sessions, for the admin API's `/sessions`. Each session owns an entry and
//! updates it with relaxed atomics only when something shown changes, so listing costs
//! the data path nothing but a few compares per wake-up.

use router::{Consistency, NodeId, PinReason};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

/// What a session is doing, as `pg_stat_activity` would say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Activity {
    Idle = 0,
    Active = 1,
    IdleInTransaction = 2,
    FailedTransaction = 3,
}

impl Activity {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Activity::Active,
            2 => Activity::IdleInTransaction,
            3 => Activity::FailedTransaction,
            _ => Activity::Idle,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Activity::Idle => "idle",
            Activity::Active => "active",
            Activity::IdleInTransaction => "idle in transaction",
            Activity::FailedTransaction => "failed transaction",
        }
    }
}

const LEVELS: [Consistency; 4] = [
    Consistency::Eventual,
    Consistency::Session,
    Consistency::Global,
    Consistency::Primary,
];
const PINS: [PinReason; 7] = [
    PinReason::Prepare,
    PinReason::Listen,
    PinReason::TempTable,
    PinReason::AdvisoryLock,
    PinReason::HoldCursor,
    PinReason::Load,
    PinReason::Other,
];
const NONE: usize = usize::MAX;

/// One session's public face.
pub struct Entry {
    pub id: u64,
    pub user: String,
    pub database: String,
    pub application_name: Option<String>,
    pub client_addr: Option<SocketAddr>,
    pub started: Instant,
    activity: AtomicU8,
    level: AtomicU8,
    node: AtomicUsize,
    /// Index into `PINS`, or `NONE`.
    pinned: AtomicUsize,
}

/// A snapshot of an entry.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryView {
    pub activity: Activity,
    pub level: Consistency,
    pub node: Option<NodeId>,
    pub pinned: Option<PinReason>,
}

impl Entry {
    pub fn set_activity(&self, a: Activity) {
        self.activity.store(a as u8, Ordering::Relaxed);
    }

    pub fn set_level(&self, level: Consistency) {
        let i = LEVELS.iter().position(|l| *l == level).unwrap_or(1);
        self.level.store(i as u8, Ordering::Relaxed);
    }

    pub fn set_node(&self, node: Option<NodeId>) {
        self.node
            .store(node.map_or(NONE, |n| n.0), Ordering::Relaxed);
    }

    pub fn set_pinned(&self, reason: Option<PinReason>) {
        let i = reason.and_then(|r| PINS.iter().position(|p| *p == r));
        self.pinned.store(i.unwrap_or(NONE), Ordering::Relaxed);
    }

    pub fn view(&self) -> EntryView {
        let node = self.node.load(Ordering::Relaxed);
        EntryView {
            activity: Activity::from_u8(self.activity.load(Ordering::Relaxed)),
            level: LEVELS[self.level.load(Ordering::Relaxed) as usize % LEVELS.len()],
            node: (node != NONE).then_some(NodeId(node)),
            pinned: PINS.get(self.pinned.load(Ordering::Relaxed)).copied(),
        }
    }
}

/// Every live session, by id.
#[derive(Default)]
pub struct Registry {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Weak<Entry>>>,
}

/// Keeps a session listed while it lives.
pub struct Listed {
    entry: Arc<Entry>,
    registry: Weak<Registry>,
}

impl std::ops::Deref for Listed {
    type Target = Entry;
    fn deref(&self) -> &Entry {
        &self.entry
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        if let Some(r) = self.registry.upgrade() {
            r.live
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&self.entry.id);
        }
    }
}

/// Who a new session is.
pub struct NewSession {
    pub user: String,
    pub database: String,
    pub application_name: Option<String>,
    pub client_addr: Option<SocketAddr>,
    pub level: Consistency,
}

impl Registry {
    pub fn add(self: &Arc<Self>, s: NewSession) -> Listed {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Arc::new(Entry {
            id,
            user: s.user,
            database: s.database,
            application_name: s.application_name,
            client_addr: s.client_addr,
            started: Instant::now(),
            activity: AtomicU8::new(Activity::Idle as u8),
            level: AtomicU8::new(1),
            node: AtomicUsize::new(NONE),
            pinned: AtomicUsize::new(NONE),
        });
        entry.set_level(s.level);
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Arc::downgrade(&entry));
        Listed {
            entry,
            registry: Arc::downgrade(self),
        }
    }

    /// Every live session (clones of the handles, taken under the lock briefly).
    pub fn list(&self) -> Vec<Arc<Entry>> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.values().filter_map(Weak::upgrade).collect()
    }

    pub fn len(&self) -> usize {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(user: &str) -> NewSession {
        NewSession {
            user: user.into(),
            database: "db".into(),
            application_name: None,
            client_addr: None,
            level: Consistency::Global,
        }
    }

    #[test]
    fn sessions_are_listed_while_they_live() {
        let r = Arc::new(Registry::default());
        let a = r.add(new("a"));
        let b = r.add(new("b"));
        assert_ne!(a.id, b.id);
        assert_eq!(r.len(), 2);
        drop(a);
        let left = r.list();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].user, "b");
        drop(b);
        assert!(r.is_empty());
    }

    #[test]
    fn every_field_round_trips() {
        let r = Arc::new(Registry::default());
        let s = r.add(new("a"));
        assert_eq!(
            s.view(),
            EntryView {
                activity: Activity::Idle,
                level: Consistency::Global,
                node: None,
                pinned: None
            }
        );
        for (i, level) in LEVELS.iter().enumerate() {
            let pin = PINS[i];
            s.set_level(*level);
            s.set_node(Some(NodeId(i)));
            s.set_pinned(Some(pin));
            s.set_activity(Activity::from_u8(i as u8));
            let v = s.view();
            assert_eq!(
                (v.level, v.node, v.pinned),
                (*level, Some(NodeId(i)), Some(pin))
            );
            assert_eq!(v.activity as u8, i as u8);
        }
        for pin in PINS {
            s.set_pinned(Some(pin));
            assert_eq!(s.view().pinned, Some(pin));
        }
        s.set_pinned(None);
        s.set_node(None);
        assert_eq!((s.view().pinned, s.view().node), (None, None));
    }
}
