//! Server side of SCRAM-SHA-256 (RFC 5802/7677) as PostgreSQL implements it.
//!
//! Without TLS there is no channel binding, so only `SCRAM-SHA-256` is advertised:
//! gs2 flags `n` (client cannot bind) and `y` (client could, but we did not offer it)
//! are accepted; `p=` is rejected. The SCRAM user name is ignored, as PostgreSQL does
//! (the startup packet's `user` is authoritative).
//!
//! Passwords are normalized with SASLprep when that succeeds and used as raw bytes
//! otherwise — exactly PostgreSQL's (and libpq's) rule, so any password that works
//! against PostgreSQL works here.

use super::{ct_eq, AuthError};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// PostgreSQL's default `scram_iterations`.
pub const DEFAULT_ITERATIONS: u32 = 4096;
const SALT_LEN: usize = 16;
/// PostgreSQL's SCRAM_RAW_NONCE_LEN.
const SERVER_NONCE_LEN: usize = 18;

/// The per-user secret: what PostgreSQL stores in pg_authid. Deriving it costs the
/// full PBKDF2 run, so build it once (at config load) and share it; each login then
/// costs only a few HMACs.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl std::fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramVerifier {
    /// Random 16-byte salt, 4096 iterations (PostgreSQL's defaults).
    pub fn new(password: &str) -> Self {
        let salt: [u8; SALT_LEN] = rand::random();
        Self::with_salt(password, &salt, DEFAULT_ITERATIONS)
    }

    pub fn with_salt(password: &str, salt: &[u8], iterations: u32) -> Self {
        let password = normalize(password);
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(&password, salt, iterations.max(1), &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        ScramVerifier {
            iterations: iterations.max(1),
            salt: salt.to_vec(),
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
        }
    }

    /// Parses PostgreSQL's stored form `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`,
    /// so operators can configure verifiers instead of cleartext passwords.
    pub fn parse(s: &str) -> Result<Self, AuthError> {
        let bad = AuthError::Malformed("SCRAM verifier");
        let rest = s.strip_prefix("SCRAM-SHA-256$").ok_or(bad.clone())?;
        let (params, keys) = rest.split_once('$').ok_or(bad.clone())?;
        let (iter, salt) = params.split_once(':').ok_or(bad.clone())?;
        let (stored, server) = keys.split_once(':').ok_or(bad.clone())?;
        let iterations: u32 = iter.parse().map_err(|_| bad.clone())?;
        let key = |k: &str| -> Result<[u8; 32], AuthError> {
            STANDARD
                .decode(k)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or(bad.clone())
        };
        Ok(ScramVerifier {
            iterations: iterations.max(1),
            salt: STANDARD.decode(salt).map_err(|_| bad.clone())?,
            stored_key: key(stored)?,
            server_key: key(server)?,
        })
    }
}

impl std::fmt::Display for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            STANDARD.encode(&self.salt),
            STANDARD.encode(self.stored_key),
            STANDARD.encode(self.server_key)
        )
    }
}

enum State {
    Initial,
    SentFirst {
        /// `client-first-message-bare + "," + server-first-message + ","`.
        auth_prefix: String,
        nonce: String,
        gs2_header: &'static [u8],
    },
    Done,
}

/// One server-side exchange; create one per login attempt.
pub struct ScramServer {
    verifier: ScramVerifier,
    state: State,
}

impl ScramServer {
    pub fn new(verifier: &ScramVerifier) -> Self {
        ScramServer {
            verifier: verifier.clone(),
            state: State::Initial,
        }
    }

