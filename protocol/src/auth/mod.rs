//! Authentication exchanges, without I/O: the proxy authenticates clients itself
//! (server side) and then authenticates to backends as the same user (client side).

pub mod client;
pub mod md5;
pub mod scram;

pub use client::BackendAuth;
pub use md5::{md5_matches, md5_matches_stored, md5_password_hash};
pub use scram::{ScramServer, ScramVerifier, SCRAM_SHA_256};

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum AuthError {
    /// Answer with SQLSTATE 28P01 and the usual "password authentication failed".
    #[error("password authentication failed")]
    WrongPassword,
    #[error("malformed authentication message: {0}")]
    Malformed(&'static str),
    #[error("authentication message out of order: {0}")]
    OutOfOrder(&'static str),
    #[error("unsupported authentication method: {0}")]
    Unsupported(String),
    #[error("the server requested a password but none is configured for this user")]
    PasswordRequired,
    /// The backend could not prove it knows the password (SCRAM server signature).
    #[error("server authentication failed: {0}")]
    ServerVerification(String),
}

/// Compares secrets without an early exit so timing does not reveal how many leading
/// bytes matched. Lengths are public (fixed-size digests), so a length mismatch may
/// return early.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}
