//! What a statement does to the transaction block, judged from its first words.
//!
//! Used for one thing: after a write on the primary, pgrelay asks for the WAL position
//! that becomes the session's floor. When the write will leave the backend idle (an
//! autocommit statement, a COMMIT), the question can go out in the same write as the
//! statement, costing no round trip of its own. A wrong guess is harmless: the answer
//! counts only if the backend is idle after it, and otherwise the position is asked
//! again once the transaction is over. So anything unusual is `Unknown`, and only
//! `Unknown` keeps the old way (ask after the ReadyForQuery).

/// A statement's effect on the transaction block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxEffect {
    /// BEGIN, START TRANSACTION.
    Opens,
    /// COMMIT, END, ROLLBACK, ABORT (optionally WORK or TRANSACTION), nothing more.
    Closes,
    /// A single statement that neither opens nor closes one.
    Neither,
    /// Several statements, COPY (the backend then takes only copy data), comments in
    /// front, savepoints, `AND CHAIN`, two-phase commands: no guess.
    Unknown,
}

/// The effect of the SQL text of one Query or Parse.
pub fn tx_effect(sql: &[u8]) -> TxEffect {
    let mut sql = sql.trim_ascii();
    while let [rest @ .., b';'] = sql {
        sql = rest.trim_ascii_end();
    }
    if sql.contains(&b';') || sql.starts_with(b"--") || sql.starts_with(b"/*") {
        return TxEffect::Unknown; // several statements, or a ';' in a literal
    }
    let mut words = sql.split(u8::is_ascii_whitespace).filter(|w| !w.is_empty());
    let Some(first) = words.next() else {
        return TxEffect::Unknown;
    };
    let is = super::route::is_any;
    if is(first, &["BEGIN", "START"]) {
        TxEffect::Opens
    } else if is(first, &["COMMIT", "END", "ROLLBACK", "ABORT"]) {
        match (words.next(), words.next()) {
            (None, _) => TxEffect::Closes,
            (Some(w), None) if is(w, &["WORK", "TRANSACTION"]) => TxEffect::Closes,
            _ => TxEffect::Unknown,
        }
    } else if is(first, &["COPY", "PREPARE", "SAVEPOINT", "RELEASE"])
        || first.first().is_some_and(|b| !b.is_ascii_alphabetic())
    {
        // COPY switches the backend to copy data; the others are transaction-control
        // forms not worth guessing; `(SELECT ...)` and the like start with punctuation.
        TxEffect::Unknown
    } else {
        TxEffect::Neither
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TxEffect::*;

    #[test]
    fn effects() {
        let cases: &[(&str, TxEffect)] = &[
            ("BEGIN", Opens),
            ("begin;", Opens),
            ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE", Opens),
            ("COMMIT", Closes),
            ("END;", Closes),
            ("  rollback ;  ", Closes),
            ("ABORT", Closes),
            ("COMMIT WORK", Closes),
            ("ROLLBACK TRANSACTION;", Closes),
            ("COMMIT AND CHAIN", Unknown),
            ("ROLLBACK TO SAVEPOINT a", Unknown),
            ("ROLLBACK TO a", Unknown),
            ("COMMIT PREPARED 'x'", Unknown),
            ("PREPARE TRANSACTION 'x'", Unknown),
            ("SAVEPOINT a", Unknown),
            ("RELEASE SAVEPOINT a", Unknown),
            ("UPDATE t SET x = 1 WHERE id = 2", Neither),
            ("INSERT INTO t VALUES (1);", Neither),
            ("SELECT 1", Neither),
            ("UPDATE t SET x = 1; BEGIN", Unknown),
            ("SELECT ';'", Unknown),
            ("COPY t FROM STDIN", Unknown),
            ("copy t to stdout", Unknown),
            ("-- c\nCOMMIT", Unknown),
            ("/* c */ BEGIN", Unknown),
            ("(SELECT 1)", Unknown),
            ("", Unknown),
            (";", Unknown),
        ];
        for (sql, want) in cases {
            assert_eq!(tx_effect(sql.as_bytes()), *want, "{sql:?}");
        }
    }
}
