//! Measuring replica lag, in bytes and in time. Pure.
//!
//! Bytes behind is the primary's WAL position minus the replica's replay position.
//! Time behind is the age of the oldest WAL the replica has not replayed. The obvious
//! `now() - pg_last_xact_replay_timestamp()` lies on an idle primary (it grows forever
//! although there is nothing to replay), so time is measured from the primary's own WAL
//! positions instead: the monitor records when the primary was first seen at each new
//! position ([`WalHistory`]); a replica replaying up to `L` is behind by the age of the
//! first recorded position past `L`, and by nothing at all once it has replayed
//! everything the primary had. Accuracy is one heartbeat interval.

use router::{Lag, Lsn};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Enough for ~17 minutes of a busy primary at one sample per 250 ms.
const HISTORY: usize = 4096;

/// When the primary was first seen at each WAL position (ascending in both).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalHistory {
    samples: VecDeque<(Instant, Lsn)>,
}

impl WalHistory {
    /// Records the primary at `lsn` at time `at`. An unchanged position records nothing
    /// (an idle primary grows no history); a position behind the last one (a different
    /// primary, rewound) starts the history afresh.
    pub fn record(&mut self, at: Instant, lsn: Lsn) {
        match self.samples.back() {
            Some(&(_, last)) if lsn == last => return,
            Some(&(_, last)) if lsn < last => self.samples.clear(),
            _ => {}
        }
        if self.samples.len() == HISTORY {
            self.samples.pop_front();
        }
        self.samples.push_back((at, lsn));
    }

    /// The newest primary position.
    pub fn latest(&self) -> Option<Lsn> {
        self.samples.back().map(|&(_, l)| l)
    }

