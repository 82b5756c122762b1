//! The session side of consistency levels: the `pgrelay.*` settings a client reads and
//! writes with SET/SHOW (answered by pgrelay, never sent to PostgreSQL), the same set at
//! connect time through `options`, and counters of how reads were served.

use bytes::{BufMut, Bytes, BytesMut};
use router::{Consistency, Lsn};
use std::sync::atomic::AtomicU64;

/// How reads with a floor were served, for operators and benchmarks.
#[derive(Debug, Default)]
pub struct RywStats {
    /// Sent to a replica known (from heartbeats or earlier answers) to be at the floor.
    pub replica_known: AtomicU64,
    /// Sent to a replica after checking its replay position in the same round trip.
    pub replica_checked: AtomicU64,
    /// The check found the replica behind: the read ran again on the primary.
    pub stale_retries: AtomicU64,
    /// No replica could serve the floor in time: the read went to the primary.
    pub primary_fallbacks: AtomicU64,
    /// Reads that waited for a replica to catch up, and got one.
    pub waited: AtomicU64,
    /// WAL positions read after writes (one per committed write unit).
    pub write_lsn_reads: AtomicU64,
}

/// A statement about `pgrelay.*` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    SetConsistency(Consistency),
    ResetConsistency,
    /// Raise the read floor to at least this LSN (a causal token from elsewhere).
    SetMinReadLsn(Lsn),
    Show(Shown),
    /// A `pgrelay.*` statement pgrelay cannot accept: the client gets this error.
    Invalid {
        code: &'static str,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    Consistency,
    LastWriteLsn,
    MinReadLsn,
}

impl Shown {
    pub fn name(self) -> &'static str {
        match self {
            Shown::Consistency => "pgrelay.consistency",
            Shown::LastWriteLsn => "pgrelay.last_write_lsn",
            Shown::MinReadLsn => "pgrelay.min_read_lsn",
        }
    }
}

/// False when `sql` (raw bytes, not yet decoded) cannot be a statement [`intercept`]
/// recognizes: every one starts with SET, SHOW or RESET after white space. A non-ASCII
/// first character is not judged here (Unicode white space trims away).
pub fn may_intercept(sql: &[u8]) -> bool {
    let start = sql
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c));
    let Some(text) = start.and_then(|i| sql.get(i..)) else {
        return false;
    };
    let starts = |word: &str| {
        text.get(..word.len())
            .is_some_and(|h| h.eq_ignore_ascii_case(word.as_bytes()))
    };
    text.first().is_some_and(|b| *b >= 0x80) || starts("set") || starts("show") || starts("reset")
}

/// Recognizes a single simple-protocol statement about a `pgrelay.*` setting. Anything
/// else (including statements that merely mention one) is `None` and goes to PostgreSQL.
pub fn intercept(sql: &str) -> Option<Command> {
    let text = sql.trim().trim_end_matches(';').trim();
    // Cheap refusals first: this runs for every simple query and every Parse.
    let starts = |word: &str| {
        text.get(..word.len())
            .is_some_and(|h| h.eq_ignore_ascii_case(word))
    };
    if !(starts("set") || starts("show") || starts("reset")) || text.len() > 200 {
        return None;
    }
    if text.contains(';') {
        return None;
    }
    let lower = text.to_ascii_lowercase();
    let words: Vec<&str> = lower.split_whitespace().collect();
    let (verb, rest) = words.split_first()?;
    let rest: Vec<&str> = match rest {
        ["session", tail @ ..] => tail.to_vec(),
        _ => rest.to_vec(),
    };
    let name = *rest.first()?;
    let (name, inline_value) = match name.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (name, None),
    };
    if !name.starts_with("pgrelay.") {
        return None;
    }
    let invalid = |code, message: String| Some(Command::Invalid { code, message });
    match *verb {
        "show" if rest.len() == 1 => match name {
            "pgrelay.consistency" => Some(Command::Show(Shown::Consistency)),
            "pgrelay.last_write_lsn" => Some(Command::Show(Shown::LastWriteLsn)),
            "pgrelay.min_read_lsn" => Some(Command::Show(Shown::MinReadLsn)),
            _ => invalid(
                "42704",
                format!("unrecognized configuration parameter \"{name}\""),
            ),
        },
        "reset" if rest.len() == 1 => match name {
            "pgrelay.consistency" => Some(Command::ResetConsistency),
            "pgrelay.min_read_lsn" => Some(Command::SetMinReadLsn(Lsn(0))),
            _ => invalid(
                "42704",
                format!("unrecognized configuration parameter \"{name}\""),
            ),
        },
        "set" => {
            // Values are case-insensitive (levels, hex LSNs): the lower-cased word will do.
            let value = match (inline_value, rest.len()) {
                (Some(v), 1) if !v.is_empty() => v,
                (Some(""), 2) => rest[1],
                (None, 3) if rest[1] == "=" || rest[1] == "to" => rest[2],
                (None, 2) if rest[1].len() > 1 && rest[1].starts_with('=') => &rest[1][1..],
                _ => return invalid("42601", format!("syntax error in SET {name}")),
            };
            let value = value.trim_matches('\'').trim_matches('"');
            match name {
                "pgrelay.consistency" => match value.parse() {
                    Ok(level) => Some(Command::SetConsistency(level)),
                    Err(e) => invalid("22023", format!("{e}")),
                },
                "pgrelay.min_read_lsn" => match value.parse() {
                    Ok(lsn) => Some(Command::SetMinReadLsn(lsn)),
                    Err(e) => invalid("22023", format!("{e}")),
                },
                "pgrelay.last_write_lsn" => invalid(
                    "55P02",
                    "parameter \"pgrelay.last_write_lsn\" cannot be changed; set \
                     pgrelay.min_read_lsn instead"
                        .into(),
                ),
                _ => invalid(
                    "42704",
                    format!("unrecognized configuration parameter \"{name}\""),
                ),
            }
        }
        _ => None,
    }
}

