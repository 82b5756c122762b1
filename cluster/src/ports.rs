//! Free loopback ports.
//!
//! Asking the kernel for port 0 and releasing it leaves a window in which someone
//! else may take the port; the process-wide set stops our own parallel tests
//! from being handed the same one, and callers retry on "address in use" for
//! the rest.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::{Mutex, OnceLock};

use crate::ClusterError;

fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static SET: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    SET.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Returns a loopback port no other caller in this process has received.
///
/// Ports are never returned to the set: a dropped cluster's port may linger in
/// use by dying processes, and the kernel's range is large enough.
pub fn free_port() -> Result<u16, ClusterError> {
    for _ in 0..1000 {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .map_err(|e| ClusterError::io("bind 127.0.0.1:0", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| ClusterError::io("local_addr", e))?
            .port();
        drop(listener);
        let mut set = handed_out().lock().unwrap_or_else(|p| p.into_inner());
        if set.insert(port) {
            return Ok(port);
        }
    }
    Err(ClusterError::Topology(
        "could not find a free loopback port".into(),
    ))
}

/// True when something accepts TCP connections on 127.0.0.1:`port`.
pub fn accepting(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_across_threads() {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(|| (0..25).map(|_| free_port().unwrap()).collect::<Vec<_>>())
            })
            .collect();
        let mut all = HashSet::new();
        for h in handles {
            for p in h.join().unwrap() {
                assert!(p > 0);
                assert!(all.insert(p), "port {p} handed out twice");
            }
        }
    }

    #[test]
    fn accepting_sees_a_listener() {
        let l = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(accepting(port));
        drop(l);
        assert!(!accepting(port));
    }
}
