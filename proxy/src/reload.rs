//! `POST /reload` and SIGHUP: read the config file again and apply what can change
//! under running sessions. A file that does not parse or validate is refused with its
//! error and the running config stays. Keys that need a restart (listeners, nodes,
//! pools, health timing, ...) are reported and keep their running values, so the next
//! reload reports them again until pgrelay restarts.

use crate::config::Config;
use crate::session::{Live, Shared, UserAuth};
use admin_api::ReloadReport;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::{Mutex, Weak};

/// Keys swapped in live. `users` covers passwords, per-user `auth` and `consistency`.
const LIVE: &[&str] = &[
    "users",
    "auth",
    "routing.consistency",
    "routing.replica_reads",
    "routing.read_your_writes_timeout",
    "failover.write_wait",
];

pub struct Reloader {
    /// None: the config did not come from a file (tests, the demo); nothing to re-read.
    path: Option<PathBuf>,
    running: Mutex<Config>,
    shared: Weak<Shared>,
}

impl Reloader {
    pub fn new(path: Option<PathBuf>, running: Config, shared: Weak<Shared>) -> Self {
        Reloader {
            path,
            running: Mutex::new(running),
            shared,
        }
    }

    /// Re-read the file and apply it. Logs one line either way.
    pub fn reload(&self) -> Result<ReloadReport, String> {
        let result = self.try_reload();
        match &result {
            Ok(r) => {
                tracing::info!(applied = ?r.applied, needs_restart = ?r.needs_restart, "configuration reloaded")
            }
            Err(e) => {
                tracing::error!(error = %e, "configuration reload refused; the running configuration stays")
            }
        }
        result
    }

    fn try_reload(&self) -> Result<ReloadReport, String> {
        let path = self
            .path
            .as_ref()
            .ok_or("pgrelay was not started from a config file; nothing to reload")?;
        let new = Config::load(path).map_err(|e| e.to_string())?;
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let report = plan(&running, &new);
        if !report.applied.is_empty() {
            let mut next = running.clone();
            next.users = new.users.clone();
            next.auth = new.auth;
            next.routing.consistency = new.routing.consistency;
            next.routing.replica_reads = new.routing.replica_reads;
            next.routing.read_your_writes_timeout = new.routing.read_your_writes_timeout;
            next.failover.write_wait = new.failover.write_wait;
            if let Some(shared) = self.shared.upgrade() {
                shared.live.store(std::sync::Arc::new(live(&next)));
            }
            *running = next;
        }
        Ok(report)
    }
}

/// The session-facing settings of a config.
pub fn live(c: &Config) -> Live {
    let users = c
        .users
        .iter()
        .map(|u| {
            let auth = UserAuth {
                password: u.password.expose().to_string(),
                method: c.auth_for(u),
                scram: protocol::auth::ScramVerifier::new(u.password.expose()),
                consistency: u.consistency,
            };
            (u.name.clone(), auth)
        })
        .collect();
    Live {
        users,
        replica_reads: c.routing.replica_reads,
        consistency: c.routing.consistency,
        ryw_timeout: c.routing.read_your_writes_timeout,
        write_wait: c.failover.write_wait,
    }
}

/// Which changed keys apply now and which wait for a restart.
pub fn plan(old: &Config, new: &Config) -> ReloadReport {
    let mut changed = changed_keys(old, new);
    // Secrets serialize masked: compare them directly.
    for (key, differs) in [
        ("users", old.users != new.users),
        (
            "control.password",
            old.control.password != new.control.password,
        ),
        ("admin.token", old.admin.token != new.admin.token),
    ] {
        if differs && !changed.iter().any(|k| k == key) {
            changed.push(key.to_string());
        }
    }
    changed.sort();
    let (applied, needs_restart) = changed
        .into_iter()
        .partition(|k| LIVE.contains(&k.as_str()));
    ReloadReport {
        applied,
        needs_restart,
    }
}

