//! A single-pass SQL tokenizer that mirrors PostgreSQL's `scan.l` wherever token
//! boundaries are at stake: if we disagreed with the server about where a literal or a
//! comment ends, a write could hide from the classifier. Everything whose exact value
//! does not matter for routing (numbers, operators, string contents) is only skipped.
//!
//! Tokens borrow byte slices of the input, so lexing never allocates. Working on bytes is
//! safe for UTF-8 input because every byte of a multi-byte character is >= 0x80, which
//! PostgreSQL treats as an identifier letter and which never equals a delimiter.

/// One token. Keywords are not distinguished from identifiers here: the classifier
/// compares [`Tok::Word`]s case-insensitively where position tells it a keyword is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tok<'a> {
    /// Unquoted identifier or keyword, as written.
    Word(&'a [u8]),
    /// Contents of a `"quoted identifier"`, with any `""` still doubled.
    Quoted(&'a [u8]),
    /// `U&"..."`: its escapes can spell any name, so its value is never trusted.
    UnicodeQuoted,
    /// Any string constant: `'..'`, `E'..'`, `B'..'`, `X'..'`, `U&'..'`, `$tag$..$tag$`.
    Str,
    Number,
    /// `$1`-style parameter.
    Param,
    Semi,
    LParen,
    RParen,
    Comma,
    /// Any other single byte (operators, `.`, `::`, brackets...). Operators are split into
    /// bytes because only their boundaries with comments matter, and PostgreSQL ends an
    /// operator wherever `--` or `/*` starts.
    Punct(u8),
    /// An unterminated literal, quoted identifier or comment. Nothing after it is lexed:
    /// the server rejects the whole string, and we must not guess what it meant.
    Error,
}

/// How backslashes and quotes behave inside a string constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quoting {
    /// `'...'`: `''` escapes a quote; a backslash escapes only if the server runs with
    /// `standard_conforming_strings = off`, which the lexer cannot know.
    Plain,
    /// `E'...'`: `''` and backslash escapes.
    Escape,
    /// `U&'...'`: `''` only (the server refuses it when backslashes would escape).
    Unicode,
    /// `B'...'`, `X'...'`: the first quote ends it.
    Bit,
}

#[derive(Debug, Clone)]
pub(crate) struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
    /// Lex plain strings as `standard_conforming_strings = off` would.
    backslash_escapes: bool,
    /// A plain string contained a backslash, so its extent depends on a server setting.
    ambiguous: bool,
}

impl<'a> Lexer<'a> {
    pub(crate) fn new(sql: &'a str, backslash_escapes: bool) -> Self {
        Lexer {
            src: sql.as_bytes(),
            pos: 0,
            backslash_escapes,
            ambiguous: false,
        }
    }

    /// True once a plain string with a backslash was lexed: the caller must then also
    /// classify under the other `standard_conforming_strings` setting.
    pub(crate) fn ambiguous(&self) -> bool {
        self.ambiguous
    }

    fn at(&self, i: usize) -> Option<u8> {
        self.src.get(i).copied()
    }