/// The connect-time form: `-c pgrelay.consistency=global` inside the `options` startup
/// parameter, or `pgrelay.consistency` as a startup parameter of its own. Both are
/// removed, so PostgreSQL never sees them. Returns the level asked for, if any.
pub fn take_startup_level(
    params: &mut Vec<(String, String)>,
) -> Result<Option<Consistency>, router::ConsistencyParseError> {
    let mut level = None;
    if let Some(i) = params.iter().position(|(k, _)| k == "pgrelay.consistency") {
        let (_, v) = params.remove(i);
        level = Some(v.parse()?);
    }
    if let Some((_, options)) = params.iter_mut().find(|(k, _)| k == "options") {
        let mut kept: Vec<&str> = Vec::new();
        let mut words = options.split_whitespace().peekable();
        while let Some(w) = words.next() {
            // `-c name=value` or `-cname=value`, as libpq and PostgreSQL accept them.
            let setting = match w {
                "-c" => words.peek().copied(),
                _ => w.strip_prefix("-c"),
            };
            match setting.and_then(|s| s.strip_prefix("pgrelay.consistency=")) {
                Some(v) => {
                    level = Some(v.parse()?);
                    if w == "-c" {
                        words.next();
                    }
                }
                None => kept.push(w),
            }
        }
        *options = kept.join(" ");
    }
    params.retain(|(k, v)| k != "options" || !v.is_empty());
    Ok(level)
}

/// RowDescription of a SHOW: one text column named after the setting.
pub fn show_description(name: &str) -> Bytes {
    let mut body = BytesMut::new();
    body.put_u16(1);
    body.put_slice(name.as_bytes());
    body.put_u8(0);
    body.put_u32(0); // table oid
    body.put_u16(0); // column number
    body.put_u32(25); // text
    body.put_i16(-1);
    body.put_i32(-1);
    body.put_u16(0); // text format
    let mut out = BytesMut::new();
    message(&mut out, b'T', &body);
    out.freeze()
}

/// DataRow and CommandComplete of a SHOW.
pub fn show_rows(value: &str) -> Bytes {
    let mut out = BytesMut::new();
    let mut row = BytesMut::new();
    row.put_u16(1);
    row.put_u32(value.len() as u32);
    row.put_slice(value.as_bytes());
    message(&mut out, b'D', &row);
    message(&mut out, b'C', b"SHOW\0");
    out.freeze()
}

/// CommandComplete for a SET or RESET.
pub fn set_answer(reset: bool) -> Bytes {
    let mut out = BytesMut::new();
    message(&mut out, b'C', if reset { b"RESET\0" } else { b"SET\0" });
    out.freeze()
}

/// What a statement describes as: RowDescription for a SHOW, NoData otherwise.
pub fn describe(cmd: &Command) -> Bytes {
    match cmd {
        Command::Show(what) => show_description(what.name()),
        _ => Bytes::from_static(b"n\0\0\0\x04"),
    }
}

/// ParameterDescription of a statement with no parameters.
pub fn no_parameters() -> Bytes {
    Bytes::from_static(b"t\0\0\0\x06\0\0")
}

