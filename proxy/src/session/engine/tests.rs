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
/// PostgreSQL does; an Execute or a simple query returns one row, `lsn`.
struct Script {
    lsn: &'static str,
    /// Wait this long before answering the connection's nth query (simple, or the
    /// Execute of a prepared one): (n, pause).
    pause_before_query: Option<(usize, Duration)>,
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
    if let Some((n, pause)) = script.pause_before_query {
        if n == query {
            tokio::time::sleep(pause).await;
        }
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
    loop {
        while let Some(f) = protocol::parse_frame(&mut buf, 1 << 20).ok()? {
            match f.tag() {
                b'P' => out.extend_from_slice(&be::parse_complete()),
                b'B' => out.extend_from_slice(&be::bind_complete()),
                b'C' => out.extend_from_slice(&be::close_complete()),
                b'E' => {
                    queries += 1;
                    pause(&script, queries).await;
                    out.extend_from_slice(&cons::show_rows(script.lsn));
                }
                b'S' => {}
                b'Q' => {
                    queries += 1;
                    pause(&script, queries).await;
                    out.extend_from_slice(&cons::show_description("lsn"));
                    out.extend_from_slice(&cons::show_rows(script.lsn));
                }
                b'X' => return Some(()),
                _ => return None,
            }
            if matches!(f.tag(), b'S' | b'Q') {
                // As PostgreSQL: ReadyForQuery goes out at once.
                out.extend_from_slice(&be::ready_for_query(TxStatus::Idle));
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
        spread: Default::default(),
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

/// Read the client's messages up to its `n`-th ReadyForQuery; their type bytes.
async fn tags_until_ready(client: &mut tokio::io::DuplexStream, n: usize) -> String {
    let mut buf = BytesMut::new();
    let mut tags = String::new();
    while tags.matches('Z').count() < n {
        match protocol::parse_frame(&mut buf, 1 << 20).expect("frame") {
            Some(f) => tags.push(f.tag() as char),
            None => {
                let read = client.read_buf(&mut buf);
                let got = tokio::time::timeout(Duration::from_secs(10), read).await;
                assert!(got.expect("answers in time").expect("read") > 0, "{tags}");
            }
        }
    }
    tags
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
        pause_before_query: None,
    };
    let replica = Script {
        lsn: "0/500",
        // The check's answer comes late: the SHOW pipelined behind the unit must wait
        // for it, and for the unit re-run on the primary.
        pause_before_query: Some((1, Duration::from_millis(200))),
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
