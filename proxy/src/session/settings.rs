//! Session settings that follow a session from backend to backend.
//!
//! Pinning every session that runs `SET` (what most poolers do, or worse, let the value
//! leak) would cost the pool its point: drivers set `search_path`, `TimeZone` or
//! `application_name` on every connection. Instead, after a statement that may change
//! settings, pgrelay asks the backend which settings the session changed (a hidden
//! query), and before a session's statement runs on another backend it brings that
//! backend into line (another hidden query) — only when the two differ.
//!
//! Reading the values back from the server, rather than parsing `SET` statements,
//! covers every spelling (`SET TIME ZONE`, `set_config(.., false)`, `SET SESSION
//! CHARACTERISTICS`, `RESET ALL`, a rolled-back `SET`) with PostgreSQL's own semantics.
//! `pg_settings` lists neither `role` nor custom (`app.x`) placeholders, so those are
//! read by name; custom names are learnt from the session's own statements.

use std::collections::BTreeSet;

/// Settings that differ from the backend's defaults, sorted by name.
pub type Settings = Vec<(String, String)>;

/// The hidden query that reads a backend's session settings: rows of (name, value).
pub fn capture_sql(custom: &BTreeSet<String>) -> String {
    let mut sql = String::from(
        "SELECT name, setting FROM pg_catalog.pg_settings WHERE source = 'session' \
         UNION ALL SELECT 'role', pg_catalog.current_setting('role') \
         WHERE pg_catalog.current_setting('role') <> 'none'",
    );
    if !custom.is_empty() {
        let names: Vec<String> = custom
            .iter()
            .map(|n| format!("({})", quote_literal(n)))
            .collect();
        sql.push_str(&format!(
            " UNION ALL SELECT n, pg_catalog.current_setting(n, true) FROM (VALUES {}) AS v(n) \
             WHERE coalesce(pg_catalog.current_setting(n, true), '') <> ''",
            names.join(", ")
        ));
    }
    sql
}

/// Sorts captured rows into [`Settings`].
pub fn normalize(mut rows: Settings) -> Settings {
    rows.sort();
    rows.dedup_by(|a, b| a.0 == b.0);
    rows
}

/// SQL that turns a backend with settings `from` into one with `to`; `None` if they
/// already agree.
pub fn transition(from: &Settings, to: &Settings) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for (name, _) in from {
        if !to.iter().any(|(n, _)| n == name) {
            parts.push(format!("RESET {}", quote_guc(name)));
        }
    }
    let sets: Vec<String> = to
        .iter()
        .filter(|(n, v)| !from.iter().any(|(fn_, fv)| fn_ == n && fv == v))
        .map(|(n, v)| {
            format!(
                "pg_catalog.set_config({}, {}, false)",
                quote_literal(n),
                quote_literal(v)
            )
        })
        .collect();
    if !sets.is_empty() {
        parts.push(format!("SELECT {}", sets.join(", ")));
    }
    if parts.is_empty() {
        None
    } else {
        Some(parts.join("; "))
    }
}

/// Custom setting names (`app.tenant`) that `sql` may set or reset, lower-cased as
/// PostgreSQL folds them. A hint for [`capture_sql`]: missing one only means that
/// setting is not carried over, as with any pooler.
pub fn custom_names(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let words: Vec<&str> = sql
        .split(|c: char| c.is_whitespace() || c == ';' || c == '=' || c == '(' || c == ',')
        .filter(|w| !w.is_empty())
        .collect();
    for (i, w) in words.iter().enumerate() {
        let is_set = w.eq_ignore_ascii_case("set") || w.eq_ignore_ascii_case("reset");
        let is_call = w.to_ascii_lowercase().ends_with("set_config");
        if !(is_set || is_call) {
            continue;
        }
        let mut next = words.get(i + 1).copied();
        if next.is_some_and(|n| n.eq_ignore_ascii_case("session")) {
            next = words.get(i + 2).copied();
        }
        if let Some(name) = next {
            let name = name.trim_matches(|c| c == '\'' || c == '"');
            if name.contains('.')
                && name
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '.')
            {
                out.push(name.to_ascii_lowercase());
            }
        }
    }
    out
}

/// A string literal that means `s` whatever `standard_conforming_strings` is.
pub fn quote_literal(s: &str) -> String {
    let body = s.replace('\'', "''");
    if s.contains('\\') {
        format!("E'{}'", body.replace('\\', "\\\\"))
    } else {
        format!("'{body}'")
    }
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A setting name for `RESET`: each dotted part quoted.
fn quote_guc(name: &str) -> String {
    name.split('.')
        .map(quote_ident)
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(pairs: &[(&str, &str)]) -> Settings {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn transitions() {
        let cases: &[(Settings, Settings, Option<&str>)] = &[
            (s(&[]), s(&[]), None),
            (s(&[("TimeZone", "UTC")]), s(&[("TimeZone", "UTC")]), None),
            (
                s(&[]),
                s(&[("search_path", "\"a b\", public")]),
                Some("SELECT pg_catalog.set_config('search_path', '\"a b\", public', false)"),
            ),
            (
                s(&[("TimeZone", "UTC"), ("role", "app")]),
                s(&[("TimeZone", "Asia/Tokyo")]),
                Some(
                    "RESET \"role\"; SELECT pg_catalog.set_config('TimeZone', 'Asia/Tokyo', false)",
                ),
            ),
            (s(&[("my.x", "1")]), s(&[]), Some("RESET \"my\".\"x\"")),
            (
                s(&[]),
                s(&[("a.b", "it's \\ here")]),
                Some("SELECT pg_catalog.set_config('a.b', E'it''s \\\\ here', false)"),
            ),
        ];
        for (from, to, want) in cases {
            assert_eq!(transition(from, to).as_deref(), *want, "{from:?} -> {to:?}");
        }
    }

    #[test]
    fn custom_names_are_found() {
        let cases: &[(&str, &[&str])] = &[
            ("SET search_path = x", &[]),
            ("SET myapp.tenant = 't1'", &["myapp.tenant"]),
            ("set session MyApp.Tenant to 1", &["myapp.tenant"]),
            ("RESET a.b; SET c.d=1", &["a.b", "c.d"]),
            ("SELECT set_config('app.user', '7', false)", &["app.user"]),
            (
                "SELECT pg_catalog.set_config( 'x.y' , 'v', false)",
                &["x.y"],
            ),
            ("SET TIME ZONE 'UTC'", &[]),
            ("UPDATE t SET a.b = 1", &["a.b"]),
        ];
        for (sql, want) in cases {
            assert_eq!(custom_names(sql), *want, "{sql}");
        }
    }

    #[test]
    fn capture_reads_custom_names_by_name() {
        assert!(!capture_sql(&BTreeSet::new()).contains("VALUES"));
        let names: BTreeSet<String> = ["a.b".to_string(), "o'k.x".to_string()].into();
        let sql = capture_sql(&names);
        assert!(sql.contains("VALUES ('a.b'), ('o''k.x')"), "{sql}");
    }

    #[test]
    fn normalize_sorts_and_dedups() {
        let rows = s(&[("b", "1"), ("a", "2"), ("b", "1")]);
        assert_eq!(normalize(rows), s(&[("a", "2"), ("b", "1")]));
    }
}