    /// How long WAL past `replay` has existed, as of `at`: the age of the first recorded
    /// position past it (zero if none). `covered` is false when `replay` is older than
    /// the whole history, in which case the age is only a lower bound.
    pub fn behind(&self, replay: Lsn, at: Instant) -> (Duration, bool) {
        let first_past = self.samples.iter().position(|&(_, l)| l > replay);
        match first_past {
            None => (Duration::ZERO, true),
            Some(i) => {
                let (t, _) = self.samples[i];
                (at.saturating_duration_since(t), i > 0)
            }
        }
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// What is known about one replica when its lag is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaWal {
    pub receive: Option<Lsn>,
    pub replay: Option<Lsn>,
    /// `now() - pg_last_xact_replay_timestamp()` on the replica.
    pub replay_age: Option<Duration>,
    /// `replay_lag` from the primary's `pg_stat_replication`, if it lists this replica.
    pub primary_reported: Option<Duration>,
}

/// The replica's lag as of `at` (when its sample was taken), against the primary's
/// history. Without a primary position the replica is judged alone: bytes received
/// but not replayed, and the replay timestamp's age only while such bytes exist.
pub fn measure(history: &WalHistory, replica: &ReplicaWal, at: Instant) -> Option<Lag> {
    let replay = replica.replay?;
    let Some(primary) = history.latest() else {
        let pending = replica.receive?.bytes_since(replay);
        let time = if pending.0 == 0 {
            Duration::ZERO
        } else {
            replica.replay_age.unwrap_or_default()
        };
        return Some(Lag {
            bytes: pending,
            time,
        });
    };
    let bytes = primary.bytes_since(replay);
    if bytes.0 == 0 {
        // Replayed everything the primary had: not behind, however idle the primary is.
        return Some(Lag::default());
    }
    let (mut time, covered) = history.behind(replay, at);
    // The primary's own measure is a second opinion; take the more cautious one.
    time = time.max(replica.primary_reported.unwrap_or_default());
    if !covered {
        // Behind everything recorded (e.g. just after startup): the history only gives a
        // lower bound, and the replay timestamp is a fair upper one.
        time = time.max(replica.replay_age.unwrap_or_default());
    }
    Some(Lag { bytes, time })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use router::WalBytes;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn replica(replay: u64) -> ReplicaWal {
        ReplicaWal {
            receive: Some(Lsn(replay)),
            replay: Some(Lsn(replay)),
            replay_age: None,
            primary_reported: None,
        }
    }

    #[test]
    fn history_records_only_progress() {
        let t0 = Instant::now();
        let mut h = WalHistory::default();
        h.record(t0, Lsn(10));
        h.record(t0 + ms(250), Lsn(10));
        h.record(t0 + ms(500), Lsn(20));
        assert_eq!(h.len(), 2);
        assert_eq!(h.latest(), Some(Lsn(20)));
        h.record(t0 + ms(750), Lsn(5)); // a different primary, behind: start again
        assert_eq!(h.len(), 1);
        for i in 0..(HISTORY as u64 + 10) {
            h.record(t0 + ms(i), Lsn(100 + i));
        }
        assert_eq!(h.len(), HISTORY);
    }

    #[test]
    fn lag_table() {
        let t0 = Instant::now();
        let mut h = WalHistory::default();
        // The primary wrote at 0s (to 100), 1s (to 200) and 2s (to 300), then idled.
        for (s, l) in [(0, 100), (1000, 200), (2000, 300)] {
            h.record(t0 + ms(s), Lsn(l));
        }
        let at = t0 + ms(60_000);
        let cases: &[(ReplicaWal, Option<(u64, Duration)>)] = &[
            // Caught up after an hour-long idle primary: zero, whatever the replay stamp.
            (
                ReplicaWal {
                    replay_age: Some(Duration::from_secs(3600)),
                    ..replica(300)
                },
                Some((0, Duration::ZERO)),
            ),
            (replica(350), Some((0, Duration::ZERO))),
            // Missing what was written at 2s: 58s behind.
            (replica(250), Some((50, ms(58_000)))),
            (replica(200), Some((100, ms(58_000)))),
            (replica(150), Some((150, ms(59_000)))),
            // Behind all history: the replay stamp's age is the better bound.
            (
                ReplicaWal {
                    replay_age: Some(ms(90_000)),
                    ..replica(50)
                },
                Some((250, ms(90_000))),
            ),
            // The primary's report is a second opinion.
            (
                ReplicaWal {
                    primary_reported: Some(ms(59_500)),
                    ..replica(250)
                },
                Some((50, ms(59_500))),
            ),
            (
                ReplicaWal {
                    replay: None,
                    ..replica(1)
                },
                None,
            ),
        ];
        for (r, want) in cases {
            let got = measure(&h, r, at).map(|l| (l.bytes.0, l.time));
            assert_eq!(got, *want, "{r:?}");
        }
    }

    #[test]
    fn without_a_primary_the_replica_judges_itself() {
        let h = WalHistory::default();
        let at = Instant::now();
        let r = ReplicaWal {
            receive: Some(Lsn(500)),
            replay: Some(Lsn(400)),
            replay_age: Some(ms(3000)),
            primary_reported: None,
        };
        assert_eq!(
            measure(&h, &r, at),
            Some(Lag {
                bytes: WalBytes(100),
                time: ms(3000)
            })
        );
        let idle = ReplicaWal {
            receive: Some(Lsn(400)),
            ..r
        };
        assert_eq!(measure(&h, &idle, at), Some(Lag::default()));
        let no_receiver = ReplicaWal { receive: None, ..r };
        assert_eq!(measure(&h, &no_receiver, at), None);
    }

    proptest! {
        /// Caught up is zero lag; otherwise bytes are exact and time never exceeds the
        /// age of the oldest recorded write.
        #[test]
        fn lag_is_consistent(
            steps in proptest::collection::vec((1u64..1000, 0u64..500), 1..30),
            replay in 0u64..20_000,
        ) {
            let t0 = Instant::now();
            let mut h = WalHistory::default();
            let (mut t, mut l) = (0u64, 0u64);
            for (dt, dl) in steps {
                t += dt;
                l += dl;
                h.record(t0 + ms(t), Lsn(l));
            }
            let at = t0 + ms(t + 100);
            let lag = measure(&h, &replica(replay), at).unwrap();
            prop_assert_eq!(lag.bytes.0, l.saturating_sub(replay));
            if replay >= l {
                prop_assert_eq!(lag.time, Duration::ZERO);
            } else {
                prop_assert!(lag.time <= at - t0);
                prop_assert!(lag.time >= ms(100));
            }
        }
    }
}
