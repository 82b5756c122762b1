//! Which replica to promote. Pure.
//!
//! The most advanced healthy replica by received (flushed) WAL. Under synchronous
//! replication only a standby the primary counted as synchronous may be chosen: with
//! `FIRST k` / a plain list, any `sync` standby has every acknowledged commit; with
//! `ANY k` of `n` quorum standbys, a commit was acknowledged by some k of them, so only
//! after hearing from `n - k + 1` of them is the most advanced one sure to have it.

use crate::probe::Sample;
use crate::topology::NodeView;
use router::{Lsn, NodeId, Role};

/// Why pgrelay will not promote (or switch over): shown to operators and in errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no healthy replica to promote")]
    NoCandidate,
    #[error("unknown node {0:?}")]
    UnknownNode(String),
    #[error("{0} cannot be promoted: {1}")]
    NotEligible(String, String),
    #[error("{name} is {behind} bytes behind the last known primary position (failover.max_lag_on_failover is {max}); force to promote anyway")]
    TooFarBehind { name: String, behind: u64, max: u64 },
    #[error("{name} is behind {best} by {behind} bytes; force to promote it anyway")]
    NotMostAdvanced {
        name: String,
        best: String,
        behind: u64,
    },
    #[error(
        "synchronous replication: {0}; force to promote anyway (acknowledged writes may be lost)"
    )]
    Synchronous(String),
    #[error("{0}")]
    Busy(String),
}

impl Refusal {
    /// A stable, machine-readable name for why (the admin API's `reason`).
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NoCandidate => "no_candidate",
            Refusal::UnknownNode(_) => "unknown_node",
            Refusal::NotEligible(..) => "not_eligible",
            Refusal::TooFarBehind { .. } => "too_far_behind",
            Refusal::NotMostAdvanced { .. } => "not_most_advanced",
            Refusal::Synchronous(_) => "synchronous_standby_required",
            Refusal::Busy(_) => "busy",
        }
    }
}

/// The synchronous rule from the primary's last sample: which standbys qualify, and how
/// many of them must be heard from. `None` when replication was asynchronous.
fn sync_rule(primary: &Sample) -> Option<(Vec<&str>, usize)> {
    if primary.sync_names.trim().is_empty() {
        return None;
    }
    let of = |state: &str| -> Vec<&str> {
        primary
            .standbys
            .iter()
            .filter(|s| s.sync_state.as_deref() == Some(state))
            .map(|s| s.application_name.as_str())
            .collect()
    };
    let quorum = of("quorum");
    if !quorum.is_empty() {
        let k = quorum_size(&primary.sync_names).unwrap_or(1);
        let need = quorum.len().saturating_sub(k) + 1;
        return Some((quorum, need));
    }
    Some((of("sync"), 1))
}

/// `k` of `ANY k (...)`.
fn quorum_size(names: &str) -> Option<usize> {
    let rest = names.trim().strip_prefix("ANY").or_else(|| {
        let t = names.trim();
        t.get(..3)
            .filter(|p| p.eq_ignore_ascii_case("any"))
            .map(|_| &t[3..])
    })?;
    rest.trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// What a choice is made from.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub views: &'a [NodeView],
    pub names: &'a [String],
    /// The primary being replaced: never a candidate.
    pub failed: Option<NodeId>,
    /// Nodes that are fenced or diverged.
    pub excluded: &'a [bool],
    /// The replaced primary's last sample (its position, its synchronous standbys).
    pub last_primary: Option<&'a Sample>,
    pub max_lag: u64,
    /// An operator's choice.
    pub wanted: Option<NodeId>,
    /// Override the lag limit and the synchronous rule.
    pub force: bool,
}

/// Chooses the replica to promote.
pub fn choose_candidate(ask: &Ask<'_>) -> Result<NodeId, Refusal> {
    let Ask {
        views,
        names,
        failed,
        excluded,
        last_primary,
        max_lag,
        wanted,
        force,
    } = *ask;
    let excluded = |n: NodeId| excluded.get(n.0).copied().unwrap_or(false);
    let name = |n: NodeId| names.get(n.0).cloned().unwrap_or_default();
    let eligible: Vec<(NodeId, Lsn)> = views
        .iter()
        .enumerate()
        .map(|(i, v)| (NodeId(i), v))
        .filter(|(n, _)| Some(*n) != failed && !excluded(*n))
        .filter_map(|(n, v)| {
            let s = v.alive_as(Role::Replica)?;
            Some((n, s.receive.max(s.replay).unwrap_or_default()))
        })
        .collect();
    let rule = last_primary.and_then(sync_rule);
    let pool: Vec<(NodeId, Lsn)> = match &rule {
        Some((members, need)) => {
            let heard: Vec<(NodeId, Lsn)> = eligible
                .iter()
                .copied()
                .filter(|(n, _)| members.contains(&name(*n).as_str()))
                .collect();
            if members.is_empty() && !force {
                return Err(Refusal::Synchronous(
                    "no standby was synchronous when the primary was last seen".into(),
                ));
            }
            if heard.len() < *need && !force {
                return Err(Refusal::Synchronous(format!(
                    "heard from {} of the {} quorum standbys, {} needed to be sure one has every acknowledged commit",
                    heard.len(),
                    members.len(),
                    need
                )));
            }
            if force {
                eligible.clone()
            } else {
                heard
            }
        }
        None => eligible.clone(),
    };
    let best = pool
        .iter()
        .copied()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0 .0.cmp(&a.0 .0)))
        .ok_or(Refusal::NoCandidate)?;
    let chosen = match wanted {
        None => best,
        Some(w) => {
            let Some(&found) = pool.iter().find(|(n, _)| *n == w) else {
                let why = if eligible.iter().any(|(n, _)| *n == w) {
                    "it was not a synchronous standby"
                } else {
                    "it is not a healthy replica"
                };
                return Err(Refusal::NotEligible(name(w), why.into()));
            };
            if found.1 < best.1 && !force {
                return Err(Refusal::NotMostAdvanced {
                    name: name(w),
                    best: name(best.0),
                    behind: found.1.bytes_since_or_zero(best.1),
                });
            }
            found
        }
    };
    if let Some(last) = last_primary.and_then(|p| p.current) {
        let behind = chosen.1.bytes_since_or_zero(last);
        if behind > max_lag && !force {
            return Err(Refusal::TooFarBehind {
                name: name(chosen.0),
                behind,
                max: max_lag,
            });
        }
    }
    Ok(chosen.0)
}

trait Behind {
    /// Bytes from `self` up to `ahead` (zero when not ahead).
    fn bytes_since_or_zero(self, ahead: Lsn) -> u64;
}

impl Behind for Lsn {
    fn bytes_since_or_zero(self, ahead: Lsn) -> u64 {
        ahead.0.saturating_sub(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_sizes() {
        for (text, want) in [
            ("ANY 1 (*)", Some(1)),
            ("any 2 (a, b, c)", Some(2)),
            ("FIRST 1 (a)", None),
            ("a, b", None),
            ("ANY (a)", None),
        ] {
            assert_eq!(quorum_size(text), want, "{text}");
        }
    }
}
