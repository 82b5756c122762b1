//! Every endpoint through `oneshot`: answers, refusals and the access rules. The
//! failover controller is stood in for by a responder on its inbox (the controller's
//! own decisions are tested in `health`).

use super::*;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use health::failover::{Command, FailoverHandle, Refusal};
use http_body_util::BodyExt;
use router::{Epoch, Lag, Lsn, NodeId, NodeState, NodeStatus, Role, Topology, WalBytes};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use tower::ServiceExt;

fn topo(primary_up: bool) -> Topology {
    Topology {
        version: 3,
        epoch: Epoch(1),
        nodes: vec![
            NodeStatus {
                role: Role::Primary,
                up: primary_up,
                state: if primary_up {
                    NodeState::Up
                } else {
                    NodeState::Down
                },
                timeline: Some(1),
                ..NodeStatus::unknown(NodeId(0), "pg0", "127.0.0.1:5432")
            },
            NodeStatus {
                role: Role::Replica,
                up: true,
                state: NodeState::Lagging,
                timeline: Some(1),
                wal: router::WalPositions {
                    current: None,
                    receive: Some(Lsn(0x300_0000)),
                    replay: Some(Lsn(0x200_0000)),
                },
                wal_receiver: Some("streaming".into()),
                lag: Some(Lag {
                    bytes: WalBytes(0x100_0000),
                    time: std::time::Duration::from_millis(1500),
                }),
                ..NodeStatus::unknown(NodeId(1), "pg1", "127.0.0.1:5433")
            },
            NodeStatus {
                role: Role::Replica,
                up: true,
                state: NodeState::Up,
                ..NodeStatus::unknown(NodeId(2), "pg2", "127.0.0.1:5434")
            },
        ],
        ..Topology::default()
    }
}

#[derive(Default)]
struct FakeProxy {
    in_use: AtomicUsize,
    reloads: Mutex<Vec<Result<ReloadReport, String>>>,
}

impl ProxyView for FakeProxy {
    fn metrics(&self) -> String {
        "pgrelay_up 1\n".into()
    }
    fn sessions(&self) -> Vec<SessionView> {
        vec![SessionView {
            id: 7,
            user: "app".into(),
            database: "db".into(),
            application_name: Some("psql".into()),
            client_addr: Some("127.0.0.1:40000".into()),
            connected_seconds: 1.5,
            state: "idle in transaction",
            consistency: "session".into(),
            node: Some("pg0".into()),
            pinned: Some("LISTEN".into()),
        }]
    }
    fn pool(&self, node: NodeId) -> PoolUse {
        PoolUse {
            size: 10,
            pools: 1,
            in_use: if node.0 == 1 {
                self.in_use.load(Ordering::SeqCst)
            } else {
                0
            },
            idle: 2,
            waiting: 0,
        }
    }
    fn reload(&self) -> Result<ReloadReport, String> {
        self.reloads
            .lock()
            .unwrap()
            .pop()
            .unwrap_or(Ok(ReloadReport::default()))
    }
}

struct Setup {
    state: AdminState,
    proxy: Arc<FakeProxy>,
    /// Commands the stand-in controller received.
    seen: Arc<Mutex<Vec<Command>>>,
}

/// A stand-in controller: refuses unknown nodes and a lagging target as the real one
/// does, and accepts the rest.
fn setup(access: Access) -> Setup {
    let proxy = Arc::new(FakeProxy::default());
    let (handle, mut inbox) = FailoverHandle::new();
    inbox.update_status(|s| s.epoch = Epoch(1));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Some((cmd, reply)) = inbox.next().await {
            log.lock().unwrap().push(cmd.clone());
            let answer = match &cmd {
                Command::Switchover { to } if to == "pg1" => Err(Refusal::TooFarBehind {
                    name: to.clone(),
                    behind: 1 << 24,
                    max: 1 << 20,
                }),
                Command::Switchover { to } | Command::Drain { node: to }
                    if !["pg0", "pg1", "pg2"].contains(&to.as_str()) =>
                {
                    Err(Refusal::UnknownNode(to.clone()))
                }
                Command::Switchover { to } => Ok(format!("{to} is the primary (epoch 2)")),
                Command::Drain { node } if node == "pg0" => Err(Refusal::NotEligible(
                    node.clone(),
                    "it is the primary".into(),
                )),
                other => Ok(format!("done: {other:?}")),
            };
            let _ = reply.send(answer);
        }
    });
    Setup {
        state: AdminState {
            topology: health::shared(topo(true)),
            proxy: Some(proxy.clone()),
            failover: Some(handle),
            access,
        },
        proxy,
        seen,
    }
}

