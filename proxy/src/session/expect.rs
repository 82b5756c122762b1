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
    /// pgrelay's own message (settings, evictions): nothing it causes reaches the client.
    Hidden(Hidden),
    /// Not an answer: where the client's CopyDone/CopyFail sits in the stream, sent
    /// before the backend announced COPY IN. It tells which earlier Syncs the backend
    /// will ignore (PostgreSQL ignores Sync and Flush during copy-in).
    CopyEnd,
    /// Not an answer: the client's Parse just before it made statement `id` under
    /// `client` name in the session. If an error makes the backend skip that Parse, the
    /// session must forget the statement, as PostgreSQL never created it.
    Named {
        client: Box<str>,
        id: u64,
    },
}

/// The kinds of message pgrelay sends on its own behalf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hidden {
    /// A simple query whose result nobody needs.
    Query,
    /// A simple query whose DataRows are the session's settings.
    Capture,
    /// Close of an evicted statement (CloseComplete).
    Close,
    /// The Sync that follows hidden Closes.
    Sync,
    /// A query that leaves the backend in a failed transaction: its error is expected.
    Abort,
    /// The primary's WAL insert position after a committed write: the session's floor.
    WriteLsn,
    /// A replica's replay position, checked before a read that is held back until the
    /// answer shows the replica is at the session's floor.
    ReplayCheck,
    /// A replica's replay position after a read: an upper bound of what the read saw.
    /// It may run inside the client's transaction, so an error is no reason for alarm.
    ReplayAfter,
}

impl Hidden {
    /// Kinds whose single DataRow is a WAL position.
    pub fn reads_lsn(self) -> bool {
        matches!(
            self,
            Hidden::WriteLsn | Hidden::ReplayCheck | Hidden::ReplayAfter
        )
    }
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
    /// A DataRow of a [`Hidden::Capture`] query.
    pub captured_row: bool,
    /// A DataRow carrying a WAL position, and which kind of query asked for it.
    pub lsn_row: Option<Hidden>,
    /// An ErrorResponse to a hidden message (already kept from the client).
    pub hidden_error: bool,
    /// A hidden message got its last answer.
    pub hidden_done: Option<Hidden>,
    /// Client statements (name, id) whose Parse did not run.
    pub unregistered: Vec<(Box<str>, u64)>,
}

