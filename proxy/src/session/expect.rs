//! What the session still expects from its backend, in order.
//!
//! PostgreSQL answers frontend messages strictly in order. pgrelay sometimes sends a
//! message the client did not (a Parse for a statement this backend lacks) or answers one
//! itself (ParseComplete for a statement already prepared there, CloseComplete). Keeping
//! one entry per answered message lets it drop the answers the client must not see and
//! put its own answers exactly where PostgreSQL would have put them, including after an
//! error, when PostgreSQL skips everything up to the next Sync.

use bytes::Bytes;
use std::collections::VecDeque;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// A Parse; `prepared` is the backend statement name it creates (un-marked if it
    /// fails); `forward` is false for a Parse pgrelay injected.
    Parse {
        prepared: Option<Box<str>>,
        forward: bool,
    },
    Bind,
    Describe,
    Execute,
    Close,
    Sync,
    /// A simple Query or FunctionCall: everything up to ReadyForQuery.
    Query,
    /// An answer pgrelay gives itself, sent to the client when it reaches the front.
    Synth(Bytes),
}

/// What to do with one backend message.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub forward: bool,
    /// ReadyForQuery arrived.
    pub ready: bool,
    /// Backend statement names that did not get created after all.
    pub unprepared: Vec<Box<str>>,
    /// pgrelay's own answers to send after this message, in order.
    pub synth: Vec<Bytes>,
}

#[derive(Debug, Default)]
pub struct Expectations {
    queue: VecDeque<Expect>,
    /// The backend reported an error in an extended-protocol batch whose Sync has not
    /// been sent yet: it ignores everything until that Sync, and so do we.
    skipping: bool,
}

impl Expectations {
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn skipping(&self) -> bool {
        self.skipping
    }

    pub fn clear(&mut self) {
        self.queue.clear();
        self.skipping = false;
    }

    /// Outstanding Sync/Query entries: each owes the client one ReadyForQuery.
    pub fn pending_ready(&self) -> usize {
        self.queue
            .iter()
            .filter(|e| matches!(e, Expect::Sync | Expect::Query))
            .count()
    }

    /// Record a message sent to the backend. Returns answers that are due right away
    /// (a synthesized answer with nothing in front of it).
    pub fn push(&mut self, e: Expect) -> Vec<Bytes> {
        if matches!(e, Expect::Sync) {
            self.skipping = false;
        }
        self.queue.push_back(e);
        self.drain_synth()
    }

    fn drain_synth(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(Expect::Synth(_)) = self.queue.front() {
            if let Some(Expect::Synth(b)) = self.queue.pop_front() {
                out.push(b);
            }
        }
        out
    }

