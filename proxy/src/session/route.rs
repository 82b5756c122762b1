//! Which statements a unit of client messages contains, and so where it may run.
//! A unit is what the client sends up to a point where it waits for answers: a simple
//! Query, a FunctionCall, or extended-protocol messages up to Sync or Flush.

use super::statements::Statements;
use protocol::Frame;
use router::{classify, classify_bytes, Class, PinReason};

/// Message types a client may send once logged in. Anything else is refused before
/// it is queued, so garbage never reaches a backend.
pub fn is_session_message(tag: u8) -> bool {
    matches!(
        tag,
        b'Q' | b'P' | b'B' | b'E' | b'D' | b'C' | b'S' | b'H' | b'F' | b'X' | b'd' | b'c' | b'f'
    )
}

/// Frames after which the client may wait for answers: the unit can be routed.
pub fn is_boundary(tag: u8) -> bool {
    matches!(tag, b'S' | b'Q' | b'F' | b'H')
}

/// Ends a unit for good (a Flush keeps the unit open on its backend).
pub fn ends_unit(tag: u8) -> bool {
    matches!(tag, b'S' | b'Q' | b'F')
}

/// The strongest requirement among the unit's statements: Pin over Write over Read.
/// Anything pgrelay cannot read is treated as a write, so it runs on the primary.
/// A Bind or Describe names the statement as the unit itself last parsed it, if it did:
/// the session's older statement of that name (above all the unnamed one) is replaced.
pub fn unit_class(frames: &[Frame], stmts: &Statements) -> Class {
    unit_classes(frames, stmts, &mut Vec::new())
}

/// [`unit_class`], also leaving in `each` the class of every Query and Parse (`None`
/// for other frames), so that sending them does not lex their SQL a second time.
pub fn unit_classes(frames: &[Frame], stmts: &Statements, each: &mut Vec<Option<Class>>) -> Class {
    each.clear();
    let mut class = Class::Read;
    let mut parsed: Vec<(&str, Class)> = Vec::new();
    let named = |parsed: &[(&str, Class)], name: &str| {
        parsed
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| *c)
            .or_else(|| stmts.get(name).map(|s| s.class))
            .unwrap_or(Class::Read)
    };
    for f in frames {
        let mut sql_class = None;
        let c = match f.tag() {
            b'Q' => match protocol::frontend::query_bytes(f) {
                Ok(sql) => *sql_class.insert(classify_bytes(sql)),
                Err(_) => Class::Write,
            },
            b'P' => match protocol::frontend::parse(f) {
                Ok(p) => {
                    let c = *sql_class.insert(classify(p.sql));
                    parsed.push((p.name, c));
                    c
                }
                Err(_) => Class::Write,
            },
            b'B' => match protocol::frontend::bind(f) {
                Ok(b) => named(&parsed, b.statement),
                Err(_) => Class::Write,
            },
            b'D' => match protocol::frontend::describe(f) {
                Ok(d) if d.kind == protocol::ObjectKind::Statement => named(&parsed, d.name),
                Ok(_) => Class::Read,
                Err(_) => Class::Write,
            },
            b'E' | b'C' | b'S' | b'H' => Class::Read,
            // FunctionCall, COPY data outside COPY, anything unknown: the primary decides.
            _ => Class::Write,
        };
        each.push(sql_class);
        class = stronger(class, c);
    }
    class
}

/// Is `word` one of the keywords `kws`, ignoring ASCII case?
pub fn is_any(word: &[u8], kws: &[&str]) -> bool {
    kws.iter().any(|k| word.eq_ignore_ascii_case(k.as_bytes()))
}

