//! Statement classification: may this SQL text run on a replica, must it run on the
//! primary, or does it leave state on the backend that ties the session to it?
//!
//! The classifier is conservative by construction: only what it can prove read-only is
//! [`Class::Read`]; anything it does not understand is [`Class::Write`]. It runs on every
//! simple query, so it lexes once, lazily, without allocating.

mod fast;
mod functions;
mod lexer;
mod statement;
#[cfg(test)]
mod tests;
mod tokens;

use std::fmt;

use lexer::Lexer;
use statement::{next_statement, Outcome};
use tokens::Tokens;

/// Where a statement may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Provably read-only: may run on a streaming replica.
    Read,
    /// Must run on the primary (anything not provably read-only).
    Write,
    /// Changes session settings (`SET`, `RESET`, `set_config(.., false)`, `DISCARD
    /// ALL`): runs on the primary, after which the proxy reads the session's settings
    /// back so they follow it to every backend it is given. No pin needed.
    Session,
    /// Leaves session state on the backend beyond the transaction, so the session must
    /// stay on one primary backend from now on.
    Pin(PinReason),
}

/// Why a statement pins its session; short and stable, for logs and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PinReason {
    /// SQL-level `PREPARE`.
    Prepare,
    Listen,
    /// Temporary tables, views, sequences or other objects in `pg_temp`.
    TempTable,
    /// Session-level `pg_advisory_lock` and friends.
    AdvisoryLock,
    /// `DECLARE ... WITH HOLD`.
    HoldCursor,
    Load,
    /// Other session state (`setseed`, `dblink_connect`).
    Other,
}

impl PinReason {
    pub fn as_str(self) -> &'static str {
        match self {
            PinReason::Prepare => "prepare",
            PinReason::Listen => "listen",
            PinReason::TempTable => "temp_table",
            PinReason::AdvisoryLock => "advisory_lock",
            PinReason::HoldCursor => "hold_cursor",
            PinReason::Load => "load",
            PinReason::Other => "other",
        }
    }
}

impl fmt::Display for PinReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Class::Read => f.write_str("read"),
            Class::Write => f.write_str("write"),
            Class::Session => f.write_str("session"),
            Class::Pin(reason) => write!(f, "pin:{reason}"),
        }
    }
}

impl Class {
    pub fn is_read(self) -> bool {
        self == Class::Read
    }

    pub fn pin_reason(self) -> Option<PinReason> {
        match self {
            Class::Pin(reason) => Some(reason),
            _ => None,
        }
    }

    /// How strongly this ties the statement to the primary: Read < Write < Session < Pin.
    fn rank(self) -> u8 {
        match self {
            Class::Read => 0,
            Class::Write => 1,
            Class::Session => 2,
            Class::Pin(_) => 3,
        }
    }

    /// The more restrictive of two classes; between two pins, the first one's reason.
    pub fn strongest(self, other: Class) -> Class {
        if other.rank() > self.rank() {
            other
        } else {
            self
        }
    }
}

/// Classifies a simple-query string (possibly several `;`-separated statements).
///
/// A string of more than one statement is at least [`Class::Write`]: it runs as one
/// implicit transaction and may mix kinds. Only whitespace, comments and `;` is
/// [`Class::Read`], because the server answers it with EmptyQueryResponse.
pub fn classify(sql: &str) -> Class {
    if fast::plain_select(sql.as_bytes()) {
        return Class::Read;
    }
    classify_full(sql)
}

/// [`classify`] for SQL as the client sent it, in whatever encoding: text that is not
/// UTF-8 is [`Class::Write`] unless it is a plain SELECT, whose fast path reads only
/// ASCII bytes and so holds in every client encoding PostgreSQL accepts (each keeps
/// quotes, parentheses and keyword letters to ASCII, or makes them a fallback: the
/// trailing `\` of a Shift-JIS character is one). A plain SELECT, the commonest
/// query, then skips the UTF-8 check as well.
pub fn classify_bytes(sql: &[u8]) -> Class {
    if fast::plain_select(sql) {
        return Class::Read;
    }
    std::str::from_utf8(sql).map_or(Class::Write, classify_full)
}

/// [`classify`] without the fast path.
fn classify_full(sql: &str) -> Class {
    let (class, ambiguous) = classify_as(sql, false);
    if !ambiguous {
        return class;
    }
    // A backslash in a plain string ends or continues it depending on the server's
    // standard_conforming_strings; only what is read-only both ways is read-only.
    class.strongest(classify_as(sql, true).0)
}

/// Classifies with plain strings lexed as `standard_conforming_strings` = !backslashes.
/// Also returns whether any plain string contained a backslash.
fn classify_as(sql: &str, backslash_escapes: bool) -> (Class, bool) {
    let mut toks = Tokens::new(Lexer::new(sql, backslash_escapes));
    let mut statements = 0usize;
    let mut class = Class::Read;
    while let Some(outcome) = next_statement(&mut toks) {
        match outcome {
            Outcome::Empty => {}
            // The server rejects the whole string before running any of it.
            Outcome::Unlexable => return (Class::Write, toks.ambiguous()),
            Outcome::Class(c) => {
                statements += 1;
                class = class.strongest(c);
            }
        }
    }
    if statements > 1 {
        class = class.strongest(Class::Write);
    }
    (class, toks.ambiguous())
}