    /// Account for one message from the backend.
    pub fn on_backend(&mut self, tag: u8) -> Outcome {
        let mut out = Outcome {
            forward: true,
            ..Outcome::default()
        };
        // Messages that may arrive at any time and answer nothing.
        if matches!(tag, b'N' | b'S' | b'A') {
            return out;
        }
        let Some(front) = self.queue.front() else {
            return out;
        };
        let ends = match front {
            Expect::Parse { .. } => tag == b'1',
            Expect::Bind => tag == b'2',
            Expect::Describe => matches!(tag, b'T' | b'n'),
            Expect::Execute => matches!(tag, b'C' | b'I' | b's'),
            Expect::Close => tag == b'3',
            Expect::Sync | Expect::Query => tag == b'Z',
            Expect::Synth(_) => false,
        };
        if let Expect::Parse { forward: false, .. } = front {
            out.forward = tag == b'E';
        }
        if tag == b'E' && !matches!(front, Expect::Sync | Expect::Query) {
            // An error ends this message and makes the backend skip to the next Sync.
            while let Some(e) = self.queue.front() {
                if matches!(e, Expect::Sync) {
                    break;
                }
                if let Some(Expect::Parse {
                    prepared: Some(name),
                    ..
                }) = self.queue.pop_front()
                {
                    out.unprepared.push(name);
                }
            }
            if self.queue.is_empty() {
                self.skipping = true;
            }
            return out;
        }
        if ends {
            self.queue.pop_front();
            out.ready = tag == b'Z';
            out.synth = self.drain_synth();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synth(s: &'static str) -> Expect {
        Expect::Synth(Bytes::from_static(s.as_bytes()))
    }

    /// Feed a sequence of backend tags; return the forwarded tags and synthesized answers
    /// interleaved as the client would see them.
    fn run(exp: &mut Expectations, tags: &[u8]) -> Vec<String> {
        let mut seen = Vec::new();
        for &t in tags {
            let o = exp.on_backend(t);
            if o.forward {
                seen.push((t as char).to_string());
            }
            for s in o.synth {
                seen.push(String::from_utf8_lossy(&s).into_owned());
            }
        }
        seen
    }

    #[test]
    fn injected_parse_is_hidden_and_synth_lands_in_order() {
        let mut e = Expectations::default();
        assert!(e
            .push(Expect::Parse {
                prepared: Some("pgr_x".into()),
                forward: false
            })
            .is_empty());
        e.push(Expect::Bind);
        e.push(Expect::Execute);
        e.push(synth("<3>"));
        e.push(Expect::Sync);
        let seen = run(&mut e, b"12DDCZ");
        assert_eq!(seen, ["2", "D", "D", "C", "<3>", "Z"]);
        assert!(e.is_empty());
    }

    #[test]
    fn synth_with_nothing_in_front_is_due_at_once() {
        let mut e = Expectations::default();
        let due = e.push(synth("<1>"));
        assert_eq!(due.len(), 1);
        assert!(e.is_empty());
    }

    #[test]
    fn error_skips_to_sync_and_unmarks_statements() {
        let mut e = Expectations::default();
        e.push(Expect::Parse {
            prepared: Some("a".into()),
            forward: true,
        });
        e.push(Expect::Bind);
        e.push(Expect::Parse {
            prepared: Some("b".into()),
            forward: true,
        });
        e.push(synth("<1>"));
        e.push(Expect::Execute);
        e.push(Expect::Sync);
        let o = e.on_backend(b'E');
        assert!(o.forward);
        assert_eq!(
            o.unprepared,
            vec![Box::<str>::from("a"), Box::<str>::from("b")]
        );
        assert!(
            o.synth.is_empty(),
            "answers after an error are skipped, as PostgreSQL does"
        );
        assert_eq!(run(&mut e, b"Z"), ["Z"]);
        assert!(e.is_empty() && !e.skipping());
    }

    #[test]
    fn error_before_sync_was_sent_skips_until_it_is() {
        let mut e = Expectations::default();
        e.push(Expect::Parse {
            prepared: None,
            forward: true,
        });
        e.push(Expect::Describe);
        assert!(e.on_backend(b'E').forward);
        assert!(e.skipping());
        e.push(Expect::Sync);
        assert!(!e.skipping());
        assert_eq!(run(&mut e, b"Z"), ["Z"]);
    }

    #[test]
    fn simple_query_keeps_going_after_an_error() {
        let mut e = Expectations::default();
        e.push(Expect::Query);
        assert_eq!(run(&mut e, b"TDCEZ"), ["T", "D", "C", "E", "Z"]);
        assert!(e.is_empty());
        assert_eq!(e.pending_ready(), 0);
    }

    #[test]
    fn describe_statement_ends_at_row_description_or_nodata() {
        for tags in [&b"tT"[..], &b"tn"[..]] {
            let mut e = Expectations::default();
            e.push(Expect::Describe);
            e.push(synth("<x>"));
            let seen = run(&mut e, tags);
            assert_eq!(seen.last().map(String::as_str), Some("<x>"), "{tags:?}");
        }
    }

    #[test]
    fn async_messages_never_consume_an_entry() {
        let mut e = Expectations::default();
        e.push(Expect::Bind);
        assert_eq!(run(&mut e, b"NSA2"), ["N", "S", "A", "2"]);
        assert!(e.is_empty());
    }
}