    fn fail(&mut self) -> Tok<'a> {
        self.pos = self.src.len();
        Tok::Error
    }

    fn slice(&self, from: usize, to: usize) -> &'a [u8] {
        self.src.get(from..to).unwrap_or_default()
    }

    /// Skips whitespace and comments; `None` if a block comment never ends.
    #[inline(always)]
    fn skip_trivia(&mut self) -> Option<()> {
        loop {
            match self.at(self.pos) {
                Some(b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) => self.pos += 1,
                Some(b'-') if self.at(self.pos + 1) == Some(b'-') => {
                    self.pos = self.line_end(self.pos);
                }
                Some(b'/') if self.at(self.pos + 1) == Some(b'*') => {
                    self.pos = self.block_comment_end(self.pos)?;
                }
                _ => return Some(()),
            }
        }
    }

    /// Position of the newline ending a `--` comment (or the end of input).
    fn line_end(&self, from: usize) -> usize {
        let rest = self.src.get(from..).unwrap_or_default();
        from + rest
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .unwrap_or(rest.len())
    }

    /// Block comments nest in PostgreSQL (unlike the SQL standard's reading of many
    /// other databases), so `/* /* */ DELETE */` is entirely a comment.
    fn block_comment_end(&self, start: usize) -> Option<usize> {
        let mut depth = 0usize;
        let mut i = start;
        while let Some(b) = self.at(i) {
            match (b, self.at(i + 1)) {
                (b'/', Some(b'*')) => {
                    depth += 1;
                    i += 2;
                }
                (b'*', Some(b'/')) => {
                    depth = depth.saturating_sub(1);
                    i += 2;
                    if depth == 0 {
                        return Some(i);
                    }
                }
                _ => i += 1,
            }
        }
        None
    }

    /// After a closing quote: if only whitespace containing a newline (and `--`
    /// comments) separates it from another quote, the server continues the same literal,
    /// in the same quoting mode. Returns the position just inside the continuation.
    fn continuation(&self, mut i: usize) -> Option<usize> {
        let mut newline = false;
        loop {
            match self.at(i)? {
                b' ' | b'\t' | 0x0b | 0x0c => i += 1,
                b'\n' | b'\r' => {
                    newline = true;
                    i += 1;
                }
                b'-' if self.at(i + 1) == Some(b'-') => i = self.line_end(i),
                b'\'' if newline => return Some(i + 1),
                _ => return None,
            }
        }
    }

    fn string(&mut self, body: usize, quoting: Quoting) -> Tok<'a> {
        let quoting = match quoting {
            Quoting::Plain if self.backslash_escapes => Quoting::Escape,
            q => q,
        };
        let mut i = body;
        loop {
            match self.at(i) {
                None => return self.fail(),
                Some(b'\'') => {
                    if quoting != Quoting::Bit && self.at(i + 1) == Some(b'\'') {
                        i += 2;
                    } else if let Some(next) = self.continuation(i + 1) {
                        i = next;
                    } else {
                        self.pos = i + 1;
                        return Tok::Str;
                    }
                }
                Some(b'\\') if quoting == Quoting::Escape => i += 2,
                Some(b'\\') => {
                    if quoting == Quoting::Plain {
                        self.ambiguous = true;
                    }
                    i += 1;
                }
                Some(_) => i += 1,
            }
        }
    }

    /// Scans a `"..."` identifier whose contents start at `body`; `None` if unterminated.
    fn quoted_end(&self, body: usize) -> Option<usize> {
        let mut i = body;
        loop {
            match self.at(i)? {
                b'"' if self.at(i + 1) == Some(b'"') => i += 2,
                b'"' => return Some(i),
                _ => i += 1,
            }
        }
    }

    fn quoted(&mut self, body: usize, unicode: bool) -> Tok<'a> {
        match self.quoted_end(body) {
            None => self.fail(),
            Some(end) => {
                self.pos = end + 1;
                if unicode {
                    Tok::UnicodeQuoted
                } else {
                    Tok::Quoted(self.slice(body, end))
                }
            }
        }
    }

    /// `$1` is a parameter; `$$` or `$tag$` opens a dollar quote that ends only at the
    /// identical (case-sensitive) delimiter; any other `$` is a lone character.
    fn dollar(&mut self, start: usize) -> Tok<'a> {
        let mut i = start + 1;
        if self.at(i).is_some_and(|b| b.is_ascii_digit()) {
            while self.at(i).is_some_and(|b| b.is_ascii_digit()) {
                i += 1;
            }
            self.pos = i;
            return Tok::Param;
        }
        if self.at(i).is_some_and(is_ident_start) {
            i += 1;
            while self
                .at(i)
                .is_some_and(|b| is_ident_start(b) || b.is_ascii_digit())
            {
                i += 1;
            }
        }
        if self.at(i) != Some(b'$') {
            self.pos = start + 1;
            return Tok::Punct(b'$');
        }
        let delim = self.slice(start, i + 1);
        let body = self.src.get(i + 1..).unwrap_or_default();
        match body.windows(delim.len()).position(|w| w == delim) {
            Some(at) => {
                self.pos = i + 1 + at + delim.len();
                Tok::Str
            }
            None => self.fail(),
        }
    }

    /// Only the integer/decimal/exponent shapes are consumed: a letter after a number
    /// starts a new token (as in PostgreSQL before 15; later versions reject the input).
    fn number(&mut self, start: usize) -> Tok<'a> {
        let digits = |lx: &Self, mut i: usize| {
            while lx.at(i).is_some_and(|b| b.is_ascii_digit() || b == b'_') {
                i += 1;
            }
            i
        };
        let mut i = digits(self, start);
        if self.at(i) == Some(b'.') && self.at(i + 1) != Some(b'.') {
            i = digits(self, i + 1);
        }
        if matches!(self.at(i), Some(b'e' | b'E')) {
            let sign = usize::from(matches!(self.at(i + 1), Some(b'+' | b'-')));
            if self.at(i + 1 + sign).is_some_and(|b| b.is_ascii_digit()) {
                i = digits(self, i + 1 + sign);
            }
        }
        self.pos = i;
        Tok::Number
    }

    /// An identifier, unless it is a one-letter prefix glued to a quote (`E'`, `B'`,
    /// `X'`, `U&'`, `U&"`), which the server lexes as a literal of that kind.
    #[inline(always)]
    fn word(&mut self, start: usize) -> Tok<'a> {
        if matches!(self.at(start + 1), Some(b'\'' | b'&')) {
            let first = self.at(start).unwrap_or_default().to_ascii_lowercase();
            match (first, self.at(start + 1), self.at(start + 2)) {
                (b'e', Some(b'\''), _) => return self.string(start + 2, Quoting::Escape),
                (b'b' | b'x', Some(b'\''), _) => return self.string(start + 2, Quoting::Bit),
                (b'u', Some(b'&'), Some(b'\'')) => return self.string(start + 3, Quoting::Unicode),
                (b'u', Some(b'&'), Some(b'"')) => return self.quoted(start + 3, true),
                _ => {}
            }
        }
        let mut i = start + 1;
        while let Some(&b) = self.src.get(i) {
            if !IDENT_CONT[usize::from(b)] {
                break;
            }
            i += 1;
        }
        self.pos = i;
        Tok::Word(self.slice(start, i))
    }
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

