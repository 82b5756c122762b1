//! Bad input gets a clear error with a real SQLSTATE, only that client is affected, and
//! pgrelay keeps serving everyone else.

use cluster::ClusterConfig;
use tests_integration::raw::{message, startup_packet, Raw};
use tests_integration::{start_with, trust};

async fn expect_error(raw: &mut Raw, codes: &[&str]) -> String {
    let m = raw
        .recv()
        .await
        .expect("an ErrorResponse before the connection closes");
    assert_eq!(
        m.tag, b'E',
        "expected ErrorResponse, got {:?}",
        m.tag as char
    );
    let code = m.sqlstate().expect("SQLSTATE");
    assert!(
        codes.contains(&code.as_str()),
        "SQLSTATE {code}: {:?}",
        m.field(b'M')
    );
    m.field(b'M').unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_refused_without_hurting_others() {
    let env = start_with(
        ClusterConfig {
            replicas: 1,
            ..Default::default()
        },
        |c| {
            trust(c);
            c.limits.max_message_size = pgrelay::config::ByteSize(1 << 20);
        },
    )
    .await;
    let port = env.port();
    // A healthy client in the middle of a transaction while others misbehave.
    let good = env.connect().await;
    good.batch_execute("CREATE TABLE t (id int); BEGIN; INSERT INTO t VALUES (1)")
        .await
        .expect("good");

    let startup_cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("length below minimum", vec![0, 0, 0, 2], &["08P01"]),
        (
            "huge length",
            vec![0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0],
            &["08P01"],
        ),
        (
            "unknown protocol",
            [&[0u8, 0, 0, 8][..], &[0, 9, 0, 0]].concat(),
            &["08P01", "0A000"],
        ),
        (
            "protocol 2",
            [&[0u8, 0, 0, 8][..], &[0, 2, 0, 0]].concat(),
            &["08P01", "0A000"],
        ),
        (
            "no user",
            startup_packet(&[("database", "app")]),
            &["08P01", "28000"],
        ),
        (
            "unterminated params",
            {
                let mut p = startup_packet(&[("user", "app")]);
                p.truncate(p.len() - 2);
                let len = (p.len() as u32).to_be_bytes();
                p[..4].copy_from_slice(&len);
                p
            },
            &["08P01"],
        ),
        (
            "unknown user",
            startup_packet(&[("user", "mallory"), ("database", "app")]),
            &["28P01", "28000"],
        ),
        (
            "replication",
            startup_packet(&[("user", "app"), ("replication", "true")]),
            &["0A000"],
        ),
    ];
    for (what, bytes, codes) in startup_cases {
        let mut raw = Raw::connect(port).await;
        raw.send(&bytes).await;
        let msg = expect_error(&mut raw, codes).await;
        assert!(raw.closed().await, "{what}: connection closed");
        eprintln!("{what}: {msg}");
    }

    let session_cases: Vec<(&str, Vec<u8>)> = vec![
        ("length below 4", vec![b'Q', 0, 0, 0, 3]),
        (
            "over max_message_size",
            [&[b'Q'][..], &(2u32 << 20).to_be_bytes()].concat(),
        ),
        ("unknown message type", message(b'z', b"")),
        (
            "parse with garbage body",
            [message(b'P', b"\xff"), message(b'S', b"")].concat(),
        ),
        ("query without terminator", message(b'Q', b"SELECT 1")),
    ];
    for (what, bytes) in session_cases {
        let mut raw = Raw::login(port, "app", "app").await;
        raw.send(&bytes).await;
        let msg = expect_error(&mut raw, &["08P01"]).await;
        assert!(raw.closed().await, "{what}: connection closed");
        eprintln!("{what}: {msg}");
    }

    // Garbage in the startup position after SSLRequest is answered 'N'.
    let mut raw = Raw::connect(port).await;
    raw.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await;
    let mut n = [0u8; 1];
    tokio::io::AsyncReadExt::read_exact(&mut raw.stream, &mut n)
        .await
        .expect("SSL answer");
    assert_eq!(&n, b"N");

    good.batch_execute("INSERT INTO t VALUES (2); COMMIT")
        .await
        .expect("good client unaffected");
    env.wait_for_replay().await;
    let n: i64 = good
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 2, "both rows of the good client's transaction committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_and_unknown_users_get_28p01() {
    let env = tests_integration::start(ClusterConfig {
        replicas: 1,
        ..Default::default()
    })
    .await;
    for conninfo in [
        format!(
            "host=127.0.0.1 port={} user=app password=wrong dbname=app",
            env.port()
        ),
        format!(
            "host=127.0.0.1 port={} user=nobody password=secret dbname=app",
            env.port()
        ),
    ] {
        let err = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
            .await
            .err()
            .expect("refused");
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD),
            "{conninfo}: {err}"
        );
    }
    // A database that does not exist: PostgreSQL's own error reaches the client.
    let conninfo = format!(
        "host=127.0.0.1 port={} user=app password=secret dbname=nope",
        env.port()
    );
    let err = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .err()
        .expect("refused");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME),
        "{err}"
    );
    // md5 works too.
    drop(env);
    let env = start_with(
        ClusterConfig {
            replicas: 1,
            ..Default::default()
        },
        |c| {
            c.auth = pgrelay::config::AuthMethod::Md5;
        },
    )
    .await;
    let c = env.connect().await;
    assert_eq!(
        c.query_one("SELECT 1", &[])
            .await
            .expect("md5 login")
            .get::<_, i32>(0),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_call_goes_to_the_primary() {
    let env = start_with(
        ClusterConfig {
            replicas: 1,
            ..Default::default()
        },
        trust,
    )
    .await;
    let c = env.connect().await;
    let oid: u32 = c
        .query_one("SELECT 'inet_server_port'::regproc::oid", &[])
        .await
        .expect("oid")
        .get(0);
    let mut raw = Raw::login(env.port(), "app", "app").await;
    // FunctionCall: oid, 0 arg formats, 0 args, result format text (0).
    let mut body = oid.to_be_bytes().to_vec();
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    raw.send(&message(b'F', &body)).await;
    let msgs = raw.until_ready().await;
    let v = msgs
        .iter()
        .find(|m| m.tag == b'V')
        .expect("FunctionCallResponse");
    let port: u16 = String::from_utf8_lossy(&v.body[4..]).parse().expect("port");
    assert_eq!(port, env.primary_port());
}
