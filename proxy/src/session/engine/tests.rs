//! The engine against scripted backends that answer like PostgreSQL, flushing at every
//! ReadyForQuery as it does, so a test can choose how the answers are split up.

use super::*;
use crate::pool::{PoolSettings, Pools};
use crate::session::{consistency as cons, NodeInfo};
use router::{Epoch, Lsn, NodeState, NodeStatus, Role, Topology};
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tokio::net::TcpListener;

/// A node's scripted server. Every connection answers Parse, Bind, Close and Sync as
/// PostgreSQL does; an Execute or a simple query returns one row, `lsn` (or, when
/// `lsn` is empty, `0/N000` for the connection's Nth query, so later answers are
/// higher). Simple queries starting with BEGIN or COMMIT open and close a transaction,
/// which ReadyForQuery reports.
struct Script {
    lsn: &'static str,
    /// Wait this long before answering the connection's nth query (simple, or the
    /// Execute of a prepared one): (n, pause).
    pauses: Vec<(usize, Duration)>,
}

async fn fake_node(script: Script) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let script = Arc::new(script);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(fake_conn(stream, script.clone()));
        }
    });
    addr
}

async fn pause(script: &Script, query: usize) {
    for (n, pause) in &script.pauses {
        if *n == query {
            tokio::time::sleep(*pause).await;
        }
    }
}

fn lsn_of(script: &Script, query: usize) -> String {
    match script.lsn {
        "" => format!("0/{:X}", query * 0x1000),
        lsn => lsn.to_string(),
    }
}

async fn fake_conn(mut stream: tokio::net::TcpStream, script: Arc<Script>) -> Option<()> {
    use protocol::backend as be;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.ok()?;
    let mut startup = vec![0u8; (u32::from_be_bytes(len) as usize).checked_sub(4)?];
    stream.read_exact(&mut startup).await.ok()?;
    let hello = [
        be::auth_ok(),
        be::build_backend_key_data(1, &[0, 0, 0, 1]),
        be::ready_for_query(TxStatus::Idle),
    ]
    .concat();
    stream.write_all(&hello).await.ok()?;
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    let mut queries = 0;
    let mut tx = TxStatus::Idle;
    loop {
        while let Some(f) = protocol::parse_frame(&mut buf, 1 << 20).ok()? {
            match f.tag() {
                b'P' => out.extend_from_slice(&be::parse_complete()),
                b'B' => out.extend_from_slice(&be::bind_complete()),
                b'C' => out.extend_from_slice(&be::close_complete()),
                b'E' => {
                    queries += 1;
                    pause(&script, queries).await;
                    out.extend_from_slice(&cons::show_rows(&lsn_of(&script, queries)));
                }
                b'S' => {}
                b'Q' => {
                    queries += 1;
                    pause(&script, queries).await;
                    let sql = protocol::frontend::query(&f).ok()?;
                    if sql.starts_with("BEGIN") {
                        tx = TxStatus::InTransaction;
                    } else if sql.starts_with("COMMIT") {
                        tx = TxStatus::Idle;
                    }
                    out.extend_from_slice(&cons::show_description("lsn"));
                    out.extend_from_slice(&cons::show_rows(&lsn_of(&script, queries)));
                }
                b'X' => return Some(()),
                _ => return None,
            }
            if matches!(f.tag(), b'S' | b'Q') {
                // As PostgreSQL: ReadyForQuery goes out at once.
                out.extend_from_slice(&be::ready_for_query(tx));
                stream.write_all(&out).await.ok()?;
                out.clear();
            }
        }
        if stream.read_buf(&mut buf).await.ok()? == 0 {
            return Some(());
        }
    }
}

fn node(id: usize, role: Role, addr: &str, replay: Option<Lsn>) -> NodeStatus {
    let mut n = NodeStatus::unknown(NodeId(id), format!("pg{id}"), addr);
    (n.role, n.up, n.state, n.wal.replay) = (role, true, NodeState::Up, replay);
    n
}

/// A session engine in front of a primary and one replica (replayed up to `0/500` as
/// far as routing knows), and the client end of its connection.
async fn session(primary: Script, replica: Script) -> tokio::io::DuplexStream {
    let addrs = [fake_node(primary).await, fake_node(replica).await];
    let topology = Topology {
        version: 1,
        epoch: Epoch(1),
        nodes: vec![
            node(0, Role::Primary, &addrs[0], None),
            node(1, Role::Replica, &addrs[1], Some(Lsn(0x500))),
        ],
        ..Topology::default()
    };
    let settings = PoolSettings {
        size: 1,
        acquire_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(60),
    };
    let cancels = Arc::new(crate::cancel::CancelRegistry::default());
    let ctx = Arc::new(Shared {
        nodes: (0..2)
            .map(|i| NodeInfo {
                name: format!("pg{i}"),
                addr: addrs[i].clone(),
            })
            .collect(),
        live: arc_swap::ArcSwap::from_pointee(crate::session::Live {
            users: Default::default(),
            replica_reads: true,
            consistency: router::Consistency::Session,
            // The replica never catches up: a stale read soon goes to the primary.
            ryw_timeout: Duration::from_millis(20),
            write_wait: Duration::from_secs(5),
        }),
        topology: health::shared(topology),
        pools: Pools::new(settings, Duration::from_secs(5), 1 << 24, 2),
        cancels: cancels.clone(),
        max_message: 1 << 20,
        backend_max_message: 1 << 24,
        startup_timeout: Duration::from_secs(5),
        cancel_timeout: Duration::from_secs(5),
        pinned_sessions: Default::default(),
        pins_total: Default::default(),
        prepared_limit: 100,
        read_only_retries: Default::default(),
        ryw: Default::default(),
        observed_replay: (0..2).map(|_| AtomicU64::new(0)).collect(),
        sessions: Default::default(),
        registry: Default::default(),
        stats: crate::stats::Stats::new(2),
    });
    let id = ClientIdentity {
        user: "app".into(),
        database: "app".into(),
        password: None,
        params: Vec::new(),
        consistency: None,
    };
    let (client, server) = tokio::io::duplex(1 << 16);
    let listed = ctx.registry.add(crate::session::registry::NewSession {
        user: id.user.clone(),
        database: id.database.clone(),
        application_name: None,
        client_addr: None,
        level: router::Consistency::Session,
    });
    let engine = Engine::new(server, ctx, id, cancels.register(), BytesMut::new(), listed);
    tokio::spawn(engine.run());
    client
}