/// Which pins a simple query ends, once it has run outside a transaction: the state
/// that tied the session to its backend is gone. `None` when it ends none.
pub fn releases(sql: &[u8]) -> Option<Release> {
    // Runs on every simple query, on its bytes (already checked to be UTF-8): decided by
    // the first word for almost all of them, without allocating.
    let mut sql = sql.trim_ascii();
    while let [rest @ .., b';'] = sql {
        sql = rest;
    }
    let mut words = sql.split(u8::is_ascii_whitespace).filter(|w| !w.is_empty());
    let first = words.next()?;
    let kind = ["discard", "unlisten", "deallocate", "close", "select"]
        .iter()
        .position(|k| first.eq_ignore_ascii_case(k.as_bytes()))?;
    let second = words.next();
    if kind == 4
        && !second.is_some_and(|f| {
            f.get(..23)
                .is_some_and(|p| p.eq_ignore_ascii_case(b"pg_advisory_unlock_all("))
        })
    {
        return None; // an ordinary SELECT
    }
    let rest = [second, words.next(), words.next()];
    let is = is_any;
    match (kind, rest) {
        (0, [Some(w), None, None]) if is(w, &["all"]) => Some(Release::All),
        (0, [Some(w), None, None]) if is(w, &["temp", "temporary"]) => {
            Some(Release::Only(PinReason::TempTable))
        }
        (1, [Some(b"*"), None, None]) => Some(Release::Only(PinReason::Listen)),
        (2, [Some(w), None, None]) if is(w, &["all"]) => Some(Release::Only(PinReason::Prepare)),
        (2, [Some(p), Some(w), None]) if is(p, &["prepare"]) && is(w, &["all"]) => {
            Some(Release::Only(PinReason::Prepare))
        }
        (3, [Some(w), None, None]) if is(w, &["all"]) => Some(Release::Only(PinReason::HoldCursor)),
        // The second word was checked above.
        (4, [Some(_), None, None]) => Some(Release::Only(PinReason::AdvisoryLock)),
        _ => None,
    }
}

/// Does the unit only end a transaction (ROLLBACK, ABORT, COMMIT, END), by simple
/// Query or by Parse? Savepoint rollbacks and two-phase commands do not count.
pub fn ends_transaction(frames: &[Frame]) -> bool {
    let ends = |sql: &str| {
        let words: Vec<String> = sql
            .trim()
            .trim_end_matches(';')
            .split_whitespace()
            .take(2)
            .map(|w| w.to_ascii_lowercase())
            .collect();
        let w: Vec<&str> = words.iter().map(String::as_str).collect();
        matches!(
            w.as_slice(),
            ["rollback" | "abort" | "commit" | "end"]
                | [
                    "rollback" | "abort" | "commit" | "end",
                    "work" | "transaction" | "and"
                ]
        )
    };
    let mut any = false;
    for f in frames {
        let sql = match f.tag() {
            b'Q' => protocol::frontend::query(f).ok(),
            b'P' => protocol::frontend::parse(f).ok().map(|p| p.sql),
            _ => continue,
        };
        match sql {
            Some(sql) if ends(sql) => any = true,
            _ => return false,
        }
    }
    any
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    All,
    Only(PinReason),
}

