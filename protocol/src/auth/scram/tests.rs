use super::*;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

/// Runs a whole exchange with postgres-protocol's client (what tokio-postgres uses).
fn exchange(server_pw: &str, client_pw: &str, cb: ChannelBinding) -> Result<(), String> {
    let v = ScramVerifier::with_salt(server_pw, b"0123456789abcdef", 4096);
    let mut server = ScramServer::new(&v);
    let mut client = ScramSha256::new(client_pw.as_bytes(), cb);
    let first = server
        .client_first(client.message())
        .map_err(|e| e.to_string())?;
    client.update(&first).map_err(|e| e.to_string())?;
    let fin = server
        .client_final(client.message())
        .map_err(|e| e.to_string())?;
    client
        .finish(&fin)
        .map_err(|e| format!("client rejected server: {e}"))
}

#[test]
fn real_client_exchange() {
    assert_eq!(
        exchange("secret", "secret", ChannelBinding::unsupported()),
        Ok(())
    );
    assert_eq!(
        exchange("secret", "secret", ChannelBinding::unrequested()),
        Ok(())
    );
    assert_eq!(
        exchange("pässwörd", "pässwörd", ChannelBinding::unsupported()),
        Ok(())
    );
    // SASLprep maps non-ASCII spaces to ASCII space, on both sides.
    assert_eq!(
        exchange("a\u{00A0}b", "a b", ChannelBinding::unsupported()),
        Ok(())
    );
    assert_eq!(
        exchange("secret", "Secret", ChannelBinding::unsupported()),
        Err(AuthError::WrongPassword.to_string())
    );
    assert_eq!(
        exchange(
            "secret",
            "secret",
            ChannelBinding::tls_server_end_point(vec![1, 2])
        ),
        Err(AuthError::Malformed("channel binding is not supported without TLS").to_string())
    );
}

#[test]
fn random_verifier_works_and_salts_differ() {
    let (a, b) = (ScramVerifier::new("pw"), ScramVerifier::new("pw"));
    assert_ne!(a, b);
    let mut server = ScramServer::new(&a);
    let mut client = ScramSha256::new(b"pw", ChannelBinding::unsupported());
    let first = server.client_first(client.message()).unwrap();
    client.update(&first).unwrap();
    let fin = server.client_final(client.message()).unwrap();
    client.finish(&fin).unwrap();
}

#[test]
fn verifier_text_roundtrip() {
    let v = ScramVerifier::with_salt("pw", b"salt", 4096);
    let s = v.to_string();
    assert!(s.starts_with("SCRAM-SHA-256$4096:c2FsdA==$"), "{s}");
    assert_eq!(ScramVerifier::parse(&s), Ok(v));
    for bad in [
        "",
        "md5abc",
        "SCRAM-SHA-256$x:c2FsdA==$a:b",
        "SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA",
    ] {
        assert!(ScramVerifier::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn malformed_client_first() {
    let v = ScramVerifier::with_salt("pw", b"s", 1);
    let cases: Vec<(&[u8], AuthError)> = vec![
        (b"", AuthError::Malformed("invalid channel binding flag")),
        (
            b"\xff",
            AuthError::Malformed("client-first-message is not UTF-8"),
        ),
        (
            b"p=tls-server-end-point,,n=,r=abc",
            AuthError::Malformed("channel binding is not supported without TLS"),
        ),
        (
            b"x,,n=,r=abc",
            AuthError::Malformed("invalid channel binding flag"),
        ),
        (
            b"n,a=admin,n=,r=abc",
            AuthError::Malformed("authorization identity is not supported"),
        ),
        (b"n,xx", AuthError::Malformed("invalid gs2 header")),
        (
            b"n,,m=ext,n=,r=abc",
            AuthError::Malformed("unsupported mandatory SCRAM extension"),
        ),
        (
            b"n,,r=abc",
            AuthError::Malformed("expected user name attribute"),
        ),
        (b"n,,n=", AuthError::Malformed("expected nonce attribute")),
        (
            b"n,,n=,x=abc",
            AuthError::Malformed("expected nonce attribute"),
        ),
        (b"n,,n=,r=", AuthError::Malformed("invalid client nonce")),
        (b"n,,n=,r=a b", AuthError::Malformed("invalid client nonce")),
    ];
    for (msg, err) in cases {
        assert_eq!(ScramServer::new(&v).client_first(msg), Err(err), "{msg:?}");
    }
    let mut s = ScramServer::new(&v);
    assert_eq!(
        s.client_final(b"c=biws"),
        Err(AuthError::OutOfOrder("client-final-message"))
    );
    let ok = String::from_utf8(
        ScramServer::new(&v)
            .client_first(b"n,,n=u,r=abc,ext=1")
            .unwrap(),
    )
    .unwrap();
    assert!(
        ok.starts_with("r=abc") && ok.ends_with(",s=cw==,i=1"),
        "{ok}"
    );
}

#[test]
fn malformed_client_final() {
    let v = ScramVerifier::with_salt("pw", b"s", 1);
    let start = || {
        let mut s = ScramServer::new(&v);
        let first = String::from_utf8(s.client_first(b"y,,n=,r=abc").unwrap()).unwrap();
        let nonce = first
            .split(',')
            .next()
            .unwrap()
            .trim_start_matches("r=")
            .to_string();
        (s, nonce)
    };
    let (_, nonce) = start();
    let proof = STANDARD.encode([0u8; 32]);
    let cases: Vec<(String, AuthError)> = vec![
        (
            format!("c=eSws,r={nonce}"),
            AuthError::Malformed("missing proof"),
        ),
        (
            format!("r={nonce},p={proof}"),
            AuthError::Malformed("expected channel binding attribute"),
        ),
        (
            format!("c=biws,r={nonce},p={proof}"),
            AuthError::Malformed("channel binding does not match client-first-message"),
        ),
        (
            format!("c=eSws,p={proof}"),
            AuthError::Malformed("expected nonce attribute"),
        ),
        (
            format!("c=eSws,r=abc,p={proof}"),
            AuthError::Malformed("nonce does not match"),
        ),
        (
            format!("c=eSws,r={nonce},p=AAAA"),
            AuthError::Malformed("invalid proof"),
        ),
        (
            format!("c=eSws,r={nonce},p=!!"),
            AuthError::Malformed("invalid proof"),
        ),
        (
            format!("c=eSws,r={nonce},p={proof}"),
            AuthError::WrongPassword,
        ),
    ];
    for (msg, err) in cases {
        let (mut s, n) = start();
        let msg = msg.replace(&nonce, &n);
        assert_eq!(s.client_final(msg.as_bytes()), Err(err), "{msg}");
        // Whatever happened, the exchange is over.
        assert_eq!(
            s.client_final(msg.as_bytes()),
            Err(AuthError::OutOfOrder("client-final-message"))
        );
    }
}