/// Read the client's messages up to its `n`-th ReadyForQuery.
async fn until_ready(client: &mut tokio::io::DuplexStream, n: usize) -> Vec<Frame> {
    let mut buf = BytesMut::new();
    let mut frames: Vec<Frame> = Vec::new();
    while frames.iter().filter(|f| f.tag() == b'Z').count() < n {
        match protocol::parse_frame(&mut buf, 1 << 20).expect("frame") {
            Some(f) => frames.push(f),
            None => {
                let read = client.read_buf(&mut buf);
                let got = tokio::time::timeout(Duration::from_secs(10), read).await;
                assert!(
                    got.expect("answers in time").expect("read") > 0,
                    "{frames:?}"
                );
            }
        }
    }
    frames
}

/// The type bytes of the client's messages up to its `n`-th ReadyForQuery.
async fn tags_until_ready(client: &mut tokio::io::DuplexStream, n: usize) -> String {
    let frames = until_ready(client, n).await;
    frames.iter().map(|f| f.tag() as char).collect()
}

/// tokio-postgres closes a dropped statement with Close+Sync and does not wait for the
/// answer before its next query. That read unit is checked on a replica behind the
/// session's floor and re-run on the primary. A `SHOW pgrelay.*` pipelined behind it
/// must still be answered after it, even when the replica's answers arrive in two
/// reads.
#[tokio::test]
async fn pgrelay_command_waits_for_a_unit_being_retried() {
    let primary = Script {
        lsn: "0/2000",
        pauses: Vec::new(),
    };
    let replica = Script {
        lsn: "0/500",
        // The check's answer comes late: the SHOW pipelined behind the unit must wait
        // for it, and for the unit re-run on the primary.
        pauses: vec![(1, Duration::from_millis(200))],
    };
    let mut client = session(primary, replica).await;
    let mut batch = BytesMut::new();
    for part in [
        protocol::frontend::build_query("SET pgrelay.min_read_lsn = '0/1000'").expect("query"),
        protocol::frontend::build_close_statement("s1").expect("close"),
        protocol::frontend::build_sync(),
        protocol::frontend::build_query("SHOW pgrelay.last_write_lsn").expect("query"),
    ] {
        batch.extend_from_slice(&part);
    }
    client.write_all(&batch).await.expect("write");
    // SET: C Z. Close+Sync: 3 Z. SHOW: T D C Z.
    assert_eq!(tags_until_ready(&mut client, 3).await, "CZ3ZTDCZ");
}

/// A client sends BEGIN and an INSERT in one write, so pgrelay takes the INSERT for an
/// autocommit write and asks the primary's position with it: a guess, whose answer
/// shows the transaction still open, so it does not count. Here that answer comes late,
/// after the client has sent COMMIT, which asks again. The token the client reads after
/// the COMMIT must wait for the COMMIT's own position (query 5), however late, even
/// though the answer to the guess (query 3) arrives in between.
#[tokio::test]
async fn the_token_after_a_commit_waits_for_the_commits_own_position() {
    let primary = Script {
        lsn: "", // the nth query answers 0/n000
        pauses: vec![
            (3, Duration::from_millis(150)),
            (5, Duration::from_millis(150)),
        ],
    };
    let replica = Script {
        lsn: "0/500",
        pauses: Vec::new(),
    };
    let mut client = session(primary, replica).await;
    let q = |sql| protocol::frontend::build_query(sql).expect("query");
    let both = [q("BEGIN"), q("INSERT INTO t VALUES (1)")].concat();
    client.write_all(&both).await.expect("write");
    assert_eq!(tags_until_ready(&mut client, 2).await, "TDCZTDCZ");
    client.write_all(&q("COMMIT")).await.expect("write");
    assert_eq!(tags_until_ready(&mut client, 1).await, "TDCZ");
    client
        .write_all(&q("SHOW pgrelay.last_write_lsn"))
        .await
        .expect("write");
    let answer = until_ready(&mut client, 1).await;
    let row = answer.iter().find(|f| f.tag() == b'D').expect("a row");
    let token = protocol::backend::data_row_text(row).expect("row");
    assert_eq!(
        token,
        [Some("0/5000")],
        "the token is not the COMMIT's position"
    );
}