/// Dotted keys whose values differ, down to the keys of each section.
fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let (Ok(Value::Object(a)), Ok(Value::Object(b))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return Vec::new();
    };
    let mut keys = Vec::new();
    let names: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for name in names {
        match (a.get(name), b.get(name)) {
            (Some(Value::Object(x)), Some(Value::Object(y))) => {
                let subs: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for sub in subs {
                    if x.get(sub) != y.get(sub) {
                        keys.push(format!("{name}.{sub}"));
                    }
                }
            }
            (x, y) if x != y => keys.push(name.clone()),
            _ => {}
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "nodes: [{name: pg0, host: h}]\nusers: [{name: app, password: secret}]\n";

    fn config(extra: &str) -> Config {
        Config::parse(&format!("{BASE}{extra}"), |_| None).expect("valid config")
    }

    #[test]
    fn changes_are_sorted_into_live_and_restart() {
        let cases: &[(&str, &[&str], &[&str])] = &[
            ("", &[], &[]),
            (
                "routing: {consistency: eventual}\n",
                &["routing.consistency"],
                &[],
            ),
            (
                "routing: {consistency: global, max_replica_lag: 9s}\n",
                &["routing.consistency"],
                &["routing.max_replica_lag"],
            ),
            (
                "failover: {write_wait: 1s}\n",
                &["failover.write_wait"],
                &[],
            ),
            ("failover: {mode: manual}\n", &[], &["failover.mode"]),
            ("listen: 127.0.0.1:7777\n", &[], &["listen"]),
            ("pool: {size: 3}\n", &[], &["pool.size"]),
            ("control: {password: other}\n", &[], &["control.password"]),
            ("admin: {token: t}\n", &[], &["admin.token"]),
            ("auth: md5\n", &["auth"], &[]),
        ];
        let old = config("");
        for (extra, applied, restart) in cases {
            let r = plan(&old, &config(extra));
            assert_eq!(r.applied, *applied, "{extra}");
            assert_eq!(r.needs_restart, *restart, "{extra}");
        }
    }

    #[test]
    fn a_new_password_is_a_change_though_it_prints_masked() {
        let old = config("");
        let new = Config::parse(
            "nodes: [{name: pg0, host: h}]\nusers: [{name: app, password: other}]\n",
            |_| None,
        )
        .unwrap();
        assert_eq!(plan(&old, &new).applied, ["users"]);
        let more = Config::parse(
            "nodes: [{name: pg0, host: h}]\nusers: [{name: app, password: secret}, {name: b, password: x}]\n",
            |_| None,
        )
        .unwrap();
        assert_eq!(plan(&old, &more).applied, ["users"]);
    }

    #[test]
    fn reload_applies_live_keys_and_refuses_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgrelay.yaml");
        std::fs::write(&path, BASE).unwrap();
        let running = Config::load(&path).unwrap();
        let r = Reloader::new(Some(path.clone()), running, Weak::new());
        assert_eq!(r.reload(), Ok(ReloadReport::default()));
        std::fs::write(
            &path,
            format!("{BASE}routing: {{consistency: eventual}}\nlisten: 127.0.0.1:7\n"),
        )
        .unwrap();
        let report = r.reload().unwrap();
        assert_eq!(report.applied, ["routing.consistency"]);
        assert_eq!(report.needs_restart, ["listen"]);
        // Applied once: only the restart key is still pending.
        let again = r.reload().unwrap();
        assert!(again.applied.is_empty());
        assert_eq!(again.needs_restart, ["listen"]);
        std::fs::write(&path, format!("{BASE}pool: {{size: lots}}\n")).unwrap();
        let err = r.reload().unwrap_err();
        assert!(err.contains("pool.size") && err.contains("line 3"), "{err}");
        assert_eq!(
            r.running.lock().unwrap().routing.consistency,
            router::Consistency::Eventual,
            "the running config stays"
        );
        let none = Reloader::new(None, Config::default(), Weak::new());
        assert!(none
            .reload()
            .unwrap_err()
            .contains("not started from a config file"));
    }
}