    /// Takes the data of SASLInitialResponse, returns the server-first-message to send in
    /// AuthenticationSASLContinue.
    pub fn client_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, AuthError> {
        if !matches!(self.state, State::Initial) {
            return Err(AuthError::OutOfOrder("client-first-message"));
        }
        self.state = State::Done;
        let msg = std::str::from_utf8(msg)
            .map_err(|_| AuthError::Malformed("client-first-message is not UTF-8"))?;
        let (gs2_header, bare) = if let Some(rest) = msg.strip_prefix("n,") {
            (b"n,,".as_slice(), rest)
        } else if let Some(rest) = msg.strip_prefix("y,") {
            (b"y,,".as_slice(), rest)
        } else if msg.starts_with("p=") {
            return Err(AuthError::Malformed(
                "channel binding is not supported without TLS",
            ));
        } else {
            return Err(AuthError::Malformed("invalid channel binding flag"));
        };
        let bare = match bare.strip_prefix(',') {
            Some(b) => b,
            None if bare.starts_with("a=") => {
                return Err(AuthError::Malformed(
                    "authorization identity is not supported",
                ))
            }
            None => return Err(AuthError::Malformed("invalid gs2 header")),
        };
        let mut attrs = bare.split(',');
        match attrs.next() {
            Some(a) if a.starts_with("m=") => {
                return Err(AuthError::Malformed(
                    "unsupported mandatory SCRAM extension",
                ))
            }
            Some(a) if a.starts_with("n=") => {}
            _ => return Err(AuthError::Malformed("expected user name attribute")),
        }
        let client_nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(AuthError::Malformed("expected nonce attribute"))?;
        if client_nonce.is_empty() || !client_nonce.bytes().all(|c| (0x21..=0x7e).contains(&c)) {
            return Err(AuthError::Malformed("invalid client nonce"));
        }
        let server_nonce: [u8; SERVER_NONCE_LEN] = rand::random();
        let nonce = format!("{client_nonce}{}", STANDARD.encode(server_nonce));
        let server_first = format!(
            "r={nonce},s={},i={}",
            STANDARD.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        self.state = State::SentFirst {
            auth_prefix: format!("{bare},{server_first},"),
            nonce,
            gs2_header,
        };
        Ok(server_first.into_bytes())
    }

    /// Takes the SASLResponse data, checks the proof, returns the server-final-message
    /// (`v=...`) to send in AuthenticationSASLFinal before AuthenticationOk.
    pub fn client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, AuthError> {
        let State::SentFirst {
            auth_prefix,
            nonce,
            gs2_header,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(AuthError::OutOfOrder("client-final-message"));
        };
        let msg = std::str::from_utf8(msg)
            .map_err(|_| AuthError::Malformed("client-final-message is not UTF-8"))?;
        // The proof is the last attribute and base64 has no ',', so the last ",p=" splits it.
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(AuthError::Malformed("missing proof"))?;
        let mut attrs = without_proof.split(',');
        let cbind = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(AuthError::Malformed("expected channel binding attribute"))?;
        if STANDARD.decode(cbind).ok().as_deref() != Some(gs2_header) {
            return Err(AuthError::Malformed(
                "channel binding does not match client-first-message",
            ));
        }
        let r = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(AuthError::Malformed("expected nonce attribute"))?;
        if r != nonce {
            return Err(AuthError::Malformed("nonce does not match"));
        }
        let proof: [u8; 32] = STANDARD
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(AuthError::Malformed("invalid proof"))?;

        let auth_message = format!("{auth_prefix}{without_proof}");
        let client_signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let mut client_key = proof;
        for (k, s) in client_key.iter_mut().zip(client_signature) {
            *k ^= s;
        }
        let computed: [u8; 32] = Sha256::digest(client_key).into();
        if !ct_eq(&computed, &self.verifier.stored_key) {
            return Err(AuthError::WrongPassword);
        }
        let server_signature = hmac(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", STANDARD.encode(server_signature)).into_bytes())
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so the error branch is unreachable; fall back to
    // an all-zero tag (which cannot match a real proof) rather than panic.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut m) => {
            m.update(data);
            m.finalize().into_bytes().into()
        }
        Err(_) => [0; 32],
    }
}

fn normalize(password: &str) -> Vec<u8> {
    match stringprep::saslprep(password) {
        Ok(p) => p.into_owned().into_bytes(),
        Err(_) => password.as_bytes().to_vec(),
    }
}

#[cfg(test)]
mod tests;
