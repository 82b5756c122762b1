//! Client side: the proxy logging in to a backend as the client's user, with the
//! password from its configuration. Sans-I/O: feed each Authentication request, send
//! back whatever message it returns.

use super::AuthError;
use crate::backend::AuthRequest;
use bytes::{Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;

enum State {
    Start,
    /// Sent SASLInitialResponse; waiting for SASLContinue.
    ScramFirst(ScramSha256),
    /// Sent SASLResponse; waiting for SASLFinal.
    ScramFinal(ScramSha256),
    /// SASLFinal verified; only AuthenticationOk may follow.
    ScramVerified,
    Done,
}

pub struct BackendAuth {
    user: String,
    password: Option<String>,
    state: State,
}

impl BackendAuth {
    pub fn new(user: &str, password: Option<&str>) -> Self {
        BackendAuth {
            user: user.to_owned(),
            password: password.map(str::to_owned),
            state: State::Start,
        }
    }

    /// True once AuthenticationOk was accepted.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Handles one Authentication request. `Ok(None)` means nothing to send (after
    /// AuthenticationOk or a verified SASLFinal).
    pub fn respond(&mut self, req: AuthRequest<'_>) -> Result<Option<Bytes>, AuthError> {
        let state = std::mem::replace(&mut self.state, State::Done);
        let mut buf = BytesMut::new();
        match (state, req) {
            (State::Start | State::ScramVerified, AuthRequest::Ok) => {
                self.state = State::Done;
                Ok(None)
            }
            // A server that skips SASLFinal never proved it knows the password: refuse,
            // or an impostor backend could accept any login.
            (State::ScramFirst(_) | State::ScramFinal(_), AuthRequest::Ok) => {
                Err(AuthError::ServerVerification(
                    "server sent AuthenticationOk before completing SCRAM".into(),
                ))
            }
            (State::Start, AuthRequest::CleartextPassword) => {
                let pw = self.password()?;
                frontend::password_message(pw.as_bytes(), &mut buf)
                    .map_err(|_| AuthError::Malformed("password contains a NUL byte"))?;
                Ok(Some(buf.freeze()))
            }
            (State::Start, AuthRequest::Md5Password { salt }) => {
                let pw = self.password()?;
                let hash = postgres_protocol::authentication::md5_hash(
                    self.user.as_bytes(),
                    pw.as_bytes(),
                    salt,
                );
                frontend::password_message(hash.as_bytes(), &mut buf)
                    .map_err(|_| AuthError::Malformed("password message"))?;
                Ok(Some(buf.freeze()))
            }
            (State::Start, AuthRequest::Sasl { mechanisms }) => {
                if !mechanisms.contains(&SCRAM_SHA_256) {
                    return Err(AuthError::Unsupported(format!(
                        "SASL mechanisms {mechanisms:?}"
                    )));
                }
                let pw = self.password()?;
                // No TLS to backends yet, so no channel binding ("n,,").
                let scram = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), &mut buf)
                    .map_err(|_| AuthError::Malformed("SASL initial response"))?;
                self.state = State::ScramFirst(scram);
                Ok(Some(buf.freeze()))
            }
            (State::ScramFirst(mut scram), AuthRequest::SaslContinue(data)) => {
                scram
                    .update(data)
                    .map_err(|e| AuthError::ServerVerification(e.to_string()))?;
                // `update` succeeded, so the client is in its Finish state and
                // `message()` (which panics only after completion) is safe.
                frontend::sasl_response(scram.message(), &mut buf)
                    .map_err(|_| AuthError::Malformed("SASL response"))?;
                self.state = State::ScramFinal(scram);
                Ok(Some(buf.freeze()))
            }
            (State::ScramFinal(mut scram), AuthRequest::SaslFinal(data)) => {
                scram
                    .finish(data)
                    .map_err(|e| AuthError::ServerVerification(e.to_string()))?;
                self.state = State::ScramVerified;
                Ok(None)
            }
            (_, AuthRequest::Other(code)) => Err(AuthError::Unsupported(format!(
                "authentication request {code}"
            ))),
            (_, req) => Err(AuthError::OutOfOrder(match req {
                AuthRequest::Ok => "AuthenticationOk",
                AuthRequest::CleartextPassword => "AuthenticationCleartextPassword",
                AuthRequest::Md5Password { .. } => "AuthenticationMD5Password",
                AuthRequest::Sasl { .. } => "AuthenticationSASL",
                AuthRequest::SaslContinue(_) => "AuthenticationSASLContinue",
                AuthRequest::SaslFinal(_) => "AuthenticationSASLFinal",
                AuthRequest::Other(_) => "Authentication",
            })),
        }
    }

    fn password(&self) -> Result<&str, AuthError> {
        self.password.as_deref().ok_or(AuthError::PasswordRequired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{md5_matches, ScramServer, ScramVerifier};
    use crate::frontend::{password_message, sasl_initial_response, sasl_response};
    use crate::Frame;

    fn frame(b: Bytes) -> Frame {
        let mut m = BytesMut::from(&b[..]);
        crate::parse_frame(&mut m, usize::MAX).unwrap().unwrap()
    }

    #[test]
    fn cleartext_and_md5() {
        let mut a = BackendAuth::new("u", Some("pw"));
        let f = frame(a.respond(AuthRequest::CleartextPassword).unwrap().unwrap());
        assert_eq!(password_message(&f), Ok(&b"pw"[..]));
        assert_eq!(
            a.respond(AuthRequest::Ok),
            Err(AuthError::OutOfOrder("AuthenticationOk"))
        );

        let mut a = BackendAuth::new("u", Some("pw"));
        let f = frame(
            a.respond(AuthRequest::Md5Password { salt: *b"salt" })
                .unwrap()
                .unwrap(),
        );
        assert!(md5_matches(
            "u",
            "pw",
            *b"salt",
            password_message(&f).unwrap()
        ));

        let mut a = BackendAuth::new("u", Some("pw"));
        assert_eq!(a.respond(AuthRequest::Ok), Ok(None));
        assert!(a.is_done());
    }

    #[test]
    fn errors() {
        let cases: Vec<(Option<&str>, AuthRequest<'_>, AuthError)> = vec![
            (
                None,
                AuthRequest::CleartextPassword,
                AuthError::PasswordRequired,
            ),
            (
                None,
                AuthRequest::Md5Password { salt: [0; 4] },
                AuthError::PasswordRequired,
            ),
            (
                None,
                AuthRequest::Sasl {
                    mechanisms: vec![SCRAM_SHA_256],
                },
                AuthError::PasswordRequired,
            ),
            (
                Some("p"),
                AuthRequest::Sasl {
                    mechanisms: vec!["SCRAM-SHA-256-PLUS"],
                },
                AuthError::Unsupported("SASL mechanisms [\"SCRAM-SHA-256-PLUS\"]".into()),
            ),
            (
                Some("p"),
                AuthRequest::Other(7),
                AuthError::Unsupported("authentication request 7".into()),
            ),
            (
                Some("p"),
                AuthRequest::SaslContinue(b"r=x"),
                AuthError::OutOfOrder("AuthenticationSASLContinue"),
            ),
            (
                Some("p\0"),
                AuthRequest::CleartextPassword,
                AuthError::Malformed("password contains a NUL byte"),
            ),
        ];
        for (pw, req, err) in cases {
            assert_eq!(BackendAuth::new("u", pw).respond(req), Err(err));
        }
    }

    /// Our client against our server: the two halves of the proxy agree.
    fn scram_login(client_pw: &str) -> Result<(), AuthError> {
        let v = ScramVerifier::with_salt("secret", b"salt", 4096);
        let mut server = ScramServer::new(&v);
        let mut a = BackendAuth::new("u", Some(client_pw));
        let f = frame(
            a.respond(AuthRequest::Sasl {
                mechanisms: vec!["SCRAM-SHA-256-PLUS", SCRAM_SHA_256],
            })?
            .unwrap(),
        );
        let init = sasl_initial_response(&f).unwrap();
        assert_eq!(init.mechanism, SCRAM_SHA_256);
        let first = server.client_first(init.data.unwrap())?;
        let f = frame(a.respond(AuthRequest::SaslContinue(&first))?.unwrap());
        let fin = server.client_final(sasl_response(&f).unwrap())?;
        assert_eq!(a.respond(AuthRequest::SaslFinal(&fin))?, None);
        assert_eq!(a.respond(AuthRequest::Ok)?, None);
        assert!(a.is_done());
        Ok(())
    }

    #[test]
    fn scram_against_our_server() {
        assert_eq!(scram_login("secret"), Ok(()));
        assert_eq!(scram_login("wrong"), Err(AuthError::WrongPassword));
    }

    #[test]
    fn scram_rejects_skipped_or_forged_final() {
        let mut a = BackendAuth::new("u", Some("pw"));
        a.respond(AuthRequest::Sasl {
            mechanisms: vec![SCRAM_SHA_256],
        })
        .unwrap();
        assert!(matches!(
            a.respond(AuthRequest::Ok),
            Err(AuthError::ServerVerification(_))
        ));

        let v = ScramVerifier::with_salt("pw", b"salt", 16);
        let mut server = ScramServer::new(&v);
        let mut a = BackendAuth::new("u", Some("pw"));
        let f = frame(
            a.respond(AuthRequest::Sasl {
                mechanisms: vec![SCRAM_SHA_256],
            })
            .unwrap()
            .unwrap(),
        );
        let first = server
            .client_first(sasl_initial_response(&f).unwrap().data.unwrap())
            .unwrap();
        a.respond(AuthRequest::SaslContinue(&first)).unwrap();
        let forged = b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        assert!(matches!(
            a.respond(AuthRequest::SaslFinal(forged)),
            Err(AuthError::ServerVerification(_))
        ));
        // After a failure the exchange is over; nothing panics.
        assert!(a.respond(AuthRequest::SaslFinal(forged)).is_err());
        assert!(a.respond(AuthRequest::SaslContinue(b"x")).is_err());
    }
}
