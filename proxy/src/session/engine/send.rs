//! Client messages on their way to a backend: statement names rewritten, statements the
//! backend lacks prepared on the fly, and every message recorded in the expectations so
//! the answers can be matched up.

use super::*;
use crate::session::tx_effect::{tx_effect, TxEffect};
use bytes::BufMut;

impl<S: AsyncRead + AsyncWrite + Unpin> Engine<S> {
    /// Translate one client message for the leased backend and record what it owes.
    pub(super) fn send(&mut self, f: Frame) -> Result<(), ClientError> {
        self.send_classified(f, None)
    }

    /// [`Self::send`] for a Query or Parse whose SQL was classified already (`class`,
    /// from [`super::super::route::unit_classes`]).
    pub(super) fn send_classified(
        &mut self,
        f: Frame,
        class: Option<Class>,
    ) -> Result<(), ClientError> {
        let tag = f.tag();
        if self.exp.skipping() && tag != b'S' {
            return Ok(()); // the backend would ignore it until Sync, as PostgreSQL does
        }
        let Some(lease) = self.lease.as_mut() else {
            return Err(ClientError::NoNode);
        };
        if matches!(tag, b'Q' | b'E' | b'F') {
            match self.hold.as_mut() {
                Some(hold) => hold.statements += 1,
                None => self.ctx.stats.routed(lease.node(), self.lease_reason),
            }
        }
        if matches!(tag, b'Q' | b'S' | b'F') {
            self.unit_sent.push_back(std::time::Instant::now());
        }
        let conn = lease.conn();
        let mut due = Vec::new();
        let mut pin = None;
        let mut named: Option<(Box<str>, u64)> = None;
        // May this message make the session's transaction write? (Reads the router
        // proved read-only cannot; anything else, a FunctionCall included, may.)
        let mut writes = tag == b'F';
        // A unit ends here: what it does to the transaction block, and whether it may
        // write.
        let mut ends: Option<(TxEffect, bool)> = None;
        match tag {
            b'P' => {
                let p = protocol::frontend::parse(&f)?;
                let class = class.unwrap_or_else(|| router::classify(p.sql));
                if let Class::Pin(r) = class {
                    pin = Some(r);
                }
                if class == Class::Session {
                    self.custom_names
                        .extend(super::settings::custom_names(p.sql));
                }
                if !p.name.is_empty() && self.stmts.get(p.name).is_some() {
                    // As PostgreSQL: a named statement must be closed before reuse.
                    let msg = format!("prepared statement \"{}\" already exists", p.name);
                    due = self
                        .exp
                        .push(Expect::Synth(crate::errors::error("42P05", &msg)));
                    self.exp.skip_to_sync();
                } else if p.name.is_empty() {
                    let effect = effect_of(class, p.sql.as_bytes());
                    let stmt = Statement::new("".into(), f.as_bytes().clone(), class, effect);
                    conn.unnamed = Some(stmt.id);
                    named = Some(("".into(), stmt.id));
                    self.stmts.insert("", stmt);
                    self.wbuf.extend_from_slice(f.as_bytes());
                    due = self.exp.push(Expect::Parse {
                        prepared: None,
                        forward: true,
                    });
                } else {
                    let name = backend_name(p.sql, p.param_types);
                    let parse = protocol::frontend::rewrite_parse_name(&f, &name)?;
                    let client_name = p.name.to_string();
                    let effect = effect_of(class, p.sql.as_bytes());
                    let stmt = Statement::new(name.clone(), parse.clone(), class, effect);
                    named = Some((client_name.as_str().into(), stmt.id));
                    self.stmts.insert(&client_name, stmt);
                    if conn.prepared.contains(&name) {
                        due = self
                            .exp
                            .push(Expect::Synth(protocol::backend::parse_complete()));
                    } else {
                        conn.prepared.insert(name.clone());
                        self.wbuf.extend_from_slice(&parse);
                        due = self.exp.push(Expect::Parse {
                            prepared: Some(name),
                            forward: true,
                        });
                    }
                }
            }
            b'B' => {
                let b = protocol::frontend::bind(&f)?;
                let stmt = self.stmts.get(b.statement).map(|s| &**s);
                if stmt.is_some_and(|s| s.class == Class::Session) {
                    self.settings_dirty = true;
                }
                writes = stmt.is_none_or(|s| matches!(s.class, Class::Write | Class::Pin(_)));
                let effect = stmt.map_or(TxEffect::Unknown, |s| s.tx_effect);
                self.unit_end = Some(match self.unit_end {
                    None => (effect, writes),
                    // Several statements in one unit.
                    Some((_, wrote)) => (TxEffect::Unknown, wrote || writes),
                });
                forward_renamed(
                    conn,
                    stmt,
                    &f,
                    protocol::frontend::write_bind_statement,
                    &mut self.wbuf,
                    &mut self.exp,
                )?;
                due = self.exp.push(Expect::Bind);
            }
            b'D' | b'C' => {
                let d = if tag == b'D' {
                    protocol::frontend::describe(&f)?
                } else {
                    protocol::frontend::close(&f)?
                };
                if d.kind == ObjectKind::Statement {
                    let stmt = self.stmts.get(d.name).cloned();
                    if tag == b'C' {
                        // Server-side statements are shared by name; the client's is gone.
                        let name = d.name.to_string();
                        self.stmts.remove(&name);
                        due = self
                            .exp
                            .push(Expect::Synth(protocol::backend::close_complete()));
                    } else {
                        forward_renamed(
                            conn,
                            stmt.as_deref(),
                            &f,
                            protocol::frontend::write_describe_or_close_name,
                            &mut self.wbuf,
                            &mut self.exp,
                        )?;
                        due = self.exp.push(Expect::Describe);
                    }
                } else {
                    self.wbuf.extend_from_slice(f.as_bytes());
                    due = self.exp.push(if tag == b'D' {
                        Expect::Describe
                    } else {
                        Expect::Close
                    });
                }
            }
            b'E' => {
                self.wbuf.extend_from_slice(f.as_bytes());
                due = self.exp.push(Expect::Execute);
            }
            b'S' => {
                self.wbuf.extend_from_slice(f.as_bytes());
                due = self.exp.push(Expect::Sync);
                ends = self.unit_end.take();
            }
            b'Q' => {
                // Classified already (so decoded) unless it came straight on.
                let (sql, class) = match class {
                    Some(class) => (protocol::frontend::query_bytes_accepted(&f), class),
                    None => {
                        let sql = protocol::frontend::query_bytes(&f)?;
                        (sql, router::classify_bytes(sql))
                    }
                };
                writes = matches!(class, Class::Write | Class::Pin(_));
                match class {
                    Class::Pin(r) => pin = Some(r),
                    Class::Session => {
                        self.settings_dirty = true;
                        let sql = protocol::frontend::query(&f)?;
                        self.custom_names.extend(super::settings::custom_names(sql));
                    }
                    _ => {}
                }
                // Only a pinned session has pins to end. (A query that pins does not
                // release: its own pin is taken below.)
                if self.pinned.is_some() {
                    if let Some(r) = crate::session::route::releases(sql) {
                        self.order += 1;
                        self.releasing = Some((r, self.order));
                    }
                }
                if drops_statements(sql) {
                    // The server forgets every prepared statement; so must we.
                    conn.prepared.clear();
                    conn.own_prepared = [false; 2];
                }
                conn.unnamed = None;
                self.stmts.forget_unnamed();
                self.wbuf.extend_from_slice(f.as_bytes());
                due = self.exp.push(Expect::Query);
                ends = Some((effect_of(class, sql), writes));
            }
            b'F' => {
                self.wbuf.extend_from_slice(f.as_bytes());
                due = self.exp.push(Expect::Query);
            }
            b'c' | b'f' => {
                self.wbuf.extend_from_slice(f.as_bytes());
                due = self.exp.push(Expect::CopyEnd);
            }
            b'H' | b'd' => self.wbuf.extend_from_slice(f.as_bytes()),
            other => return Err(ClientError::UnexpectedMessage(other as char)),
        }
        if matches!(tag, b'Q' | b'B' | b'F' | b'E') {
            // A read on the primary counts too when the floor is kept: what it saw may
            // be ahead of every replica, and later reads must not go back from it.
            match self.route {
                Some(Route::Primary(_)) if writes || self.level.tracks_floor() => self.wrote = true,
                Some(Route::Replica(_)) => self.replica_dirty = true,
                _ => {}
            }
        }
        if let (Some(named), Some(hold)) = (&named, self.hold.as_mut()) {
            hold.registered.push(named.clone());
        }
        if let Some((client, id)) = named {
            due.extend(self.exp.push(Expect::Named { client, id }));
        }
        for b in due {
            self.out.extend_from_slice(&b);
        }
        if let Some(reason) = pin {
            self.pin(reason);
        }
        if is_boundary(tag) {
            self.streaming = tag == b'H';
        } else if !matches!(tag, b'd' | b'c' | b'f') {
            self.streaming = true;
        }
        self.flushed = tag == b'H';
        if let Some((effect, writes)) = ends {
            self.ask_position_with(effect, writes)?;
        }
        Ok(())
    }
}