pub fn stronger(a: Class, b: Class) -> Class {
    match (a, b) {
        (Class::Pin(r), _) | (_, Class::Pin(r)) => Class::Pin(r),
        (Class::Session, _) | (_, Class::Session) => Class::Session,
        (Class::Write, _) | (_, Class::Write) => Class::Write,
        _ => Class::Read,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strongest_class_wins() {
        let set = Class::Session;
        let cases = [
            (Class::Read, Class::Read, Class::Read),
            (Class::Read, Class::Write, Class::Write),
            (Class::Write, Class::Read, Class::Write),
            (Class::Write, set, set),
            (set, Class::Read, set),
        ];
        for (a, b, want) in cases {
            assert_eq!(stronger(a, b), want, "{a:?} + {b:?}");
        }
    }

    fn parse(name: &str, sql: &str) -> Frame {
        let body = [name.as_bytes(), b"\0", sql.as_bytes(), b"\0\0\0"].concat();
        Frame::from_parts(b'P', &body).unwrap()
    }

    fn bind(stmt: &str) -> Frame {
        let body = [b"\0", stmt.as_bytes(), b"\0\0\0\0\0\0\0"].concat();
        Frame::from_parts(b'B', &body).unwrap()
    }

    fn sync() -> Frame {
        Frame::from_parts(b'S', &[]).unwrap()
    }

    #[test]
    fn unit_class_uses_the_units_own_parse() {
        let mut stmts = Statements::default();
        let insert = "INSERT INTO t VALUES (1)";
        for (name, sql) in [("", insert), ("w", insert), ("r", "SELECT 1")] {
            let stmt = super::super::statements::Statement::new(
                name.into(),
                bytes::Bytes::new(),
                classify(sql),
                crate::session::tx_effect::tx_effect(sql.as_bytes()),
            );
            stmts.insert(name, stmt);
        }
        let cases: Vec<(Vec<Frame>, Class)> = vec![
            // The session's unnamed statement is an INSERT; the unit replaces it.
            (vec![parse("", "SELECT 1"), bind(""), sync()], Class::Read),
            (vec![bind(""), sync()], Class::Write),
            (vec![parse("", insert), bind(""), sync()], Class::Write),
            (vec![bind("w"), sync()], Class::Write),
            (vec![bind("r"), sync()], Class::Read),
            (vec![parse("x", "SELECT 2"), bind("x"), sync()], Class::Read),
            (vec![bind("unknown"), sync()], Class::Read),
        ];
        let mut each = vec![Some(Class::Write)]; // stale contents must go
        for (unit, want) in cases {
            assert_eq!(unit_class(&unit, &stmts), want, "{unit:?}");
            assert_eq!(unit_classes(&unit, &stmts, &mut each), want, "{unit:?}");
            // Each Parse's own class, so sending it needs no second lexing.
            let own: Vec<Option<Class>> = unit
                .iter()
                .map(|f| protocol::frontend::parse(f).ok().map(|p| classify(p.sql)))
                .collect();
            assert_eq!(each, own, "{unit:?}");
        }
    }

    #[test]
    fn transaction_enders() {
        let q = |sql: &str| Frame::from_parts(b'Q', &[sql.as_bytes(), b"\0"].concat()).unwrap();
        let cases = [
            (vec![q("ROLLBACK")], true),
            (vec![q("rollback;")], true),
            (vec![q("ABORT")], true),
            (vec![q("COMMIT")], true),
            (vec![q("end transaction")], true),
            (vec![q("ROLLBACK AND NO CHAIN")], true),
            (vec![parse("", "ROLLBACK"), bind(""), sync()], true),
            (vec![q("ROLLBACK TO SAVEPOINT a")], false),
            (vec![q("COMMIT PREPARED 'x'")], false),
            (vec![q("INSERT INTO t VALUES (1)")], false),
            (vec![parse("", "SELECT 1"), bind(""), sync()], false),
            (vec![sync()], false),
        ];
        for (unit, want) in cases {
            assert_eq!(ends_transaction(&unit), want, "{unit:?}");
        }
    }

    #[test]
    fn pin_releases() {
        let cases = [
            ("DISCARD ALL", Some(Release::All)),
            ("discard all;", Some(Release::All)),
            ("UNLISTEN *", Some(Release::Only(PinReason::Listen))),
            ("UNLISTEN ch", None),
            ("DEALLOCATE ALL", Some(Release::Only(PinReason::Prepare))),
            (
                "deallocate prepare all",
                Some(Release::Only(PinReason::Prepare)),
            ),
            ("DEALLOCATE q", None),
            ("DISCARD TEMP", Some(Release::Only(PinReason::TempTable))),
            ("CLOSE ALL", Some(Release::Only(PinReason::HoldCursor))),
            (
                "SELECT pg_advisory_unlock_all()",
                Some(Release::Only(PinReason::AdvisoryLock)),
            ),
            (
                "  Select PG_ADVISORY_UNLOCK_ALL() ;",
                Some(Release::Only(PinReason::AdvisoryLock)),
            ),
            ("select pg_advisory_unlock_all(), 1", None),
            (
                "discard\n temporary",
                Some(Release::Only(PinReason::TempTable)),
            ),
            ("DISCARD ALL now", None),
            ("DISCARD", None),
            ("", None),
            (";", None),
            ("SELECT 1", None),
        ];
        for (sql, want) in cases {
            assert_eq!(releases(sql.as_bytes()), want, "{sql}");
        }
    }

    #[test]
    fn boundaries() {
        for (tag, boundary, ends) in [
            (b'S', true, true),
            (b'Q', true, true),
            (b'F', true, true),
            (b'H', true, false),
            (b'P', false, false),
            (b'd', false, false),
        ] {
            assert_eq!(is_boundary(tag), boundary, "{}", tag as char);
            assert_eq!(ends_unit(tag), ends, "{}", tag as char);
        }
    }
}