const LOCAL: &str = "127.0.0.1:50000";
const FAR: &str = "10.1.2.3:50000";

struct Call<'a> {
    method: &'a str,
    path: &'a str,
    body: Option<&'a str>,
    token: Option<&'a str>,
    peer: &'a str,
}

fn get(path: &str) -> Call<'_> {
    Call {
        method: "GET",
        path,
        body: None,
        token: None,
        peer: LOCAL,
    }
}

fn post<'a>(path: &'a str, body: Option<&'a str>) -> Call<'a> {
    Call {
        method: "POST",
        path,
        body,
        token: None,
        peer: LOCAL,
    }
}

async fn send(state: &AdminState, call: Call<'_>) -> (StatusCode, String, serde_json::Value) {
    let peer: std::net::SocketAddr = call.peer.parse().unwrap();
    let mut req = Request::builder()
        .method(call.method)
        .uri(call.path)
        .extension(ConnectInfo(peer));
    if let Some(t) = call.token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = match call.body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    };
    let resp = router(state.clone()).oneshot(req.unwrap()).await.unwrap();
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    if !ct.starts_with("text/plain") {
        assert!(
            ct.starts_with("application/json"),
            "{} answered {ct:?}",
            call.path
        );
    }
    (status, String::from_utf8_lossy(&bytes).into(), json)
}

#[tokio::test]
async fn health_is_live_and_ready_needs_a_routable_primary() {
    let s = setup(Access::default());
    let (status, _, body) = send(&s.state, get("/health")).await;
    assert_eq!((status, &body["status"]), (StatusCode::OK, &"ok".into()));
    assert_eq!(body["primary"], "pg0");
    let (status, _, body) = send(&s.state, get("/ready")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["ready"], true);
    // Primary down: live, not ready.
    s.state.topology.store(Arc::new(topo(false)));
    let (status, _, body) = send(&s.state, get("/health")).await;
    assert_eq!(
        (status, &body["primary"]),
        (StatusCode::OK, &serde_json::Value::Null)
    );
    let (status, _, body) = send(&s.state, get("/ready")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["reason"], "no routable primary");
    // Writes held: not ready, and it says why.
    let mut held = topo(true);
    held.writes_held = Some("switchover from pg0 to pg2 in progress".into());
    s.state.topology.store(Arc::new(held));
    let (status, _, body) = send(&s.state, get("/ready")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.contains("switchover from pg0 to pg2"), "{reason}");
}

