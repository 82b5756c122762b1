//! PostgreSQL v3 wire protocol for pgrelay, without I/O.
//!
//! The proxy feeds socket bytes into [`parse_frame`] / [`parse_startup`], inspects the
//! few messages routing needs through the borrowing decoders in [`frontend`] and
//! [`backend`], and forwards the original [`Frame`] bytes untouched. Nothing here panics
//! on malformed input: every failure is a typed error.

pub mod auth;
pub mod backend;
mod decode;
pub mod frame;
pub mod frontend;
pub mod sqlstate;
pub mod startup;

pub use auth::{AuthError, BackendAuth, ScramServer, ScramVerifier};
pub use backend::{
    error_response, notice_response, AuthRequest, ErrorFields, ErrorMessage, Severity, TxStatus,
};
pub use decode::DecodeError;
pub use frame::{parse_frame, peek_frame, Frame, FrameError, Peeked};
pub use frontend::{Bind, Execute, ObjectKind, Parse, Target};
pub use startup::{parse_startup, StartupError, StartupMessage, StartupRequest};

/// Default bound on one message's length field. Large enough for big Bind/CopyData
/// payloads (PostgreSQL's own limit for most messages is 1 GB, but a proxy buffering a
/// whole message should refuse far less); configurable by passing another `max_len`.
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024 * 1024;
