//! Prepared statements that survive moving between backends.
//!
//! A client's statement lives in the session, not on a backend: each one gets a
//! proxy-wide name derived from its SQL and parameter types, so it can be prepared lazily
//! on whichever backend the session leases next, and two clients that reuse the same name
//! for different SQL can never collide on a shared backend. Clients that prepare the same
//! SQL share one server-side statement.

use super::tx_effect::TxEffect;
use bytes::Bytes;
use router::Class;
use sha2::{Digest, Sha256};
/// Looked up for every Bind and Describe: foldhash (randomly seeded) over SipHash.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One statement as the session knows it.
#[derive(Debug)]
pub struct Statement {
    /// Process-unique identity, used to tell which unnamed statement a backend holds.
    pub id: u64,
    /// The name on backends: `pgr_<hash>`, or empty for the unnamed statement.
    pub backend_name: Box<str>,
    /// The Parse message to send to a backend that lacks the statement (already renamed).
    pub parse: Bytes,
    pub class: Class,
    /// What it does to the transaction block (see `tx_effect`).
    pub tx_effect: TxEffect,
}

impl Statement {
    pub fn new(
        backend_name: Box<str>,
        parse: Bytes,
        class: Class,
        tx_effect: TxEffect,
    ) -> Arc<Self> {
        Arc::new(Statement {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            backend_name,
            parse,
            class,
            tx_effect,
        })
    }

    pub fn is_unnamed(&self) -> bool {
        self.backend_name.is_empty()
    }
}

/// The proxy-wide backend name of a statement. 128 bits of SHA-256 over the SQL and the
/// raw parameter-type list: a client cannot make two different statements share a name.
pub fn backend_name(sql: &str, param_types: &[u8]) -> Box<str> {
    let mut h = Sha256::new();
    h.update((sql.len() as u64).to_be_bytes());
    h.update(sql.as_bytes());
    h.update(param_types);
    let digest = h.finalize();
    let mut name = String::with_capacity(36);
    name.push_str("pgr_");
    for b in &digest[..16] {
        name.push_str(&format!("{b:02x}"));
    }
    name.into_boxed_str()
}

/// The session's statements: named ones by client name, plus the unnamed one.
#[derive(Default)]
pub struct Statements {
    named: HashMap<Box<str>, Arc<Statement>>,
    unnamed: Option<Arc<Statement>>,
}

impl Statements {
    pub fn get(&self, client_name: &str) -> Option<&Arc<Statement>> {
        if client_name.is_empty() {
            self.unnamed.as_ref()
        } else {
            self.named.get(client_name)
        }
    }

    pub fn insert(&mut self, client_name: &str, stmt: Arc<Statement>) {
        if client_name.is_empty() {
            self.unnamed = Some(stmt);
        } else {
            self.named.insert(client_name.into(), stmt);
        }
    }

    pub fn remove(&mut self, client_name: &str) {
        if client_name.is_empty() {
            self.unnamed = None;
        } else {
            self.named.remove(client_name);
        }
    }

    /// The Parse that made statement `id` never ran (an earlier error in its batch made
    /// the server skip it, or it failed itself): forget it, unless the name has been
    /// reused since.
    pub fn forget_if(&mut self, client_name: &str, id: u64) {
        if self.get(client_name).is_some_and(|s| s.id == id) {
            self.remove(client_name);
        }
    }

    /// A simple Query destroys the unnamed statement, as in PostgreSQL.
    pub fn forget_unnamed(&mut self) {
        self.unnamed = None;
    }

    pub fn len(&self) -> usize {
        self.named.len() + usize::from(self.unnamed.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_depend_on_sql_and_types_only() {
        let a = backend_name("SELECT $1", &[0, 0, 0, 23]);
        assert_eq!(a, backend_name("SELECT $1", &[0, 0, 0, 23]));
        assert_ne!(a, backend_name("SELECT $1", &[0, 0, 0, 25]));
        assert_ne!(a, backend_name("SELECT $2", &[0, 0, 0, 23]));
        assert!(a.starts_with("pgr_") && a.len() == 36, "{a}");
        // Length-prefixing keeps (sql, types) pairs from running into each other.
        assert_ne!(backend_name("ab", b"c"), backend_name("a", b"bc"));
    }

    #[test]
    fn named_and_unnamed_slots_are_separate() {
        let mut s = Statements::default();
        let named = Statement::new(
            backend_name("SELECT 1", b""),
            Bytes::new(),
            Class::Read,
            TxEffect::Neither,
        );
        let unnamed = Statement::new("".into(), Bytes::new(), Class::Write, TxEffect::Neither);
        s.insert("s1", named.clone());
        s.insert("", unnamed.clone());
        assert_eq!(s.len(), 2);
        assert_eq!(s.get("s1").map(|x| x.id), Some(named.id));
        assert_eq!(s.get("").map(|x| x.id), Some(unnamed.id));
        assert!(s.get("").is_some_and(|x| x.is_unnamed()));
        s.forget_unnamed();
        assert!(s.get("").is_none());
        s.remove("s1");
        assert!(s.is_empty());
    }
}
