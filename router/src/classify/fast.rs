//! A fast path for the commonest statement of all: one plain SELECT, with no
//! parentheses, no quotes of any kind, no comments, and no `$` but `$n` parameters.
//!
//! Without parentheses it calls no function and holds no subquery; without quotes or
//! comments every byte is what it looks like. All that could still make such a
//! statement more than a read is a keyword: FOR (row locks), INTO (it creates a table)
//! or a data-modifying one. So when none of those appears, the full classifier would
//! say [`Class::Read`](super::Class::Read) as well (a property test below holds the two
//! together), and anything else is left to it.
//!
//! Why: the full classifier is fast on its own (`cargo bench -p router --bench
//! classify`), but in the proxy it runs between two system calls, with caches and branch
//! predictors cold, and `perf` put it at a tenth of pgrelay's user time under
//! `pgbench -S`. This loop is one table lookup per byte in a few cache lines of code.

/// What a byte means to the fast path.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Byte {
    /// Anything the fast path does not vouch for: the full classifier decides.
    Other,
    /// An ASCII letter: runs of them are checked against the keywords.
    Letter,
    /// Whitespace as PostgreSQL's lexer sees it.
    Space,
    /// Digits, `_`, bytes of multi-byte characters and operator characters that start
    /// nothing: they only end a run of letters.
    Plain,
    /// `-` (`--` starts a comment), `/` (`/*` does), `;`, `$`.
    Dash,
    Slash,
    Semi,
    Dollar,
}

static CLASSES: [Byte; 256] = {
    let mut t = [Byte::Other; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = match b {
            b'a'..=b'z' | b'A'..=b'Z' => Byte::Letter,
            b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => Byte::Space,
            b'0'..=b'9' | b'_' | 0x80..=0xff => Byte::Plain,
            b'=' | b'<' | b'>' | b'!' | b',' | b'.' | b'*' | b'+' | b'%' | b'^' | b'~' => {
                Byte::Plain
            }
            b'&' | b'|' | b'#' | b'@' | b':' | b'[' | b']' | b'?' => Byte::Plain,
            b'-' => Byte::Dash,
            b'/' => Byte::Slash,
            b';' => Byte::Semi,
            b'$' => Byte::Dollar,
            _ => Byte::Other,
        };
        i += 1;
    }
    t
};

/// True when `sql` is a single SELECT that can only read (see the module doc); false
/// means "ask the full classifier", not "writes".
pub(super) fn plain_select(sql: &[u8]) -> bool {
    let start = sql
        .iter()
        .position(|&b| CLASSES[usize::from(b)] != Byte::Space)
        .unwrap_or(sql.len());
    let Some(rest) = sql.get(start..) else {
        return false;
    };
    let (Some(head), Some(&after)) = (rest.get(..6), rest.get(6)) else {
        return false;
    };
    if !head.eq_ignore_ascii_case(b"SELECT") || CLASSES[usize::from(after)] != Byte::Space {
        return false;
    }
    // The usual reasons to give up, found with SIMD before the byte loop: a statement
    // that has them late would otherwise be scanned twice up to there.
    if memchr::memchr3(b'(', b'\'', b'"', rest).is_some() {
        return false;
    }
    let mut word = None;
    for (i, &b) in rest.iter().enumerate().skip(7) {
        let class = CLASSES[usize::from(b)];
        if class == Byte::Letter {
            word.get_or_insert(i);
            continue;
        }
        if let Some(from) = word.take() {
            if rest.get(from..i).is_some_and(is_keyword) {
                return false;
            }
        }
        let next = rest.get(i + 1).copied();
        match class {
            Byte::Space | Byte::Plain => {}
            Byte::Dash if next != Some(b'-') => {}
            Byte::Slash if next != Some(b'*') => {}
            Byte::Dollar if next.is_some_and(|n| n.is_ascii_digit()) => {}
            // Only a trailing `;` (or several): one statement.
            Byte::Semi => {
                return rest.get(i..).is_some_and(|tail| {
                    tail.iter()
                        .all(|&b| b == b';' || CLASSES[usize::from(b)] == Byte::Space)
                });
            }
            _ => return false,
        }
    }
    !word.is_some_and(|from| rest.get(from..).is_some_and(is_keyword))
}

