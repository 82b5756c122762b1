//! Where epoch (fencing token) and failover decisions live. A single pgrelay decides
//! alone ([`LocalCoordinator`]); several sidecars will share an etcd-backed one, which is
//! why this is a trait and not a field.

use router::Epoch;
use std::sync::atomic::{AtomicU64, Ordering};

pub trait Coordinator: Send + Sync {
    /// The current epoch. Every promotion bumps it; a node claiming to be primary under
    /// an older epoch is fenced.
    fn epoch(&self) -> Epoch;
}

/// Holds the epoch in memory. The failover work will persist it to a local file so a
/// restart never reuses an epoch.
#[derive(Debug, Default)]
pub struct LocalCoordinator {
    epoch: AtomicU64,
}

impl LocalCoordinator {
    pub fn new(epoch: Epoch) -> Self {
        LocalCoordinator {
            epoch: AtomicU64::new(epoch.0),
        }
    }
}

impl Coordinator for LocalCoordinator {
    fn epoch(&self) -> Epoch {
        Epoch(self.epoch.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_epoch_is_what_it_was_given() {
        for e in [0, 1, u64::MAX] {
            let c: Box<dyn Coordinator> = Box::new(LocalCoordinator::new(Epoch(e)));
            assert_eq!(c.epoch(), Epoch(e));
        }
        assert_eq!(LocalCoordinator::default().epoch(), Epoch(0));
    }
}
