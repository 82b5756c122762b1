//! `failover:`: when and how pgrelay promotes a replica, and how it fences the old
//! primary. Every default is the safe choice, so no section at all is a sound setup.

use super::units::{self, ByteSize};
use health::failover::{FailoverSettings, Mode};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    /// `automatic` promotes on its own; `manual` detects and reports, and promotes only
    /// when asked.
    pub mode: Mode,
    /// Where the epoch and the primary's name are kept across restarts. Defaults to
    /// `pgrelay-state.json` next to the config file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_file: Option<PathBuf>,
    /// A STONITH hook run through `sh -c` with the fenced node's name, host, port and the
    /// epoch as `$1`..`$4` (and `PGRELAY_FENCE_NODE/HOST/PORT/EPOCH`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fence_command: Option<String>,
    /// Heartbeat intervals of silence before the primary is suspected.
    pub missed_heartbeats: u32,
    /// A candidate further behind the last known primary position is refused unless an
    /// operator forces it.
    pub max_lag_on_failover: ByteSize,
    /// How long a statement that needs the primary waits for one before it fails.
    #[serde(with = "units::duration")]
    pub write_wait: Duration,
    /// How long `pg_promote` may take.
    #[serde(with = "units::duration")]
    pub promote_timeout: Duration,
    /// How long a re-pointed replica may take to stream from the new primary before it
    /// is marked diverged.
    #[serde(with = "units::duration")]
    pub follow_timeout: Duration,
    /// Switchover: how long open transactions on the old primary may take to finish.
    #[serde(with = "units::duration")]
    pub drain_timeout: Duration,
    /// Switchover: how long the target may take to replay the old primary's last WAL.
    #[serde(with = "units::duration")]
    pub catch_up_timeout: Duration,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        let s = FailoverSettings::default();
        FailoverConfig {
            mode: Mode::Automatic,
            state_file: None,
            fence_command: None,
            missed_heartbeats: s.missed_heartbeats,
            max_lag_on_failover: ByteSize(s.max_lag.0 as usize),
            write_wait: Duration::from_secs(5),
            promote_timeout: Duration::from_secs(30),
            follow_timeout: s.follow_timeout,
            drain_timeout: s.drain_timeout,
            catch_up_timeout: s.catch_up_timeout,
        }
    }
}

impl FailoverConfig {
    /// The controller's settings, with the heartbeat interval they count in.
    pub fn settings(&self, interval: Duration) -> FailoverSettings {
        FailoverSettings {
            mode: self.mode,
            interval,
            missed_heartbeats: self.missed_heartbeats,
            max_lag: router::WalBytes(self.max_lag_on_failover.0 as u64),
            follow_timeout: self.follow_timeout,
            drain_timeout: self.drain_timeout,
            catch_up_timeout: self.catch_up_timeout,
        }
    }
}
