//! Whole-config tests: defaults, the example file, and a table of broken files with the
//! message an operator would see.

use super::*;
use std::collections::BTreeSet;

fn no_env(_: &str) -> Option<String> {
    None
}

const MINIMAL: &str =
    "nodes: [{name: pg0, host: 127.0.0.1}]\nusers: [{name: app, password: secret}]\n";

#[test]
fn defaults() {
    let c = Config::parse(MINIMAL, no_env).unwrap();
    assert_eq!(c.listen, "127.0.0.1:6432".parse().unwrap());
    assert_eq!(c.admin.listen, "127.0.0.1:9090".parse().unwrap());
    assert_eq!(c.nodes[0].port, 5432);
    assert_eq!(c.control.user, "postgres");
    assert_eq!(c.control.password.expose(), "");
    assert_eq!(c.control.database, "postgres");
    assert_eq!(c.auth, AuthMethod::ScramSha256);
    assert_eq!(
        c.pool,
        PoolConfig {
            size: 20,
            acquire_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
            prepared_statements_limit: 256,
        }
    );
    assert_eq!(c.limits.max_message_size, ByteSize(64 * 1024 * 1024));
    assert_eq!(c.limits.max_clients, 10_000);
    assert_eq!(c.limits.startup_timeout, Duration::from_secs(10));
    assert_eq!(c.health.interval, Duration::from_millis(250));
    assert_eq!(c.health.timeout, Duration::from_secs(1));
    assert!(c.routing.replica_reads);
    assert_eq!(c.routing.max_replica_lag, Some(Duration::from_secs(1)));
    assert_eq!(c.routing.max_replica_lag_bytes, Some(ByteSize(16_000_000)));
    assert_eq!(c.routing.when_no_replica, WhenNoReplica::Primary);
    assert_eq!(c.routing.lag_bounds(), router::LagBounds::default());
}

#[test]
fn lag_bounds_can_be_switched_off_and_round_trip() {
    let cases: &[(&str, Option<Duration>, Option<usize>)] = &[
        (
            "{max_replica_lag: off, max_replica_lag_bytes: off}",
            None,
            None,
        ),
        (
            "{max_replica_lag: 0s, max_replica_lag_bytes: 0}",
            None,
            None,
        ),
        (
            "{max_replica_lag: 250ms, max_replica_lag_bytes: 1MiB}",
            Some(Duration::from_millis(250)),
            Some(1 << 20),
        ),
        (
            "{max_replica_lag_bytes: 4096}",
            Some(Duration::from_secs(1)),
            Some(4096),
        ),
    ];
    for (routing, time, bytes) in cases {
        let yaml = format!("{MINIMAL}routing: {routing}\n");
        let c = Config::parse(&yaml, no_env).unwrap_or_else(|e| panic!("{routing}: {e}"));
        assert_eq!(c.routing.max_replica_lag, *time, "{routing}");
        assert_eq!(
            c.routing.max_replica_lag_bytes.map(|b| b.0),
            *bytes,
            "{routing}"
        );
        // What is written back reads back the same.
        let again = Config::parse(&serde_saphyr::to_string(&c).unwrap(), no_env).unwrap();
        assert_eq!(again.routing, c.routing);
    }
    let c = Config::parse(
        &format!("{MINIMAL}routing: {{when_no_replica: error}}\n"),
        no_env,
    )
    .unwrap();
    assert_eq!(
        router::NoReplica::from(c.routing.when_no_replica),
        router::NoReplica::Error
    );
    for bad in [
        "{max_replica_lag: 1}",
        "{max_replica_lag: soon}",
        "{max_replica_lag_bytes: lots}",
        "{when_no_replica: fail}",
    ] {
        let yaml = format!("{MINIMAL}routing: {bad}\n");
        assert!(Config::parse(&yaml, no_env).is_err(), "{bad} should fail");
    }
}

#[test]
fn auth_per_user_falls_back_to_global() {
    let yaml = "auth: md5\nnodes: [{name: a, host: h}]\nusers:\n  - {name: app, password: x}\n  - {name: t, password: '', auth: trust}\n";
    let c = Config::parse(yaml, no_env).unwrap();
    let cases = [("app", AuthMethod::Md5), ("t", AuthMethod::Trust)];
    for (name, want) in cases {
        let user = c.user(name).unwrap();
        assert_eq!(c.auth_for(user), want, "{name}");
    }
    assert!(c.user("nobody").is_none());
    for (text, m) in [
        ("trust", AuthMethod::Trust),
        ("md5", AuthMethod::Md5),
        ("scram-sha-256", AuthMethod::ScramSha256),
    ] {
        assert_eq!(m.to_string(), text);
        assert_eq!(text.parse::<AuthMethod>(), Ok(m));
    }
}

