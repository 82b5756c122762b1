use std::time::{Duration, Instant};

use super::*;

/// Long enough for any healthy loopback answer on a loaded CI machine.
const ANSWER: Duration = Duration::from_secs(10);
/// How long a black-holed exchange is given to (wrongly) produce an answer.
const SILENCE: Duration = Duration::from_millis(300);

/// An echo server counting the connections that reach it.
async fn echo_server() -> (u16, Arc<AtomicU64>) {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (port, accepted)
}

async fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).await.unwrap();
    let mut got = vec![0; msg.len()];
    tokio::time::timeout(ANSWER, s.read_exact(&mut got))
        .await
        .expect("echo in time")
        .expect("echo");
    got
}

/// True once the peer closed (EOF or reset) within [`ANSWER`].
async fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(ANSWER, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn cut_closes_and_swallows_restore_forwards() {
    let (target, accepted) = echo_server().await;
    let relay = Relay::start(target);
    assert_eq!(relay.target(), target);
    let mut a = TcpStream::connect(("127.0.0.1", relay.port()))
        .await
        .unwrap();
    assert_eq!(roundtrip(&mut a, b"ping").await, b"ping");
    assert_eq!(
        relay.stats(),
        RelayStats {
            connections: 1,
            swallowed: 0,
            bytes_to_target: 4,
            bytes_from_target: 4,
        }
    );

    relay.cut();
    assert!(relay.is_cut());
    assert!(closed(&mut a).await, "relayed connection survived the cut");
    let mut b = TcpStream::connect(("127.0.0.1", relay.port()))
        .await
        .unwrap();
    b.write_all(b"lost").await.unwrap();
    let mut buf = [0u8; 4];
    assert!(
        tokio::time::timeout(SILENCE, b.read(&mut buf))
            .await
            .is_err(),
        "a swallowed connection answered"
    );
    let stats = relay.stats();
    assert_eq!((stats.connections, stats.swallowed), (1, 1));
    assert_eq!(stats.bytes_to_target, 4);
    assert_eq!(accepted.load(Ordering::Relaxed), 1);

    relay.restore();
    assert!(
        closed(&mut b).await,
        "swallowed connection kept after restore"
    );
    let mut c = TcpStream::connect(("127.0.0.1", relay.port()))
        .await
        .unwrap();
    assert_eq!(roundtrip(&mut c, b"again").await, b"again");
    assert_eq!(relay.connections(), 2);
    assert_eq!(accepted.load(Ordering::Relaxed), 2);

    let port = relay.port();
    drop(relay);
    assert!(closed(&mut c).await, "connection outlived the relay");
    let deadline = Instant::now() + ANSWER;
    while TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
        assert!(Instant::now() < deadline, "dropped relay still listens");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn half_close_reaches_the_target() {
    let (target, _) = echo_server().await;
    let relay = Relay::start(target);
    let mut s = TcpStream::connect(("127.0.0.1", relay.port()))
        .await
        .unwrap();
    s.write_all(b"bye").await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(ANSWER, s.read_to_end(&mut got))
        .await
        .expect("echo server closes after our EOF")
        .unwrap();
    assert_eq!(got, b"bye");
}

/// The relay in front of a real PostgreSQL node, as failover tests use it.
#[tokio::test]
async fn partitions_a_postgres_node() {
    let cluster = tokio::task::spawn_blocking(|| {
        cluster::Cluster::start(cluster::ClusterConfig {
            replicas: 0,
            ..Default::default()
        })
    })
    .await
    .unwrap()
    .unwrap();
    let relay = Relay::start(cluster.port(0));
    let conninfo = format!(
        "host=127.0.0.1 port={} user={} password={} dbname={}",
        relay.port(),
        cluster::APP_USER,
        cluster::APP_PASSWORD,
        cluster::APP_DB
    );
    let client = crate::connect(&conninfo).await;
    let port: i32 = client
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(port, i32::from(cluster.port(0)));
    assert_eq!(relay.connections(), 1);

    relay.cut();
    let failed = tokio::time::timeout(ANSWER, client.simple_query("SELECT 1")).await;
    assert!(
        matches!(failed, Ok(Err(_))),
        "query through a cut relay: {failed:?}"
    );
    let before = relay.stats();
    let attempt = tokio::time::timeout(
        SILENCE,
        tokio_postgres::connect(&conninfo, tokio_postgres::NoTls),
    )
    .await;
    assert!(attempt.is_err(), "connect through a cut relay finished");
    let after = relay.stats();
    assert_eq!(after.swallowed, before.swallowed + 1);
    assert_eq!(after.connections, 1);
    assert_eq!(after.bytes_to_target, before.bytes_to_target);

    relay.restore();
    let client = crate::connect(&conninfo).await;
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    assert_eq!(relay.connections(), 2);
}
