//! Classification of one statement in two steps over a single token stream: the
//! leading keywords decide the statement kind ([`Kind`]), then one scan of the remaining
//! tokens collects the few facts ([`Facts`]) that can turn a read into something else.

use super::functions::{call_effect, Effect};
use super::lexer::Tok;
use super::tokens::{is, is_any, Tokens};
use super::{Class, PinReason};

/// What one statement amounts to.
pub(super) enum Outcome {
    /// Nothing but `;`: the server answers EmptyQueryResponse.
    Empty,
    Class(Class),
    /// Unterminated literal or comment: the server rejects the whole string.
    Unlexable,
}

/// What the leading keywords decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// SELECT, VALUES, TABLE, WITH: read-only unless the body shows otherwise.
    Query,
    /// Settled by the leading keywords alone (function calls can still raise it).
    Fixed(Class),
    /// COPY: read-only only when copying out to the client.
    Copy,
    /// DECLARE: a query, unless the cursor is held past its transaction.
    Declare,
    /// CREATE without TEMP: still temporary if it names the `pg_temp` schema.
    Create,
}

/// Facts gathered by one pass over a statement's tokens.
#[derive(Debug)]
struct Facts {
    /// INSERT, UPDATE, DELETE or MERGE anywhere (data-modifying CTEs included).
    dml: bool,
    /// `FOR UPDATE / NO KEY UPDATE / SHARE / KEY SHARE`.
    row_lock: bool,
    /// `SELECT ... INTO` creates a table.
    into: bool,
    /// `INTO [LOCAL|GLOBAL] TEMP|TEMPORARY`.
    into_temp: bool,
    /// The `pg_temp` schema is named.
    pg_temp: bool,
    /// `WITH HOLD` before the cursor's query.
    with_hold: bool,
    copy: CopyTarget,
    /// Strongest effect of the function calls seen.
    calls: Class,
}

