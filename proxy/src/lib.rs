//! pgrelay: a PostgreSQL replication proxy. Writes go to the primary, reads to replicas,
//! over pooled backend connections, speaking the PostgreSQL wire protocol to clients.
//!
//! Layout: `config` (YAML + environment, validated before any port is bound), `app`
//! (wiring and the accept loop), `session` (one client: login, routing, forwarding),
//! `pool` and `backend` (server connections), `cancel` (cancel-key mapping), `errors`
//! (the one place errors become ErrorResponses), `demo` (a local cluster to try it on).

pub mod admin;
pub mod app;
pub mod backend;
pub mod cancel;
pub mod config;
pub mod demo;
pub mod errors;
pub mod metrics;
pub mod pool;
pub mod prepared;
pub mod reload;
pub mod session;
pub mod stats;

/// The routing vocabulary (`Topology`, `NodeState`, ...), for embedders and tests that
/// inspect the live topology.
pub use router;