#[tokio::test]
async fn topology_shows_every_node_with_pool_and_routability() {
    let s = setup(Access::default());
    s.proxy.in_use.store(3, Ordering::SeqCst);
    let (status, _, body) = send(&s.state, get("/topology")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (body["version"].as_u64(), body["epoch"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(body["primary"], "pg0");
    let n = &body["nodes"];
    let cases = [
        (0, "pg0", "primary", "up", true),
        (1, "pg1", "replica", "lagging", false),
        (2, "pg2", "replica", "up", true),
    ];
    for (i, name, role, state, routable) in cases {
        assert_eq!(n[i]["name"], name);
        assert_eq!(n[i]["role"], role, "{name}");
        assert_eq!(n[i]["state"], state, "{name}");
        assert_eq!(n[i]["routable"], routable, "{name}");
        assert_eq!(n[i]["pool"]["size"], 10, "{name}");
    }
    assert_eq!(n[0]["addr"], "127.0.0.1:5432");
    assert_eq!(n[1]["pool"]["in_use"], 3);
    assert_eq!(n[1]["timeline"], 1);
    assert_eq!(n[1]["wal"]["replay"], "0/2000000");
    assert_eq!(n[1]["lag"]["bytes"], 0x100_0000);
    assert_eq!(n[1]["lag"]["seconds"], 1.5);
    assert_eq!(n[0]["lag"], serde_json::Value::Null);
    assert_eq!(body["failover"]["epoch"], 1);
    assert_eq!(body["failover"]["mode"], "automatic");
    // A new snapshot is seen at once.
    let mut next = topo(true);
    next.version = 4;
    next.nodes[2].state = NodeState::Drained;
    s.state.topology.store(Arc::new(next));
    let (_, _, body) = send(&s.state, get("/topology")).await;
    assert_eq!(body["version"], 4);
    assert_eq!(body["nodes"][2]["state"], "drained");
    assert_eq!(body["nodes"][2]["routable"], false);
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_sessions_are_listed() {
    let s = setup(Access::default());
    let (status, text, _) = send(&s.state, get("/metrics")).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "pgrelay_up 1\n"));
    let (status, _, body) = send(&s.state, get("/sessions")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["count"], 1);
    let one = &body["sessions"][0];
    for (key, want) in [
        ("user", "app"),
        ("database", "db"),
        ("application_name", "psql"),
        ("state", "idle in transaction"),
        ("consistency", "session"),
        ("node", "pg0"),
        ("pinned", "LISTEN"),
    ] {
        assert_eq!(one[key], want, "{key}");
    }
    // Without the proxy's side: 503 in the JSON error shape.
    let mut bare = s.state.clone();
    bare.proxy = None;
    for path in ["/metrics", "/sessions"] {
        let (status, _, body) = send(&bare, get(path)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(body["reason"], "unavailable");
    }
}

#[tokio::test]
async fn failover_actions_answer_with_what_they_did_or_why_not() {
    let s = setup(Access::default());
    let cases: &[(&str, Option<&str>, u16, &str)] = &[
        (
            "/switchover",
            Some(r#"{"to":"pg2"}"#),
            200,
            "pg2 is the primary",
        ),
        (
            "/switchover",
            Some(r#"{"to":"pg1"}"#),
            409,
            "too_far_behind",
        ),
        ("/switchover", Some(r#"{"to":"pg9"}"#), 404, "unknown_node"),
        ("/switchover", Some(r#"{"too":"pg2"}"#), 400, "bad_request"),
        ("/switchover", Some("{"), 400, "bad_request"),
        ("/switchover", None, 415, "bad_request"),
        ("/failover", None, 200, "done: Failover"),
        (
            "/failover",
            Some(r#"{"to":"pg2","force":true}"#),
            200,
            "force: true",
        ),
        ("/failover/pause", None, 200, "done: Pause"),
        ("/failover/resume", None, 200, "done: Resume"),
    ];
    for (path, body, status, want) in cases {
        let (got, text, json) = send(&s.state, post(path, *body)).await;
        assert_eq!(got.as_u16(), *status, "{path} {body:?}: {text}");
        if *status == 200 {
            assert_eq!(json["ok"], true, "{text}");
            assert!(json["message"].as_str().unwrap().contains(want), "{text}");
        } else {
            assert_eq!(json["ok"], false, "{text}");
            assert_eq!(json["reason"], *want, "{text}");
            assert!(!json["message"].as_str().unwrap().is_empty());
        }
    }
    let (_, text, _) = send(&s.state, post("/switchover", Some(r#"{"to":"pg1"}"#))).await;
    assert!(text.contains("max_lag_on_failover"), "says why: {text}");
    // GET on an action, and an unknown path: JSON errors too.
    let (status, _, json) = send(&s.state, get("/switchover")).await;
    assert_eq!(
        (status.as_u16(), &json["reason"]),
        (405, &"method_not_allowed".into())
    );
    let (status, _, json) = send(&s.state, get("/nope")).await;
    assert_eq!(
        (status.as_u16(), &json["reason"]),
        (404, &"not_found".into())
    );
    // Without a failover task: 503.
    let mut bare = s.state.clone();
    bare.failover = None;
    let (status, _, _) = send(&bare, post("/failover/pause", None)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(start_paused = true)]
async fn drain_waits_for_leases_and_enable_undoes_it() {
    let s = setup(Access::default());
    s.proxy.in_use.store(2, Ordering::SeqCst);
    let proxy = s.proxy.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        proxy.in_use.store(0, Ordering::SeqCst);
    });
    let (status, text, json) = send(&s.state, post("/nodes/pg1/drain", None)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(json["leases_in_use"], 0);
    let waited = json["waited_seconds"].as_f64().unwrap();
    assert!((2.0..3.0).contains(&waited), "{waited}");
    // Bounded: a lease that stays is reported, not waited on forever.
    s.proxy.in_use.store(1, Ordering::SeqCst);
    let body = r#"{"timeout_seconds": 0.5}"#;
    let (status, text, json) = send(&s.state, post("/nodes/pg1/drain", Some(body))).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(json["leases_in_use"], 1);
    assert!(
        json["message"].as_str().unwrap().contains("still held"),
        "{text}"
    );
    let cases: &[(&str, Option<&str>, u16, &str)] = &[
        ("/nodes/pg0/drain", None, 409, "not_eligible"),
        ("/nodes/pg9/drain", None, 404, "unknown_node"),
        ("/nodes/pg9/enable", None, 404, "unknown_node"),
        (
            "/nodes/pg1/drain",
            Some(r#"{"timeout_seconds": -1}"#),
            400,
            "bad_request",
        ),
    ];
    for (path, body, status, reason) in cases {
        let (got, text, json) = send(&s.state, post(path, *body)).await;
        assert_eq!(got.as_u16(), *status, "{path}: {text}");
        assert_eq!(json["reason"], *reason, "{path}");
    }
    let (status, _, _) = send(&s.state, post("/nodes/pg1/enable", None)).await;
    assert_eq!(status, StatusCode::OK);
    let seen = s.seen.lock().unwrap().clone();
    assert!(seen.contains(&Command::Drain { node: "pg1".into() }));
    assert!(seen.contains(&Command::Enable { node: "pg1".into() }));
    assert!(
        !seen.contains(&Command::Enable { node: "pg9".into() }),
        "refused before asking"
    );
}

#[tokio::test]
async fn reload_applies_or_refuses_and_says_which() {
    let s = setup(Access::default());
    s.proxy.reloads.lock().unwrap().extend([
        Err("routing.max_replica_lag: expected a size, found \"lots\" at line 7".to_string()),
        Ok(ReloadReport {
            applied: vec!["users".into(), "routing.consistency".into()],
            needs_restart: vec!["listen".into()],
        }),
    ]);
    let (status, text, json) = send(&s.state, post("/reload", None)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(json["applied"][1], "routing.consistency");
    assert_eq!(json["needs_restart"][0], "listen");
    let (status, text, json) = send(&s.state, post("/reload", None)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
    assert_eq!(json["reason"], "invalid_config");
    assert!(
        text.contains("line 7") && text.contains("old one stays"),
        "{text}"
    );
}

#[tokio::test]
async fn access_rules_for_reads_and_actions() {
    // (access, method, path, token, peer) -> status
    let none = Access::default();
    let token = Access::new(Some("t0k"), false);
    let open = Access::new(Some("t0k"), true);
    type Case<'a> = (&'a Access, &'a str, &'a str, Option<&'a str>, &'a str, u16);
    let cases: &[Case] = &[
        (&none, "POST", "/failover/pause", None, LOCAL, 200),
        (&none, "POST", "/failover/pause", None, FAR, 403),
        (&none, "POST", "/reload", None, FAR, 403),
        (&none, "GET", "/topology", None, FAR, 200),
        (&token, "POST", "/failover/pause", None, LOCAL, 401),
        (&token, "POST", "/failover/pause", Some("bad"), LOCAL, 401),
        (&token, "POST", "/failover/pause", Some("t0k"), FAR, 200),
        (&token, "POST", "/nodes/pg2/drain", Some("t0k"), FAR, 200),
        (&token, "GET", "/topology", None, LOCAL, 401),
        (&token, "GET", "/metrics", None, FAR, 401),
        (&token, "GET", "/sessions", Some("t0k"), FAR, 200),
        (&token, "GET", "/health", None, FAR, 200),
        (&token, "GET", "/ready", None, FAR, 200),
        (&open, "GET", "/metrics", None, FAR, 200),
        (&open, "GET", "/topology", None, FAR, 200),
        (&open, "POST", "/failover/resume", None, LOCAL, 401),
    ];
    for (access, method, path, tok, peer, want) in cases {
        let s = setup((*access).clone());
        let call = Call {
            method,
            path,
            body: None,
            token: *tok,
            peer,
        };
        let (status, text, json) = send(&s.state, call).await;
        assert_eq!(
            status.as_u16(),
            *want,
            "{access:?} {method} {path} {tok:?} {peer}: {text}"
        );
        if *want >= 400 {
            assert_eq!(json["ok"], false);
            assert!(["unauthorized", "forbidden"].contains(&json["reason"].as_str().unwrap()));
        }
        if *want == 401 || *want == 403 {
            assert!(
                s.seen.lock().unwrap().is_empty(),
                "refused actions never run"
            );
        }
    }
}