impl Facts {
    fn new() -> Self {
        Facts {
            dml: false,
            row_lock: false,
            into: false,
            into_temp: false,
            pg_temp: false,
            with_hold: false,
            copy: CopyTarget::Unknown,
            calls: Class::Read,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyTarget {
    Unknown,
    /// Saw a top-level TO; the next token says where.
    To,
    ToStdout,
    Elsewhere,
}

/// Tracks the arguments of an open `set_config(` call: only a literal `true` third
/// argument makes it transaction-local.
#[derive(Debug, Clone, Copy)]
struct SetConfigCall {
    depth: usize,
    commas: u8,
    third: ThirdArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ThirdArg {
    Empty,
    True,
    Other,
}

impl SetConfigCall {
    fn effect(self) -> Class {
        if self.commas == 2 && self.third == ThirdArg::True {
            Class::Write
        } else {
            Class::Session
        }
    }
}

/// Classifies the next statement, consuming it and its `;`. `None` at end of input.
pub(super) fn next_statement(toks: &mut Tokens<'_>) -> Option<Outcome> {
    match toks.peek()? {
        Tok::Semi => {
            toks.next();
            return Some(Outcome::Empty);
        }
        Tok::Error => return Some(Outcome::Unlexable),
        _ => {}
    }
    let (kind, explain) = head(toks);
    let Some(facts) = scan(toks) else {
        return Some(Outcome::Unlexable);
    };
    let class = evaluate(kind, &facts);
    // Plain EXPLAIN only plans, so nothing it names can outlive it.
    let class = match (explain, class) {
        (Some(false), Class::Pin(_)) => Class::Write,
        _ => class,
    };
    Some(Outcome::Class(class))
}

/// Reads the leading keywords. Returns the kind and, for EXPLAIN, whether it analyzes.
fn head(toks: &mut Tokens<'_>) -> (Kind, Option<bool>) {
    if toks.peek_word().is_some_and(|w| is(w, "EXPLAIN")) {
        toks.next();
        let analyze = explain_options(toks);
        return (head_word(toks), Some(analyze));
    }
    (head_word(toks), None)
}

fn explain_options(toks: &mut Tokens<'_>) -> bool {
    let mut analyze = false;
    if toks.peek() == Some(Tok::LParen) {
        let mut depth = 0usize;
        // Stops before `;` so the body scan still ends the statement there.
        while let Some(tok) = toks.peek().filter(|t| !matches!(t, Tok::Semi | Tok::Error)) {
            toks.next();
            match tok {
                Tok::LParen => depth += 1,
                Tok::RParen => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        break;
                    }
                }
                Tok::Word(w) if is_any(w, &["ANALYZE", "ANALYSE"]) => analyze = true,
                _ => {}
            }
        }
    } else {
        while let Some(w) = toks
            .peek_word()
            .filter(|w| is_any(w, &["ANALYZE", "ANALYSE", "VERBOSE"]))
        {
            analyze |= !is(w, "VERBOSE");
            toks.next();
        }
    }
    analyze
}

const QUERY_WORDS: &[&str] = &["SELECT", "VALUES", "TABLE", "WITH"];

fn head_word(toks: &mut Tokens<'_>) -> Kind {
    let Some(word) = toks.word_after_parens() else {
        return Kind::Fixed(Class::Write);
    };
    // Query-like kinds leave their first token to the body scan.
    if is_any(word, QUERY_WORDS) {
        return Kind::Query;
    }
    if toks.peek() == Some(Tok::LParen) {
        return Kind::Fixed(Class::Write);
    }
    if is(word, "DECLARE") {
        return Kind::Declare;
    }
    toks.next();
    let pin = |reason| Kind::Fixed(Class::Pin(reason));
    let next_is =
        |toks: &mut Tokens<'_>, kws: &[&str]| toks.peek_word().is_some_and(|w| is_any(w, kws));
    if is(word, "SHOW") {
        // Clients probe these to find a writable server: only the primary's answer is
        // the one they are asking for.
        let probes = [
            "transaction_read_only",
            "default_transaction_read_only",
            "in_hot_standby",
        ];
        Kind::Fixed(if next_is(toks, &probes) {
            Class::Write
        } else {
            Class::Read
        })
    } else if is_any(word, &["FETCH", "MOVE", "CLOSE"]) {
        Kind::Fixed(Class::Read)
    } else if is(word, "COPY") {
        Kind::Copy
    } else if is(word, "BEGIN") || (is(word, "START") && next_is(toks, &["TRANSACTION"])) {
        let _ = toks.eat("WORK") || toks.eat("TRANSACTION");
        Kind::Fixed(transaction_modes(toks))
    } else if is(word, "SET") {
        // Transaction-scoped forms end with the transaction the proxy already routes.
        if next_is(toks, &["LOCAL", "TRANSACTION", "CONSTRAINTS"]) {
            Kind::Fixed(Class::Write)
        } else {
            Kind::Fixed(Class::Session)
        }
    } else if is(word, "RESET") || is(word, "DISCARD") {
        // DISCARD ALL resets every setting; the other forms cost a needless read-back.
        Kind::Fixed(Class::Session)
    } else if is(word, "PREPARE") {
        // PREPARE TRANSACTION is two-phase commit, not a prepared statement.
        if next_is(toks, &["TRANSACTION"]) {
            Kind::Fixed(Class::Write)
        } else {
            pin(PinReason::Prepare)
        }
    } else if is(word, "LISTEN") {
        pin(PinReason::Listen)
    } else if is(word, "LOAD") {
        pin(PinReason::Load)
    } else if is(word, "CREATE") {
        while toks.eat("OR") || toks.eat("REPLACE") || toks.eat("GLOBAL") || toks.eat("LOCAL") {}
        if next_is(toks, &["TEMP", "TEMPORARY"]) {
            pin(PinReason::TempTable)
        } else {
            Kind::Create
        }
    } else {
        Kind::Fixed(Class::Write)
    }
}

/// `BEGIN`/`START TRANSACTION` modes: read-only only with an explicit `READ ONLY` and
/// nothing unexpected. SERIALIZABLE stays on the primary because a hot standby refuses it.
fn transaction_modes(toks: &mut Tokens<'_>) -> Class {
    let mut read_only = false;
    loop {
        match toks.peek() {
            None | Some(Tok::Semi) => break,
            Some(Tok::Comma) => {
                toks.next();
            }
            Some(Tok::Word(w)) => {
                toks.next();
                let ok = if is(w, "READ") {
                    // READ WRITE anywhere keeps the transaction on the primary.
                    read_only = toks.eat("ONLY");
                    read_only
                } else if is(w, "ISOLATION") {
                    toks.eat("LEVEL")
                        && ((toks.eat("READ")
                            && (toks.eat("COMMITTED") || toks.eat("UNCOMMITTED")))
                            || (toks.eat("REPEATABLE") && toks.eat("READ")))
                } else if is(w, "NOT") {
                    toks.eat("DEFERRABLE")
                } else {
                    is(w, "DEFERRABLE")
                };
                if !ok {
                    return Class::Write;
                }
            }
            Some(_) => return Class::Write,
        }
    }
    if read_only {
        Class::Read
    } else {
        Class::Write
    }
}

/// Consumes the rest of the statement, through its `;`. `None` if it cannot be lexed.
fn scan(toks: &mut Tokens<'_>) -> Option<Facts> {
    let mut facts = Facts::new();
    let mut after_into = false;
    let mut depth = 0usize;
    let mut prev: Option<Tok<'_>> = None;
    let mut set_config: Option<SetConfigCall> = None;
    let mut for_seen = false;
    while let Some(tok) = toks.next() {
        if let Some(call) = set_config.as_mut() {
            match tok {
                Tok::RParen if depth == call.depth => {
                    facts.calls = facts.calls.strongest(call.effect());
                    set_config = None;
                }
                Tok::Comma if depth == call.depth => call.commas = call.commas.saturating_add(1),
                _ if call.commas == 2 => {
                    let is_true =
                        depth == call.depth && matches!(tok, Tok::Word(w) if is(w, "true"));
                    call.third = match call.third {
                        ThirdArg::Empty if is_true => ThirdArg::True,
                        _ => ThirdArg::Other,
                    };
                }
                _ => {}
            }
        }
        if facts.copy == CopyTarget::To {
            let stdout = matches!(tok, Tok::Word(w) if is(w, "STDOUT"));
            facts.copy = if stdout {
                CopyTarget::ToStdout
            } else {
                CopyTarget::Elsewhere
            };
        }
        match tok {
            Tok::Semi => break,
            Tok::Error => return None,
            Tok::LParen => {
                let name = match prev {
                    Some(Tok::Word(w) | Tok::Quoted(w)) => call_effect(w),
                    // Escapes could spell any function name.
                    Some(Tok::UnicodeQuoted) => Some(Effect::Class(Class::Write)),
                    _ => None,
                };
                match name {
                    Some(Effect::Class(class)) => facts.calls = facts.calls.strongest(class),
                    Some(Effect::SetConfig) if set_config.is_none() => {
                        set_config = Some(SetConfigCall {
                            depth: depth + 1,
                            commas: 0,
                            third: ThirdArg::Empty,
                        });
                    }
                    Some(Effect::SetConfig) => facts.calls = facts.calls.strongest(Class::Session),
                    None => {}
                }
                depth += 1;
            }
            Tok::RParen => depth = depth.saturating_sub(1),
            Tok::Word(w) => {
                let after = |kw| matches!(prev, Some(Tok::Word(p)) if is(p, kw));
                facts.dml |= is_any(w, &["INSERT", "UPDATE", "DELETE", "MERGE"]);
                facts.row_lock |= after("FOR") && is_any(w, &["UPDATE", "SHARE", "NO", "KEY"]);
                facts.into |= is(w, "INTO");
                facts.into_temp |= after_into && is_any(w, &["TEMP", "TEMPORARY"]);
                after_into = is(w, "INTO") || (after_into && is_any(w, &["LOCAL", "GLOBAL"]));
                facts.pg_temp |= is(w, "pg_temp");
                facts.with_hold |= !for_seen && after("WITH") && is(w, "HOLD");
                for_seen |= depth == 0 && is(w, "FOR");
                if depth == 0 && facts.copy == CopyTarget::Unknown {
                    if is(w, "TO") {
                        facts.copy = CopyTarget::To;
                    } else if is(w, "FROM") {
                        facts.copy = CopyTarget::Elsewhere;
                    }
                }
            }
            Tok::Quoted(q) => facts.pg_temp |= q == b"pg_temp",
            _ => {}
        }
        if !matches!(tok, Tok::Word(_)) {
            after_into = false;
        }
        prev = Some(tok);
    }
    if let Some(call) = set_config {
        facts.calls = facts.calls.strongest(call.effect());
    }
    Some(facts)
}

fn query_class(facts: &Facts) -> Class {
    if facts.into {
        if facts.into_temp || facts.pg_temp {
            Class::Pin(PinReason::TempTable)
        } else {
            Class::Write
        }
    } else if facts.dml || facts.row_lock {
        Class::Write
    } else {
        Class::Read
    }
}

fn evaluate(kind: Kind, facts: &Facts) -> Class {
    let base = match kind {
        Kind::Query => query_class(facts),
        Kind::Fixed(class) => class,
        Kind::Copy if facts.copy == CopyTarget::ToStdout => query_class(facts),
        Kind::Copy => Class::Write,
        Kind::Declare if facts.with_hold => Class::Pin(PinReason::HoldCursor),
        Kind::Declare => query_class(facts),
        Kind::Create if facts.pg_temp => Class::Pin(PinReason::TempTable),
        Kind::Create => Class::Write,
    };
    base.strongest(facts.calls)
}
