//! Functions that make an otherwise read-only query unfit for a replica. Arbitrary
//! functions are allowed on replicas (a user function that writes fails there with
//! SQLSTATE 25006 and the proxy re-runs it on the primary), so this is a conservative
//! denylist of built-ins whose effect would be silently wrong on a replica or on a
//! pooled connection: sequences, locks and settings that outlive the statement, WAL and
//! replication control, and functions whose answer differs between primary and standby.

use super::{Class, PinReason};

/// What calling a function implies for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Effect {
    Class(Class),
    /// `set_config(name, value, is_local)`: session-wide unless `is_local` is `true`,
    /// which only the arguments tell.
    SetConfig,
}

/// Session-level advisory locks survive the transaction, so the session must keep its
/// backend until it unlocks (the `_xact_` variants end with the transaction).
const SESSION_LOCKS: &[&str] = &[
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];

/// Functions that leave other session state behind on the backend.
const SESSION_STATE: &[&str] = &["setseed", "dblink_connect", "dblink_connect_u"];

const WRITES: &[&str] = &[
    "nextval",
    "setval",
    "currval",
    "lastval",
    "pg_notify",
    "pg_promote",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_switch_wal",
    "pg_switch_xlog",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_logical_emit_message",
    "pg_replication_slot_advance",
    "pg_import_system_collations",
    "pg_log_backend_memory_contexts",
    "pg_stat_statements_reset",
    "pg_file_write",
    "pg_file_rename",
    "pg_file_unlink",
    "txid_current",
    "txid_current_if_assigned",
    "pg_current_xact_id",
    "pg_current_xact_id_if_assigned",
    // These fail or answer differently on a standby.
    "pg_current_wal_lsn",
    "pg_current_wal_insert_lsn",
    "pg_current_wal_flush_lsn",
    "pg_is_in_recovery",
    "dblink_exec",
    "lowrite",
    "lo_import",
    "lo_export",
];

/// Whole families, matched by prefix.
const WRITE_PREFIXES: &[&str] = &[
    "lo_",
    "pg_advisory_",
    "pg_try_advisory_",
    "pg_create_",
    "pg_drop_",
    "pg_copy_",
    "pg_replication_origin_",
    "pg_logical_slot_",
    "pg_stat_reset",
    "pg_wal_replay_",
];

fn eq(name: &[u8], known: &str) -> bool {
    name.eq_ignore_ascii_case(known.as_bytes())
}

fn starts(name: &[u8], prefix: &str) -> bool {
    name.get(..prefix.len())
        .is_some_and(|head| eq(head, prefix))
}

/// The routing effect of calling `name` (unqualified, as written; case is ignored even
/// for quoted names, which can only make the answer more conservative).
pub(super) fn call_effect(name: &[u8]) -> Option<Effect> {
    if eq(name, "set_config") {
        return Some(Effect::SetConfig);
    }
    if SESSION_LOCKS.iter().any(|f| eq(name, f)) {
        return Some(Effect::Class(Class::Pin(PinReason::AdvisoryLock)));
    }
    if SESSION_STATE.iter().any(|f| eq(name, f)) {
        return Some(Effect::Class(Class::Pin(PinReason::Other)));
    }
    if WRITES.iter().any(|f| eq(name, f)) || WRITE_PREFIXES.iter().any(|p| starts(name, p)) {
        return Some(Effect::Class(Class::Write));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denylist_matches_case_insensitively_and_by_family() {
        let pin_lock = Some(Effect::Class(Class::Pin(PinReason::AdvisoryLock)));
        let write = Some(Effect::Class(Class::Write));
        let cases: &[(&str, Option<Effect>)] = &[
            ("nextval", write),
            ("NextVal", write),
            ("pg_advisory_lock", pin_lock),
            ("PG_TRY_ADVISORY_LOCK_SHARED", pin_lock),
            ("pg_advisory_xact_lock", write),
            ("pg_advisory_unlock_all", write),
            ("pg_create_logical_replication_slot", write),
            ("lo_unlink", write),
            ("set_config", Some(Effect::SetConfig)),
            ("setseed", Some(Effect::Class(Class::Pin(PinReason::Other)))),
            ("now", None),
            ("count", None),
            ("nextval_", None),
            ("lo", None),
            ("", None),
        ];
        for (name, want) in cases {
            assert_eq!(call_effect(name.as_bytes()), *want, "{name}");
        }
    }
}
