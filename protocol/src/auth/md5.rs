//! MD5 password authentication: `"md5" + md5hex(md5hex(password + user) + salt)`.
//! Kept for old clients and servers; SCRAM is preferred.

use super::ct_eq;
use md5::{Digest, Md5};

/// What PostgreSQL stores in pg_authid for an MD5 password: `"md5" + md5hex(password + user)`.
pub fn md5_password_hash(user: &str, password: &str) -> String {
    let mut h = Md5::new();
    h.update(password.as_bytes());
    h.update(user.as_bytes());
    format!("md5{}", hex(&h.finalize()))
}

/// Checks a client's response to AuthenticationMD5Password (the PasswordMessage string,
/// without its NUL) against a known cleartext password.
pub fn md5_matches(user: &str, password: &str, salt: [u8; 4], client_response: &[u8]) -> bool {
    let expected =
        postgres_protocol::authentication::md5_hash(user.as_bytes(), password.as_bytes(), salt);
    ct_eq(expected.as_bytes(), client_response)
}

/// Same check against a stored `md5…` hash (as in pg_authid or a userlist file).
pub fn md5_matches_stored(stored: &str, salt: [u8; 4], client_response: &[u8]) -> bool {
    let Some(inner) = stored.strip_prefix("md5").filter(|h| h.len() == 32) else {
        return false;
    };
    let mut h = Md5::new();
    h.update(inner.as_bytes());
    h.update(salt);
    let expected = format!("md5{}", hex(&h.finalize()));
    ct_eq(expected.as_bytes(), client_response)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector_and_mismatches() {
        // Vector from postgres-protocol's own tests.
        let salt = [0x2a, 0x3d, 0x8f, 0xe0];
        let good = b"md562af4dd09bbb41884907a838a3233294";
        let stored = md5_password_hash("md5_user", "password");
        let cases: Vec<(&str, &str, &[u8], bool)> = vec![
            ("md5_user", "password", good, true),
            ("md5_user", "Password", good, false),
            ("other", "password", good, false),
            (
                "md5_user",
                "password",
                b"md562af4dd09bbb41884907a838a323329",
                false,
            ),
            ("md5_user", "password", b"", false),
        ];
        for (user, pw, resp, want) in cases {
            assert_eq!(md5_matches(user, pw, salt, resp), want, "{user}/{pw}");
        }
        assert!(md5_matches_stored(&stored, salt, good));
        assert!(!md5_matches_stored(&stored, [0; 4], good));
        assert!(!md5_matches_stored("md5short", salt, good));
    }
}