/// What a statement does to the transaction block, as far as asking for the write
/// position goes: only statements that may write ask, so a read's text is not scanned.
fn effect_of(class: Class, sql: &[u8]) -> TxEffect {
    match class {
        Class::Write | Class::Pin(_) => tx_effect(sql),
        Class::Read | Class::Session => TxEffect::Unknown,
    }
}

/// Send `f`, which names the client statement `stmt`, under the name the statement has
/// on the backend, preparing it there first if needed. A statement pgrelay does not know
/// goes as it is, so PostgreSQL answers with its own "does not exist" error.
fn forward_renamed(
    conn: &mut crate::backend::BackendConn,
    stmt: Option<&Statement>,
    f: &Frame,
    rename: fn(&Frame, &str, &mut BytesMut) -> Result<(), protocol::DecodeError>,
    wbuf: &mut BytesMut,
    exp: &mut Expectations,
) -> Result<(), ClientError> {
    match stmt {
        Some(stmt) => {
            ensure_prepared(conn, stmt, wbuf, exp);
            if stmt.is_unnamed() {
                wbuf.extend_from_slice(f.as_bytes());
            } else {
                rename(f, &stmt.backend_name, wbuf)?;
            }
        }
        None => wbuf.extend_from_slice(f.as_bytes()),
    }
    Ok(())
}

