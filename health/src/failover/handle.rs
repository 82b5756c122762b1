//! How the rest of pgrelay talks to the failover task: commands in (each answered when
//! done), status out.

use super::controller::LastFailover;
use super::{Command, Mode, Refusal, Reply};
use router::{Epoch, NodeId};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// Leases pgrelay's sessions hold on a node right now: a switchover waits for the old
/// primary's to end.
pub type InFlight = Arc<dyn Fn(NodeId) -> usize + Send + Sync>;

/// What operators see of failover.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailoverStatus {
    pub mode: Mode,
    pub paused: bool,
    pub epoch: Epoch,
    /// `steady`, `promoting`, `draining` or `catching up`.
    pub phase: &'static str,
    pub writes_held: Option<String>,
    pub last: Option<LastFailover>,
    /// Wall-clock time the last failover completed (this process saw it).
    pub last_at: Option<std::time::SystemTime>,
    /// Nodes an operator drained.
    pub drained: Vec<String>,
    /// Completed promotions since start.
    pub failovers: u64,
    /// Fence commands and fencing statements, by outcome.
    pub fence_ok: u64,
    pub fence_failed: u64,
}

pub(crate) type Request = (Command, oneshot::Sender<Reply>);

/// Cheap to clone; every clone talks to the same task.
#[derive(Clone)]
pub struct FailoverHandle {
    requests: mpsc::Sender<Request>,
    pub(crate) status: Arc<Mutex<FailoverStatus>>,
}

/// The task's side of a [`FailoverHandle`].
pub struct FailoverInbox {
    pub(crate) requests: mpsc::Receiver<Request>,
    pub(crate) status: Arc<Mutex<FailoverStatus>>,
}

impl FailoverHandle {
    pub fn new() -> (FailoverHandle, FailoverInbox) {
        let (tx, rx) = mpsc::channel(16);
        let status = Arc::new(Mutex::new(FailoverStatus::default()));
        (
            FailoverHandle {
                requests: tx,
                status: status.clone(),
            },
            FailoverInbox {
                requests: rx,
                status,
            },
        )
    }

    /// Asks for something and waits for the answer (a switchover answers once the new
    /// primary is promoted, or when it is abandoned).
    pub async fn request(&self, command: Command) -> Reply {
        let (tx, rx) = oneshot::channel();
        let gone = || Refusal::Busy("the failover task is not running".into());
        self.requests
            .send((command, tx))
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    pub fn status(&self) -> FailoverStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl FailoverInbox {
    /// The next request, for a driver other than the health monitor (tools, and tests
    /// of the layers above). `None` once every handle is gone.
    pub async fn next(&mut self) -> Option<(Command, oneshot::Sender<Reply>)> {
        self.requests.recv().await
    }

    /// Changes the status every handle reports.
    pub fn update_status(&self, f: impl FnOnce(&mut FailoverStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }
}