#[test]
fn debug_never_shows_passwords() {
    let yaml = "nodes: [{name: a, host: h}]\nusers: [{name: app, password: hunter2}]\ncontrol: {password: sup3rs3cret}\n";
    let c = Config::parse(yaml, no_env).unwrap();
    assert_eq!(c.users[0].password.expose(), "hunter2");
    for shown in [
        format!("{c:?}"),
        format!("{c:#?}"),
        serde_saphyr::to_string(&c).unwrap(),
    ] {
        assert!(
            !shown.contains("hunter2") && !shown.contains("sup3rs3cret"),
            "{shown}"
        );
    }
}

#[test]
fn empty_file_is_fine_when_env_provides_the_lists() {
    let env = |k: &str| match k {
        "PGRELAY_NODES" => Some("pg0=127.0.0.1:5432".to_string()),
        "PGRELAY_USERS" => Some("app:secret".to_string()),
        _ => None,
    };
    for yaml in ["", "# nothing\n", "---\n"] {
        let c = Config::parse(yaml, env).unwrap_or_else(|e| panic!("{yaml:?}: {e}"));
        assert_eq!(c.nodes.len(), 1);
    }
    assert!(Config::parse("", no_env)
        .unwrap_err()
        .to_string()
        .contains("nodes: at least one node"));
}

/// Every error must say where: file, line, key.
#[test]
fn bad_configs() {
    let n = "nodes: [{name: pg0, host: h}]\n";
    let u = "users: [{name: app, password: x}]\n";
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{u}nodes:\n  - name: pg0\n    host: h\n  - name: pg1\n    host: h\n    port: 99999\n"),
            "config.yaml: line 7: nodes[1].port: ",
        ),
        (format!("{u}nodes:\n  - name: pg0\n    hots: h\n"), "config.yaml: line 4: nodes[0].hots: unknown field `hots`"),
        (format!("{n}{u}routing:\n  replica_read: true\n"), "line 4: routing.replica_read: unknown field"),
        (format!("{n}{u}listen: localhost\n"), "line 3: listen: "),
        (format!("{n}{u}pool:\n  size: many\n"), "line 4: pool.size: "),
        (format!("{n}{u}pool:\n  acquire_timeout: 5\n"), "line 4: pool.acquire_timeout: duration 5 has no unit"),
        (format!("{n}{u}health: {{interval: soon}}\n"), "line 3: health.interval: invalid duration"),
        (format!("{n}{u}limits:\n  max_message_size: 12 parsecs\n"), "line 4: limits.max_message_size: invalid size"),
        (format!("{n}{u}auth: password\n"), "line 3: auth: "),
        (format!("{u}nodes:\n  - host: h\n"), "line 3: nodes[0]: missing field `name`"),
        (format!("{n}users:\n  - name: app\n"), "line 3: users[0]: missing field `password`"),
        (format!("{n}{u}pool: [1]\n"), "line 3: pool: "),
        (format!("{n}{u}listen: 127.0.0.1:1\nlisten: 127.0.0.1:2\n"), "line 4: listen: duplicate"),
        (format!("{n}{u}nodes: [\n"), "config.yaml: line "),
        // Semantic validation: key path and line.
        (format!("{u}nodes: []\n"), "config.yaml: line 2: nodes: at least one node is required"),
        (format!("{n}users: []\n"), "line 2: users: at least one user is required"),
        (n.to_string(), "config.yaml: users: at least one user is required"),
        (
            format!("{u}nodes:\n  - {{name: pg0, host: h}}\n  - {{name: pg0, host: i}}\n"),
            "line 4: nodes[1].name: duplicate node name \"pg0\"",
        ),
        (format!("{u}nodes:\n  - name: 'pg 0'\n    host: h\n"), "line 3: nodes[0].name: invalid node name"),
        (format!("{u}nodes:\n  - {{name: a, host: h}}\n  - {{name: b, host: h}}\n"), "line 4: nodes[1]: same address h:5432"),
        (format!("{u}nodes: [{{name: a, host: ''}}]\n"), "nodes[0].host: must not be empty"),
        (format!("{u}nodes: [{{name: a, host: h, port: 0}}]\n"), "nodes[0].port: must not be 0"),
        (format!("{n}users:\n  - {{name: a, password: x}}\n  - {{name: a, password: y}}\n"), "line 4: users[1].name: duplicate user"),
        (format!("{n}{u}listen: 127.0.0.1:1\nadmin:\n  listen: 127.0.0.1:1\n"), "line 5: admin.listen: same address as listen"),
        (format!("{n}{u}admin:\n  listen: 127.0.0.1:6432\n"), "line 4: admin.listen: same address"),
        (format!("{n}{u}admin:\n  listen: 0.0.0.0:9090\n"), "line 4: admin.listen: 0.0.0.0:9090 is not a loopback address and admin.token is not set"),
        (format!("{n}{u}admin:\n  listen: 0.0.0.0:9090\n  token: ''\n"), "admin.token is not set"),
        (format!("{n}{u}pool:\n  size: 0\n"), "line 4: pool.size: must be at least 1"),
        // A defaulted key that fails is located at its nearest written parent.
        (format!("{n}{u}pool:\n  idle_timeout: 0s\n"), "line 4: pool.idle_timeout: must be greater than 0"),
        (format!("{n}{u}limits: {{max_clients: 0}}\n"), "line 3: limits.max_clients: must be at least 1"),
        (format!("{n}{u}limits: {{max_message_size: 100}}\n"), "limits.max_message_size: 100 is too small"),
        (format!("{n}{u}control: {{user: ''}}\n"), "line 3: control.user: must not be empty"),
        (format!("{n}{u}health: {{timeout: 0ms}}\n"), "line 3: health.timeout: must be greater than 0"),
    ];
    for (yaml, want) in &cases {
        let err = match Config::parse_named(yaml, "config.yaml", no_env) {
            Ok(c) => panic!("expected {want:?} for\n{yaml}\ngot {c:?}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(want), "want {want:?} in {err:?} for\n{yaml}");
        assert!(!err.contains('\n'), "one-line error expected: {err:?}");
    }
}

#[test]
fn load_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgrelay.yaml");
    std::fs::write(
        &path,
        "nodes: [{name: a, host: h}]\nusers: [{name: app, password: x}]\npool: {size: 0}\n",
    )
    .unwrap();
    let err = Config::load(&path).unwrap_err().to_string();
    assert!(err.contains("pgrelay.yaml: line 3: pool.size:"), "{err}");
    let missing = Config::load(&dir.path().join("nope.yaml"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("nope.yaml: cannot read"), "{missing}");
}

/// Key paths with list indices normalised: `nodes[1].port` → `nodes[].port`.
fn key_set(yaml: &str) -> BTreeSet<String> {
    yaml_index::YamlIndex::build(yaml)
        .paths()
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut out = String::new();
            let mut in_index = false;
            for ch in p.chars() {
                match ch {
                    '[' => {
                        in_index = true;
                        out.push('[');
                    }
                    ']' => {
                        in_index = false;
                        out.push(']');
                    }
                    _ if in_index => {}
                    _ => out.push(ch),
                }
            }
            out
        })
        .collect()
}