/// Make sure `stmt` exists on this backend, injecting its Parse (whose answer the client
/// must not see) if it does not.
fn ensure_prepared(
    conn: &mut crate::backend::BackendConn,
    stmt: &Statement,
    wbuf: &mut BytesMut,
    exp: &mut Expectations,
) {
    if stmt.is_unnamed() {
        if conn.unnamed == Some(stmt.id) {
            return;
        }
        conn.unnamed = Some(stmt.id);
        wbuf.extend_from_slice(&stmt.parse);
        exp.push(Expect::Parse {
            prepared: None,
            forward: false,
        });
    } else if !conn.prepared.contains(&stmt.backend_name) {
        conn.prepared.insert(stmt.backend_name.clone());
        wbuf.put_slice(&stmt.parse);
        exp.push(Expect::Parse {
            prepared: Some(stmt.backend_name.clone()),
            forward: false,
        });
    }
}

/// `DISCARD ALL` and `DEALLOCATE ALL` drop every prepared statement on the server. Any
/// DISCARD or DEALLOCATE is treated so: being wrong only costs a re-prepare.
fn drops_statements(sql: &[u8]) -> bool {
    let head = sql.trim_ascii_start();
    let starts = |kw: &str| {
        head.get(..kw.len())
            .is_some_and(|h| h.eq_ignore_ascii_case(kw.as_bytes()))
    };
    starts("discard") || starts("deallocate")
}

#[cfg(test)]
mod tests {
    #[test]
    fn statement_dropping_commands() {
        for (sql, want) in [
            ("DISCARD ALL", true),
            ("  deallocate q", true),
            ("DeAlLoCaTe ALL;", true),
            ("discard", true),
            ("SELECT 1", false),
            ("disc", false),
            ("", false),
            ("é", false),
        ] {
            assert_eq!(super::drops_statements(sql.as_bytes()), want, "{sql:?}");
        }
    }
}
