//! Token cursor for the statement classifier: one token of lookahead over the lazy
//! lexer, plus case-insensitive keyword tests that never allocate a lowercased copy.

use super::lexer::{Lexer, Tok};

/// A lexer with one token of lookahead.
///
/// The lookahead is a token and a flag rather than an `Option<Option<Tok>>`: moving the
/// nested option in and out compiled to unaligned partial copies that stalled the CPU
/// on every token (`cargo bench -p router --bench classify`, pgbench's `-S` query:
/// 184 ns with the nested option, 155 ns without).
///
/// For the same reason the lexer's `next` and everything it calls per token are inlined
/// into `peek` and `next`, and they into the statement scan: a token is 24 bytes, so a
/// call returns it through memory, and reading it back right after the callee's narrower
/// stores defeats store forwarding (`perf annotate`: half the classifier's samples on
/// that load). Inlined, the token stays in registers: 155 -> 102 ns for `-S`, 790 -> 489
/// ns for a join with an IN list.
pub(super) struct Tokens<'a> {
    lexer: Lexer<'a>,
    peeked: Option<Tok<'a>>,
    has_peeked: bool,
}

impl<'a> Tokens<'a> {
    pub(super) fn new(lexer: Lexer<'a>) -> Self {
        Tokens {
            lexer,
            peeked: None,
            has_peeked: false,
        }
    }

    pub(super) fn ambiguous(&self) -> bool {
        self.lexer.ambiguous()
    }

    #[inline(always)]
    pub(super) fn peek(&mut self) -> Option<Tok<'a>> {
        if !self.has_peeked {
            self.peeked = self.lexer.next();
            self.has_peeked = true;
        }
        self.peeked
    }

    #[inline(always)]
    pub(super) fn next(&mut self) -> Option<Tok<'a>> {
        if self.has_peeked {
            self.has_peeked = false;
            self.peeked
        } else {
            self.lexer.next()
        }
    }

    pub(super) fn peek_word(&mut self) -> Option<&'a [u8]> {
        match self.peek() {
            Some(Tok::Word(w)) => Some(w),
            _ => None,
        }
    }

    /// Consumes the next token if it is the keyword `kw`.
    pub(super) fn eat(&mut self, kw: &str) -> bool {
        let hit = self.peek_word().is_some_and(|w| is(w, kw));
        if hit {
            self.next();
        }
        hit
    }

    /// The first token after a run of `(`, without consuming anything: `((SELECT 1))`
    /// is a query, and the body scan must still see the parentheses.
    pub(super) fn word_after_parens(&mut self) -> Option<&'a [u8]> {
        if self.peek() != Some(Tok::LParen) {
            return self.peek_word();
        }
        match self.lexer.clone().find(|t| *t != Tok::LParen) {
            Some(Tok::Word(w)) => Some(w),
            _ => None,
        }
    }
}

pub(super) fn is(word: &[u8], kw: &str) -> bool {
    word.eq_ignore_ascii_case(kw.as_bytes())
}

pub(super) fn is_any(word: &[u8], kws: &[&str]) -> bool {
    kws.iter().any(|kw| is(word, kw))
}