/// The keywords that can make a parenthesis-free SELECT write, lock rows or create a
/// table.
fn is_keyword(word: &[u8]) -> bool {
    let is = |kw: &[u8]| word.eq_ignore_ascii_case(kw);
    match word.len() {
        3 => is(b"FOR"),
        4 => is(b"INTO"),
        5 => is(b"MERGE"),
        6 => is(b"INSERT") || is(b"UPDATE") || is(b"DELETE"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{classify_full, Class};
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn takes_plain_selects_only() {
        let cases = [
            (
                "SELECT abalance FROM pgbench_accounts WHERE aid = 51234;",
                true,
            ),
            (
                "  select a, b.c FROM t WHERE x >= $1 AND y <> 2.5e3 ;; \n",
                true,
            ),
            ("SELECT * FROM t ORDER BY a DESC LIMIT 10", true),
            ("SELECT a::int FROM t WHERE b = ANY $2", true),
            ("SELECT informative FROM t", true),
            ("SELECT update_at FROM t", false), // `_` ends the run: conservative
            ("SELECT a FROM t FOR UPDATE", false),
            ("SELECT a INTO b FROM t", false),
            ("SELECT nextval('s')", false),
            ("SELECT 'a'", false),
            ("SELECT \"a\" FROM t", false),
            ("SELECT 1 -- c", false),
            ("SELECT 1 /* c */", false),
            ("SELECT $$x$$", false),
            ("SELECT a$b FROM t", false),
            ("SELECT 1; DELETE FROM t", false),
            ("SELECT 1; SELECT 2", false),
            ("SELECT\\", false),
            ("SELECT", false),
            ("SELECTx FROM t", false),
            ("UPDATE t SET a = 1", false),
            ("WITH x AS (DELETE FROM t) SELECT 1", false),
            ("", false),
        ];
        for (sql, want) in cases {
            assert_eq!(plain_select(sql.as_bytes()), want, "{sql:?}");
            if want {
                assert_eq!(classify_full(sql), Class::Read, "{sql:?}");
            }
        }
    }

    /// Every statement of up to three tokens after `SELECT x` from a set that holds each
    /// keyword the fast path must notice (and those that pair with them, like SHARE after
    /// FOR), spaced and glued: what it calls a read, the full classifier calls a read.
    #[test]
    fn short_selects_agree_exhaustively() {
        const TOKENS: &[&str] = &[
            "FOR", "for", "UPDATE", "SHARE", "NO", "KEY", "INTO", "TEMP", "INSERT", "DELETE",
            "MERGE", "x", "1", "pg_temp", "nextval", "(", ")", "'", "$1", ";", "--", "/*", "=",
            ",", "FROM", "t",
        ];
        let mut fast = 0;
        for a in TOKENS {
            for b in TOKENS {
                for c in TOKENS {
                    for sep in [" ", ""] {
                        let sql = format!("SELECT x {a}{sep}{b} {c}");
                        if plain_select(sql.as_bytes()) {
                            fast += 1;
                            assert_eq!(classify_full(&sql), Class::Read, "{sql:?}");
                        }
                    }
                }
            }
        }
        assert!(fast > 1000, "the fast path took only {fast} statements");
    }

    /// Pieces from which the property test builds statements: mostly ones the fast
    /// path lets through (so that it says yes often enough to be tested), with the
    /// keywords it must notice in both cases, glued to each other or not...
    const PLAIN: &[&str] = &[
        "SELECT", "select", " ", " ", "\n", "\r", "FOR", "for", "UPDATE", "update", "SHARE", "NO",
        "KEY", "INTO", "into", "TEMP", "INSERT", "DELETE", "merge", "x", "t1", "1", "1for", "_",
        "é", "$1", "-", "/", ",", "=", "::", "nextval", "pg_temp", "E", "FROM", "WHERE", "SET",
        "a.b", ";",
    ];
    /// ...and now and then one that changes how the rest is read.
    const SPECIAL: &[&str] = &[
        "(", ")", "'", "\"", "$", "$$", "--", "/*", "*/", "\\", "\u{0}",
    ];

    fn piece() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            12 => proptest::sample::select(PLAIN),
            1 => proptest::sample::select(SPECIAL),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// No stale read through the fast path: whatever it calls a read, the full
        /// classifier calls a read too.
        #[test]
        fn fast_path_never_disagrees_toward_read(
            lead in proptest::sample::select(&["SELECT ", " select\t", "SELECT", ""][..]),
            pieces in proptest::collection::vec(piece(), 0..12),
        ) {
            let sql = format!("{lead}{}", pieces.concat());
            if plain_select(sql.as_bytes()) {
                prop_assert_eq!(classify_full(&sql), Class::Read, "{:?}", sql);
            }
        }
    }
}