/// Bytes that continue an identifier (letters, digits, `_`, `$`, any byte of a
/// multi-byte character), as a table: the classifier runs on every statement, and
/// identifiers are most of its bytes.
static IDENT_CONT: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80;
        i += 1;
    }
    table
};

impl<'a> Iterator for Lexer<'a> {
    type Item = Tok<'a>;

    /// Always inlined, with `skip_trivia` and `word`: see `Tokens` for why.
    #[inline(always)]
    fn next(&mut self) -> Option<Tok<'a>> {
        if self.skip_trivia().is_none() {
            return Some(self.fail());
        }
        let start = self.pos;
        let b = self.at(start)?;
        let single = |lx: &mut Self, tok| {
            lx.pos = start + 1;
            tok
        };
        Some(match b {
            b';' => single(self, Tok::Semi),
            b'(' => single(self, Tok::LParen),
            b')' => single(self, Tok::RParen),
            b',' => single(self, Tok::Comma),
            b'\'' => self.string(start + 1, Quoting::Plain),
            b'"' => self.quoted(start + 1, false),
            b'$' => self.dollar(start),
            b'0'..=b'9' => self.number(start),
            b'.' if self.at(start + 1).is_some_and(|c| c.is_ascii_digit()) => self.number(start),
            b if is_ident_start(b) => self.word(start),
            b => single(self, Tok::Punct(b)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Tok::*;

    fn lex(sql: &str) -> Vec<Tok<'_>> {
        Lexer::new(sql, false).collect()
    }

    #[test]
    fn token_boundaries_follow_postgres() {
        let cases: &[(&str, &[Tok<'_>])] = &[
            ("", &[]),
            ("  -- only a comment", &[]),
            ("/* a /* nested */ comment */", &[]),
            ("SELECT 1;", &[Word(b"SELECT"), Number, Semi]),
            ("a$b $1", &[Word(b"a$b"), Param]),
            ("'it''s' x", &[Str, Word(b"x")]),
            ("E'\\'' x", &[Str, Word(b"x")]),
            ("e'\\\\' x", &[Str, Word(b"x")]),
            ("B'01''x'", &[Str, Str]),
            ("U&'d\\0061t' x", &[Str, Word(b"x")]),
            ("U&\"a\" x", &[UnicodeQuoted, Word(b"x")]),
            ("\"a\"\"b\" x", &[Quoted(b"a\"\"b"), Word(b"x")]),
            ("$$ ; $$ x", &[Str, Word(b"x")]),
            ("$a$ $b$ $A$ $a$ x", &[Str, Word(b"x")]),
            ("$1$", &[Param, Punct(b'$')]),
            ("$ab x", &[Punct(b'$'), Word(b"ab"), Word(b"x")]),
            (
                "1.5e-3 .5 1..2",
                &[Number, Number, Number, Punct(b'.'), Number],
            ),
            ("1e'x'", &[Number, Str]),
            ("+-- c\n*/* c */", &[Punct(b'+'), Punct(b'*')]),
            ("'a'\n'b' x", &[Str, Word(b"x")]),
            ("'a' 'b'", &[Str, Str]),
            ("'a' -- c\n  'b' x", &[Str, Word(b"x")]),
            ("E'a'\n'\\'' x", &[Str, Word(b"x")]),
            ("'unterminated", &[Error]),
            ("E'\\", &[Error]),
            ("\"unterminated", &[Error]),
            ("/* /* */", &[Error]),
            ("$q$ never", &[Error]),
            ("ok 'bad", &[Word(b"ok"), Error]),
            ("żółw", &[Word("żółw".as_bytes())]),
        ];
        for (sql, want) in cases {
            assert_eq!(lex(sql), *want, "{sql:?}");
        }
    }

    #[test]
    fn backslash_in_plain_string_is_ambiguous() {
        for (sql, ambiguous) in [("'a\\b'", true), ("E'a\\b'", false), ("'ab'", false)] {
            let mut lx = Lexer::new(sql, false);
            lx.by_ref().for_each(drop);
            assert_eq!(lx.ambiguous(), ambiguous, "{sql:?}");
        }
        let off: Vec<_> = Lexer::new("'a\\' x'", true).collect();
        assert_eq!(off, [Str]);
    }
}