#[test]
fn example_parses_and_documents_every_key() {
    let example = Config::parse(Config::example(), no_env).unwrap();
    assert_eq!(example.nodes.len(), 3);
    assert_eq!(example.users[0].password.expose(), "secret");
    // Serialising a config lists every field it has; each must be written in the example.
    let all_keys = key_set(&serde_saphyr::to_string(&example).unwrap());
    let documented = key_set(Config::example());
    let missing: Vec<_> = all_keys.difference(&documented).collect();
    assert!(missing.is_empty(), "config.example.yaml lacks {missing:?}");
    assert!(all_keys.len() > 25, "{all_keys:?}");
    // The one optional key (skipped when unset) is shown commented out.
    assert!(
        Config::example().contains("# auth: md5"),
        "per-user auth not documented"
    );
}

#[test]
fn an_admin_token_opens_other_addresses_and_never_prints() {
    let yaml = "nodes: [{name: pg0, host: h}]\nusers: [{name: app, password: secret}]\nadmin:\n  listen: 0.0.0.0:9090\n  token: t0ps3cret\n  open_reads: true\n";
    let c = Config::parse_named(yaml, "config.yaml", no_env).expect("valid");
    assert_eq!(
        c.admin.token.as_ref().map(|t| t.expose()),
        Some("t0ps3cret")
    );
    assert!(c.admin.open_reads);
    assert!(!format!("{c:?}").contains("t0ps3cret"));
}

#[test]
fn session_threads_leave_a_core_by_default() {
    let limits = |worker_threads| LimitsConfig {
        worker_threads,
        ..LimitsConfig::default()
    };
    for (configured, cores, want) in [
        (0, 1, 1),
        (0, 2, 1),
        (0, 4, 3),
        (0, 16, 15),
        (0, 0, 1),
        (2, 1, 2),
        (8, 2, 8),
    ] {
        assert_eq!(
            limits(configured).threads(cores),
            want,
            "worker_threads {configured} on {cores} cores"
        );
    }
}
