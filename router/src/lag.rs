//! Lag bounds and the hysteresis that keeps a replica near its bound from flapping in and
//! out of routing. Pure: the health crate applies it to every heartbeat, the router only
//! sees the resulting [`NodeState`](crate::NodeState).

use crate::{Lag, WalBytes};
use serde::Serialize;
use std::time::Duration;

/// How far behind a replica may be and still take reads. `None` switches a bound off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct LagBounds {
    #[serde(serialize_with = "seconds")]
    pub time: Option<Duration>,
    pub bytes: Option<WalBytes>,
}

fn seconds<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

impl Default for LagBounds {
    /// 1 s and 16 MB, the documented defaults.
    fn default() -> Self {
        LagBounds {
            time: Some(Duration::from_secs(1)),
            bytes: Some(WalBytes(16_000_000)),
        }
    }
}

impl LagBounds {
    /// No bound: every replica is eligible whatever its lag.
    pub const OFF: LagBounds = LagBounds {
        time: None,
        bytes: None,
    };

    /// Over at least one bound.
    pub fn exceeded_by(&self, lag: &Lag) -> bool {
        self.time.is_some_and(|max| lag.time > max) || self.bytes.is_some_and(|max| lag.bytes > max)
    }

    /// Back well under every bound: at most half of each. The gap between leaving (over
    /// the bound) and returning (under half of it) is the hysteresis.
    pub fn cleared_by(&self, lag: &Lag) -> bool {
        self.time.is_none_or(|max| lag.time <= max / 2)
            && self.bytes.is_none_or(|max| lag.bytes.0 <= max.0 / 2)
    }

    /// Whether a replica is lagging now, given whether it was and its latest lag. An
    /// unknown lag (no primary to compare with) keeps the previous verdict.
    pub fn lagging(&self, was_lagging: bool, lag: Option<&Lag>) -> bool {
        match lag {
            None => was_lagging,
            Some(lag) if was_lagging => !self.cleared_by(lag),
            Some(lag) => self.exceeded_by(lag),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lag(ms: u64, bytes: u64) -> Lag {
        Lag {
            bytes: WalBytes(bytes),
            time: Duration::from_millis(ms),
        }
    }

    #[test]
    fn hysteresis_table() {
        let b = LagBounds {
            time: Some(Duration::from_secs(1)),
            bytes: Some(WalBytes(1000)),
        };
        // (was lagging, lag, lagging now)
        let cases = [
            (false, Some(lag(0, 0)), false),
            (false, Some(lag(1000, 1000)), false), // at the bound is not over it
            (false, Some(lag(1001, 0)), true),
            (false, Some(lag(0, 1001)), true),
            (true, Some(lag(900, 0)), true), // under the bound, not under half: stays out
            (true, Some(lag(0, 600)), true),
            (true, Some(lag(500, 500)), false),
            (true, Some(lag(0, 0)), false),
            (true, None, true),
            (false, None, false),
        ];
        for (was, l, want) in cases {
            assert_eq!(b.lagging(was, l.as_ref()), want, "{was} {l:?}");
        }
    }

    #[test]
    fn switched_off_bounds_never_exclude() {
        let time_only = LagBounds {
            time: Some(Duration::from_secs(1)),
            bytes: None,
        };
        assert!(!time_only.lagging(false, Some(&lag(10, u64::MAX))));
        assert!(time_only.lagging(false, Some(&lag(2000, 0))));
        assert!(!LagBounds::OFF.lagging(false, Some(&lag(u64::MAX / 2, u64::MAX))));
        assert!(!LagBounds::OFF.lagging(true, Some(&lag(u64::MAX / 2, u64::MAX))));
        assert_eq!(
            LagBounds::default(),
            LagBounds {
                time: Some(Duration::from_secs(1)),
                bytes: Some(WalBytes(16_000_000))
            }
        );
    }

    fn any_bounds() -> impl Strategy<Value = LagBounds> {
        (
            proptest::option::of(0u64..10_000),
            proptest::option::of(0u64..1 << 30),
        )
            .prop_map(|(t, b)| LagBounds {
                time: t.map(Duration::from_millis),
                bytes: b.map(WalBytes),
            })
    }

    proptest! {
        /// Over a bound is always lagging, whatever came before.
        #[test]
        fn over_the_bound_is_lagging(
            bounds in any_bounds(),
            was in any::<bool>(),
            ms in 0u64..20_000,
            bytes in 0u64..1 << 31,
        ) {
            let l = lag(ms, bytes);
            if bounds.exceeded_by(&l) {
                prop_assert!(bounds.lagging(was, Some(&l)));
            }
            if bounds.cleared_by(&l) {
                prop_assert!(!bounds.lagging(was, Some(&l)));
            }
        }

        /// No flapping: a lag that stays between half the bound and the bound keeps the
        /// previous verdict for as long as it stays there.
        #[test]
        fn in_the_band_keeps_the_verdict(
            was in any::<bool>(),
            lags in proptest::collection::vec(501u64..=1000, 1..20),
        ) {
            let bounds = LagBounds { time: Some(Duration::from_secs(1)), bytes: None };
            let mut state = was;
            for ms in lags {
                state = bounds.lagging(state, Some(&lag(ms, 0)));
                prop_assert_eq!(state, was);
            }
        }
    }
}