#[derive(Debug, Default)]
pub struct Expectations {
    queue: VecDeque<Expect>,
    /// The backend reported an error in an extended-protocol batch whose Sync has not
    /// been sent yet: it ignores everything until that Sync, and so do we.
    skipping: bool,
    /// The backend is in extended-protocol COPY IN and the client has not ended it yet:
    /// Syncs sent now are ignored by the backend, so they owe nothing.
    copy_in: bool,
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
        self.copy_in = false;
    }

    /// pgrelay refused a message of an extended batch itself: like the backend after
    /// an error, ignore the rest of the batch until its Sync.
    pub fn skip_to_sync(&mut self) {
        self.skipping = true;
    }

    /// Does the client wait for any answer (rather than only pgrelay for its own)?
    pub fn client_waiting(&self) -> bool {
        self.queue.iter().any(|e| {
            !matches!(
                e,
                Expect::Hidden(_) | Expect::Named { .. } | Expect::CopyEnd
            )
        })
    }

    /// Is one of pgrelay's own messages of this kind still to be answered?
    pub fn awaits(&self, kind: Hidden) -> bool {
        self.queue.contains(&Expect::Hidden(kind))
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
        match e {
            Expect::Sync if self.copy_in => return Vec::new(),
            Expect::CopyEnd if self.copy_in => {
                self.copy_in = false;
                return Vec::new();
            }
            // A copy end with nothing in front of it ends no COPY: nothing to mark.
            Expect::CopyEnd if self.queue.is_empty() => return Vec::new(),
            Expect::Sync => self.skipping = false,
            _ => {}
        }
        self.queue.push_back(e);
        self.drain_synth()
    }

    /// The backend entered COPY IN for the message at the front. For an Execute, the
    /// Syncs the client sent before its CopyDone/CopyFail will be ignored: drop them,
    /// and drop further ones until the copy ends.
    fn copy_in_started(&mut self) {
        let extended = matches!(self.queue.front(), Some(Expect::Execute));
        let end = self.queue.iter().position(|e| matches!(e, Expect::CopyEnd));
        let stop = end.unwrap_or(self.queue.len());
        if extended {
            let mut i = 1;
            let mut stop = stop;
            while i < stop {
                if matches!(self.queue[i], Expect::Sync) {
                    self.queue.remove(i);
                    stop -= 1;
                } else {
                    i += 1;
                }
            }
            match end {
                Some(_) => {
                    self.queue.remove(stop);
                }
                None => self.copy_in = true,
            }
        } else if let Some(i) = end {
            self.queue.remove(i);
        }
    }

    /// Markers only matter while the message in front of them runs.
    fn settle(&mut self) {
        while matches!(
            self.queue.front(),
            Some(Expect::CopyEnd | Expect::Named { .. })
        ) {
            self.queue.pop_front();
        }
    }

    /// A message answering one of pgrelay's own: kept from the client, except
    /// notifications, which belong to the session whoever's query carried them.
    fn on_hidden(&mut self, kind: Hidden, tag: u8) -> Outcome {
        let mut out = Outcome {
            forward: tag == b'A',
            ..Outcome::default()
        };
        out.captured_row = kind == Hidden::Capture && tag == b'D';
        out.lsn_row = (kind.reads_lsn() && tag == b'D').then_some(kind);
        out.hidden_error = tag == b'E' && !matches!(kind, Hidden::Abort | Hidden::ReplayAfter);
        let ends = match kind {
            Hidden::Close => tag == b'3' || tag == b'E',
            _ => tag == b'Z',
        };
        if ends {
            self.queue.pop_front();
            out.hidden_done = Some(kind);
            out.synth = self.drain_synth();
            self.settle();
        }
        out
    }

    fn drain_synth(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(Expect::Synth(_) | Expect::Named { .. }) = self.queue.front() {
            if let Some(Expect::Synth(b)) = self.queue.pop_front() {
                out.push(b);
            }
        }
        out
    }

    /// Would [`Self::on_backend`] only forward this message, changing nothing? Then the
    /// caller may pass it on without looking at it: the rows and row descriptions that
    /// are most of what a backend sends.
    pub fn passes(&self, tag: u8) -> bool {
        let ends = match self.queue.front() {
            Some(Expect::Parse { forward: true, .. }) => tag == b'1',
            Some(Expect::Bind) => tag == b'2',
            Some(Expect::Describe) => matches!(tag, b'T' | b'n'),
            Some(Expect::Execute) => matches!(tag, b'C' | b'I' | b's'),
            Some(Expect::Close) => tag == b'3',
            Some(Expect::Sync | Expect::Query) => tag == b'Z',
            _ => return false,
        };
        !ends && !matches!(tag, b'E' | b'G' | b'S' | b'Z')
    }

    /// Account for one message from the backend.
    pub fn on_backend(&mut self, tag: u8) -> Outcome {
        let mut out = Outcome {
            forward: true,
            ..Outcome::default()
        };
        self.settle();
        if let Some(Expect::Hidden(kind)) = self.queue.front() {
            return self.on_hidden(*kind, tag);
        }
        // Messages that may arrive at any time and answer nothing.
        if matches!(tag, b'N' | b'S' | b'A') {
            return out;
        }
        if tag == b'G' {
            self.copy_in_started();
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
            Expect::Synth(_) | Expect::CopyEnd | Expect::Hidden(_) | Expect::Named { .. } => false,
        };
        if let Expect::Parse { forward: false, .. } = front {
            out.forward = tag == b'E';
        }
        if tag == b'E' {
            // A failed COPY IN is over; the backend honours the next Sync again.
            self.copy_in = false;
        }
        if tag == b'E' && !matches!(front, Expect::Sync | Expect::Query) {
            // An error ends this message and makes the backend skip to the next Sync.
            while let Some(e) = self.queue.front() {
                if matches!(e, Expect::Sync | Expect::Hidden(Hidden::Sync)) {
                    break;
                }
                match self.queue.pop_front() {
                    Some(Expect::Parse {
                        prepared: Some(name),
                        ..
                    }) => out.unprepared.push(name),
                    Some(Expect::Named { client, id }) => out.unregistered.push((client, id)),
                    _ => {}
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
            self.settle();
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
    fn skipped_parses_are_unregistered_and_confirmed_ones_are_not() {
        let named = |c: &str, id| Expect::Named {
            client: c.into(),
            id,
        };
        let parse = || Expect::Parse {
            prepared: Some("pgr_a".into()),
            forward: true,
        };
        let mut e = Expectations::default();
        // good: ParseComplete answered; bad: fails; later: skipped; then a Sync.
        e.push(parse());
        e.push(named("good", 1));
        e.push(parse());
        e.push(named("bad", 2));
        e.push(synth("<1>"));
        e.push(named("later", 3));
        e.push(Expect::Sync);
        assert!(e.on_backend(b'1').unregistered.is_empty());
        let o = e.on_backend(b'E');
        let got: Vec<&str> = o.unregistered.iter().map(|(c, _)| &**c).collect();
        assert_eq!(got, ["bad", "later"]);
        assert!(e.on_backend(b'Z').ready);
        assert!(e.is_empty());
        // With nothing in front, a marker is settled at once.
        e.push(synth("<1>"));
        e.push(named("x", 4));
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

    /// tokio-postgres sends Bind/Execute/Sync and waits for CopyInResponse; the Sync is
    /// ignored by the backend and only the one after CopyDone is answered.
    #[test]
    fn syncs_during_extended_copy_in_owe_nothing() {
        let mut e = Expectations::default();
        e.push(Expect::Bind);
        e.push(Expect::Execute);
        e.push(Expect::Sync);
        assert_eq!(run(&mut e, b"2G"), ["2", "G"]);
        e.push(Expect::Sync); // a second stray Sync while copying
        e.push(Expect::CopyEnd);
        e.push(Expect::Sync);
        assert_eq!(e.pending_ready(), 1);
        assert_eq!(run(&mut e, b"CZ"), ["C", "Z"]);
        assert!(e.is_empty());
    }

    #[test]
    fn pipelined_copy_in_keeps_the_sync_after_copy_done() {
        let mut e = Expectations::default();
        for x in [
            Expect::Bind,
            Expect::Execute,
            Expect::Sync,
            Expect::CopyEnd,
            Expect::Sync,
        ] {
            e.push(x);
        }
        assert_eq!(run(&mut e, b"2GCZ"), ["2", "G", "C", "Z"]);
        assert!(e.is_empty());
    }

    #[test]
    fn failed_extended_copy_in_skips_to_the_next_sync() {
        let mut e = Expectations::default();
        e.push(Expect::Bind);
        e.push(Expect::Execute);
        e.push(Expect::Sync);
        run(&mut e, b"2G");
        assert_eq!(run(&mut e, b"E"), ["E"]);
        assert!(e.skipping());
        e.push(Expect::Sync);
        assert_eq!(run(&mut e, b"Z"), ["Z"]);
        assert!(e.is_empty());
    }

    #[test]
    fn simple_copy_in_leaves_no_marker_behind() {
        let mut e = Expectations::default();
        e.push(Expect::Query);
        run(&mut e, b"G");
        e.push(Expect::CopyEnd);
        assert_eq!(run(&mut e, b"CZ"), ["C", "Z"]);
        assert!(e.is_empty());
    }

    #[test]
    fn async_messages_never_consume_an_entry() {
        let mut e = Expectations::default();
        e.push(Expect::Bind);
        assert_eq!(run(&mut e, b"NSA2"), ["N", "S", "A", "2"]);
        assert!(e.is_empty());
    }
}

#[cfg(test)]
mod hidden_tests {
    use super::*;

    #[test]
    fn hidden_query_answers_never_reach_the_client() {
        let mut e = Expectations::default();
        e.push(Expect::Hidden(Hidden::Capture));
        e.push(Expect::Query);
        let mut rows = 0;
        let mut seen = Vec::new();
        for &t in b"SNTDDACZTCZ" {
            let o = e.on_backend(t);
            rows += usize::from(o.captured_row);
            if o.forward {
                seen.push(t as char);
            }
        }
        assert_eq!(rows, 2);
        assert_eq!(seen, ['A', 'T', 'C', 'Z']);
        assert!(e.is_empty());
    }

    #[test]
    fn hidden_error_is_reported_not_forwarded() {
        let mut e = Expectations::default();
        e.push(Expect::Hidden(Hidden::Query));
        let o = e.on_backend(b'E');
        assert!(o.hidden_error && !o.forward);
        let o = e.on_backend(b'Z');
        assert_eq!(o.hidden_done, Some(Hidden::Query));
        assert!(!o.ready && !o.forward);
    }

    #[test]
    fn evictions_then_client_batch() {
        let mut e = Expectations::default();
        e.push(Expect::Hidden(Hidden::Close));
        e.push(Expect::Hidden(Hidden::Close));
        e.push(Expect::Hidden(Hidden::Sync));
        e.push(Expect::Bind);
        e.push(Expect::Sync);
        let seen: Vec<char> = b"33Z2Z"
            .iter()
            .filter(|&&t| e.on_backend(t).forward)
            .map(|&t| t as char)
            .collect();
        assert_eq!(seen, ['2', 'Z']);
        assert!(e.is_empty());
    }

    fn any_expect() -> impl proptest::strategy::Strategy<Value = Expect> {
        use proptest::prelude::*;
        prop_oneof![
            any::<bool>().prop_map(|forward| Expect::Parse {
                prepared: Some("s".into()),
                forward
            }),
            Just(Expect::Bind),
            Just(Expect::Describe),
            Just(Expect::Execute),
            Just(Expect::Close),
            Just(Expect::Sync),
            Just(Expect::Query),
            Just(Expect::Synth(Bytes::from_static(b"x"))),
            Just(Expect::Hidden(Hidden::Query)),
            Just(Expect::Hidden(Hidden::Capture)),
            Just(Expect::Hidden(Hidden::Close)),
            Just(Expect::Hidden(Hidden::WriteLsn)),
            Just(Expect::CopyEnd),
            Just(Expect::Named {
                client: "c".into(),
                id: 1
            }),
        ]
    }

    proptest::proptest! {
        /// A message `passes` only if `on_backend` would forward it and change nothing,
        /// whatever the queue: the fast path can never skip bookkeeping.
        #[test]
        fn passing_messages_change_nothing(
            queue in proptest::collection::vec(any_expect(), 0..5),
            tags in proptest::collection::vec(
                proptest::sample::select(b"123nstTDCIsEGZSNAdcHWV".to_vec()), 1..12),
        ) {
            let mut exp = Expectations::default();
            for e in queue {
                exp.push(e);
            }
            for tag in tags {
                let before = exp.queue.clone();
                let (skipping, copy_in) = (exp.skipping, exp.copy_in);
                let passes = exp.passes(tag);
                let o = exp.on_backend(tag);
                if passes {
                    proptest::prop_assert_eq!(&o, &Outcome { forward: true, ..Outcome::default() });
                    proptest::prop_assert_eq!(&exp.queue, &before);
                    proptest::prop_assert_eq!((exp.skipping, exp.copy_in), (skipping, copy_in));
                }
            }
        }
    }

    #[test]
    fn rows_pass_and_their_query_s_end_does_not() {
        let mut exp = Expectations::default();
        exp.push(Expect::Query);
        for (tag, passes) in [
            (b'T', true),
            (b'D', true),
            (b'C', true),
            (b'N', true),
            (b'S', false),
            (b'E', false),
            (b'Z', false),
        ] {
            assert_eq!(exp.passes(tag), passes, "{}", tag as char);
        }
        // The engine reads these itself whatever they answer.
        let mut bind = Expectations::default();
        bind.push(Expect::Bind);
        for tag in [b'Z', b'S', b'E'] {
            assert!(!bind.passes(tag), "{}", tag as char);
        }
        exp.push(Expect::Hidden(Hidden::WriteLsn));
        exp.on_backend(b'Z');
        assert!(!exp.passes(b'D'), "a hidden query's row is pgrelay's own");
    }
}