fn message(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_u32(body.len() as u32 + 4);
    out.put_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The byte prefilter never turns away a statement `intercept` would answer.
        #[test]
        fn prefilter_never_hides_a_command(
            pad in "[ \t\n\r\x0b\x0c\u{a0}\u{3000}]{0,3}",
            verb in "(?i)(set|show|reset|select|rest|s)",
            rest in "[ a-z._=;'0-9/]{0,30}",
        ) {
            let sql = format!("{pad}{verb} {rest}");
            prop_assert!(may_intercept(sql.as_bytes()) || intercept(&sql).is_none(), "{sql:?}");
        }

        #[test]
        fn prefilter_on_any_text(sql in "\\PC{0,40}") {
            prop_assert!(may_intercept(sql.as_bytes()) || intercept(&sql).is_none(), "{sql:?}");
        }
    }

    #[test]
    fn prefilter_cases() {
        for (sql, may) in [
            ("SET pgrelay.consistency = global", true),
            ("  show pgrelay.last_write_lsn", true),
            ("\x0bRESET pgrelay.consistency", true),
            ("\u{a0}SET pgrelay.consistency = primary", true),
            ("SELECT abalance FROM pgbench_accounts WHERE aid = 1", false),
            ("settings", true),
            ("INSERT INTO t VALUES (1)", false),
            ("BEGIN", false),
            ("", false),
            ("   ", false),
        ] {
            assert_eq!(may_intercept(sql.as_bytes()), may, "{sql:?}");
        }
        assert!(intercept("\u{a0}SET pgrelay.consistency = primary").is_some());
    }

    #[test]
    fn statements() {
        use Command::*;
        let cases: Vec<(&str, Option<Command>)> = vec![
            (
                "SET pgrelay.consistency = 'global'",
                Some(SetConsistency(Consistency::Global)),
            ),
            (
                "set pgrelay.consistency to eventual;",
                Some(SetConsistency(Consistency::Eventual)),
            ),
            (
                "SET SESSION pgrelay.consistency='primary'",
                Some(SetConsistency(Consistency::Primary)),
            ),
            (
                "SET pgrelay.consistency= session",
                Some(SetConsistency(Consistency::Session)),
            ),
            ("RESET pgrelay.consistency", Some(ResetConsistency)),
            ("SHOW pgrelay.consistency", Some(Show(Shown::Consistency))),
            (
                "show pgrelay.last_write_lsn;",
                Some(Show(Shown::LastWriteLsn)),
            ),
            (
                "SET pgrelay.min_read_lsn = '0/16B3748'",
                Some(SetMinReadLsn(Lsn(0x16B3748))),
            ),
            ("SET search_path = x", None),
            ("SELECT 'SET pgrelay.consistency = global'", None),
            ("SET pgrelay.consistency = global; SELECT 1", None),
            ("SHOW search_path", None),
        ];
        for (sql, want) in cases {
            assert_eq!(intercept(sql), want, "{sql}");
        }
        let invalid = [
            ("SET pgrelay.consistency = 'strong'", "22023"),
            ("SET pgrelay.min_read_lsn = 'nope'", "22023"),
            ("SET pgrelay.last_write_lsn = '0/1'", "55P02"),
            ("SHOW pgrelay.nothing", "42704"),
            ("SET pgrelay.consistency", "42601"),
        ];
        for (sql, code) in invalid {
            match intercept(sql) {
                Some(Command::Invalid { code: c, .. }) => assert_eq!(c, code, "{sql}"),
                other => panic!("{sql}: {other:?}"),
            }
        }
    }

    #[test]
    fn startup_options() {
        let p = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        type Case = (
            Vec<(String, String)>,
            Option<Consistency>,
            Vec<(String, String)>,
        );
        let cases: Vec<Case> = vec![
            (
                p(&[("options", "-c pgrelay.consistency=global")]),
                Some(Consistency::Global),
                p(&[]),
            ),
            (
                p(&[("options", "-c work_mem=64MB -cpgrelay.consistency=eventual")]),
                Some(Consistency::Eventual),
                p(&[("options", "-c work_mem=64MB")]),
            ),
            (
                p(&[
                    ("pgrelay.consistency", "primary"),
                    ("application_name", "x"),
                ]),
                Some(Consistency::Primary),
                p(&[("application_name", "x")]),
            ),
            (
                p(&[("options", "-c work_mem=1MB")]),
                None,
                p(&[("options", "-c work_mem=1MB")]),
            ),
        ];
        for (mut params, want, left) in cases {
            assert_eq!(take_startup_level(&mut params).unwrap(), want);
            assert_eq!(params, left);
        }
        let mut bad = p(&[("options", "-c pgrelay.consistency=strong")]);
        assert!(take_startup_level(&mut bad).is_err());
    }
}
