//! The thin side of failover: feeds the [`Controller`] and carries out its actions.
//! Quick ones (persisting, dropping pooled connections, replies) happen in line; those
//! that talk to a node run as tasks whose results come back as inputs.

use super::actions::{self, Effects};
use super::handle::{FailoverInbox, FailoverStatus, Request};
use super::{Action, Controller, Input, Phase, Reply};
use crate::{Coordinator, OnDown};
use router::Topology;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Everything the monitor needs to run failover.
pub struct FailoverSetup {
    /// Built from what the coordinator had stored (see [`Controller::new`]).
    pub controller: Controller,
    pub coordinator: Arc<dyn Coordinator>,
    pub effects: Effects,
    pub inbox: FailoverInbox,
}

pub(crate) struct Driver {
    ctl: Controller,
    coordinator: Arc<dyn Coordinator>,
    effects: Arc<Effects>,
    results: mpsc::UnboundedSender<Input>,
    pending: HashMap<u64, oneshot::Sender<Reply>>,
    /// Answers wait here until the snapshot they describe is published, so a caller
    /// that reads the topology right after its reply sees the change.
    answered: Vec<(u64, Reply)>,
    next_id: u64,
    status: Arc<Mutex<FailoverStatus>>,
    on_down: OnDown,
}

/// The receiving ends, kept apart from the driver so the loop can wait on them while
/// it holds the driver.
pub(crate) struct Inlets {
    pub results: mpsc::UnboundedReceiver<Input>,
    pub requests: mpsc::Receiver<Request>,
}

impl Driver {
    pub(crate) fn new(setup: FailoverSetup, on_down: OnDown) -> (Driver, Inlets) {
        let (tx, rx) = mpsc::unbounded_channel();
        let driver = Driver {
            ctl: setup.controller,
            coordinator: setup.coordinator,
            effects: Arc::new(setup.effects),
            results: tx,
            pending: HashMap::new(),
            answered: Vec::new(),
            next_id: 0,
            status: setup.inbox.status,
            on_down,
        };
        driver.publish_status(0, 0);
        (
            driver,
            Inlets {
                results: rx,
                requests: setup.inbox.requests,
            },
        )
    }

    pub(crate) fn primary(&self) -> Option<usize> {
        self.ctl.primary().map(|p| p.0)
    }

    pub(crate) fn overlay(&self, topo: &mut Topology) {
        self.ctl.overlay(topo);
    }

    pub(crate) fn request(&mut self, at: Instant, (command, reply): Request) {
        self.next_id += 1;
        let id = self.next_id;
        self.pending.insert(id, reply);
        self.step(at, Input::Command { id, command });
    }

    pub(crate) fn step(&mut self, at: Instant, input: Input) {
        let (mut ok, mut failed) = (0, 0);
        match &input {
            Input::FenceCommandRan { result, .. } | Input::Fenced { result, .. } => {
                if result.is_ok() {
                    ok += 1;
                } else {
                    failed += 1;
                }
            }
            _ => {}
        }
        let mut queue: VecDeque<Action> = self.ctl.step(at, input).into();
        while let Some(action) = queue.pop_front() {
            if let Action::Persist(authority) = &action {
                if let Err(e) = self.coordinator.store(authority) {
                    // Nothing after a failed persist may happen (no promotion).
                    queue.clear();
                    queue.extend(self.ctl.step(at, Input::PersistFailed(e.to_string())));
                }
                continue;
            }
            self.act(action);
        }
        self.publish_status(ok, failed);
    }

    fn act(&mut self, action: Action) {
        let e = self.effects.clone();
        let tx = self.results.clone();
        let send = move |input: Input| {
            let _ = tx.send(input);
        };
        match action {
            Action::Persist(_) => {}
            Action::DropPooled(node) => (self.on_down)(node),
            Action::Reply { id, reply } => self.answered.push((id, reply)),
            Action::Promote { node } => {
                tokio::spawn(async move {
                    let result = actions::promote(&e, node).await;
                    send(Input::Promoted { node, result });
                });
            }
            Action::Repoint { node, primary } => {
                tokio::spawn(async move {
                    let result = actions::repoint(&e, node, primary).await;
                    send(Input::Repointed { node, result });
                });
            }
            Action::Fence { node } => {
                tokio::spawn(async move {
                    let result = actions::fence(&e, node).await;
                    send(Input::Fenced { node, result });
                });
            }
            Action::FenceCommand { node, epoch } => {
                tokio::spawn(async move {
                    match actions::fence_command(&e, node, epoch).await {
                        Ok(false) => {}
                        Ok(true) => send(Input::FenceCommandRan {
                            node,
                            result: Ok(()),
                        }),
                        Err(err) => send(Input::FenceCommandRan {
                            node,
                            result: Err(err),
                        }),
                    }
                });
            }
            Action::Drain { node, timeout } => {
                tokio::spawn(async move {
                    let result = actions::drain(&e, node, timeout).await;
                    send(Input::Drained { node, result });
                });
            }
            Action::Unfence { node } => {
                tokio::spawn(async move {
                    if let Err(err) = actions::unfence(&e, node).await {
                        tracing::error!(node = %e.specs[node.0].name, error = %err, "could not make the old primary writable again");
                    }
                });
            }
        }
    }

    /// Sends the answers held back by [`Driver::step`]; call after publishing.
    pub(crate) fn send_replies(&mut self) {
        for (id, reply) in self.answered.drain(..) {
            if let Some(tx) = self.pending.remove(&id) {
                let _ = tx.send(reply);
            }
        }
    }

    fn publish_status(&self, fence_ok: u64, fence_failed: u64) {
        let Ok(mut s) = self.status.lock() else {
            return;
        };
        s.mode = self.ctl.settings.mode;
        s.paused = self.ctl.paused();
        s.epoch = self.ctl.epoch();
        s.phase = match self.ctl.phase() {
            Phase::Steady => "steady",
            Phase::Promoting { .. } => "promoting",
            Phase::Draining { .. } => "draining",
            Phase::CatchingUp { .. } => "catching up",
        };
        s.writes_held = self.ctl.hold().map(str::to_string);
        s.last = self.ctl.last_failover().cloned();
        if s.failovers != self.ctl.failovers() {
            s.last_at = Some(std::time::SystemTime::now());
        }
        s.failovers = self.ctl.failovers();
        s.drained = self.ctl.drained();
        s.fence_ok += fence_ok;
        s.fence_failed += fence_failed;
    }
}
