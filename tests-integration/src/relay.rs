//! A TCP relay the test controls, standing in for the network between pgrelay
//! (or any client) and one node, so a test can partition that node away and heal
//! the partition without touching the server.
//!
//! While cut, the relay still accepts connections but forwards nothing and
//! answers nothing: a client sees its connect succeed and then its startup hang,
//! as when packets are dropped, rather than the quick "connection refused" of a
//! stopped server. The two are different failure modes for a health checker,
//! which is the point of having both.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// A relay from `127.0.0.1:<port()>` to `127.0.0.1:<target>`. Dropping it
/// closes its listener and every connection it holds.
pub struct Relay {
    port: u16,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

/// What went through a relay so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Connections forwarded to the target (connected while not cut).
    pub connections: u64,
    /// Connections accepted while cut and never forwarded.
    pub swallowed: u64,
    /// Bytes written to the target.
    pub bytes_to_target: u64,
    /// Bytes written back to clients.
    pub bytes_from_target: u64,
}

struct Shared {
    target: u16,
    /// `true` while cut. A watch, so connection tasks both wake on a change and
    /// can check the current state before forwarding each chunk.
    cut: watch::Sender<bool>,
    connections: AtomicU64,
    swallowed: AtomicU64,
    to_target: AtomicU64,
    from_target: AtomicU64,
}

impl Shared {
    fn is_cut(&self) -> bool {
        *self.cut.borrow()
    }
}

impl Relay {
    /// Listens on an ephemeral loopback port and forwards to `target`.
    ///
    /// # Panics
    /// Outside a tokio runtime, or if loopback cannot be bound (a broken test
    /// machine, not a condition a test could handle).
    pub fn start(target: u16) -> Relay {
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind relay");
        std_listener
            .set_nonblocking(true)
            .expect("nonblocking relay listener");
        let port = std_listener.local_addr().expect("relay address").port();
        let listener = TcpListener::from_std(std_listener).expect("relay listener");
        let shared = Arc::new(Shared {
            target,
            cut: watch::Sender::new(false),
            connections: AtomicU64::new(0),
            swallowed: AtomicU64::new(0),
            to_target: AtomicU64::new(0),
            from_target: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Relay { port, shared, task }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port connections are forwarded to.
    pub fn target(&self) -> u16 {
        self.shared.target
    }

    /// Partitions the target away: every relayed connection is closed, and no
    /// byte read after this returns is forwarded. New connections are accepted
    /// and held silent until [`Relay::restore`].
    pub fn cut(&self) {
        self.shared.cut.send_replace(true);
    }

    /// Heals the partition: new connections are forwarded again. Connections
    /// swallowed meanwhile are closed, as the far side never knew them.
    pub fn restore(&self) {
        self.shared.cut.send_replace(false);
    }

    /// Whether the relay is cut.
    pub fn is_cut(&self) -> bool {
        self.shared.is_cut()
    }

    /// Connections forwarded to the target so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Everything counted so far.
    pub fn stats(&self) -> RelayStats {
        let s = &self.shared;
        RelayStats {
            connections: s.connections.load(Ordering::Relaxed),
            swallowed: s.swallowed.load(Ordering::Relaxed),
            bytes_to_target: s.to_target.load(Ordering::Relaxed),
            bytes_from_target: s.from_target.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Relay {
    /// Aborting the accept loop drops its JoinSet, which aborts every
    /// connection task and so closes their sockets.
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        match listener.accept().await {
            Ok((client, _)) => {
                conns.spawn(serve(client, shared.clone()));
            }
            // Out of descriptors and the like: let connections finish first.
            Err(_) => tokio::task::yield_now().await,
        }
    }
}

async fn serve(client: TcpStream, shared: Arc<Shared>) {
    let mut cut = shared.cut.subscribe();
    if *cut.borrow_and_update() {
        shared.swallowed.fetch_add(1, Ordering::Relaxed);
        // Hold the socket unread; the client's bytes go nowhere.
        let _ = cut.wait_for(|c| !*c).await;
        return;
    }
    // A refused target closes the client, like a reset from a downed node.
    let Ok(target) = TcpStream::connect(("127.0.0.1", shared.target)).await else {
        return;
    };
    if shared.is_cut() {
        return;
    }
    shared.connections.fetch_add(1, Ordering::Relaxed);
    let _ = client.set_nodelay(true);
    let _ = target.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (target_read, target_write) = target.into_split();
    let both = async {
        tokio::join!(
            pump(client_read, target_write, &shared, &shared.to_target),
            pump(target_read, client_write, &shared, &shared.from_target),
        )
    };
    tokio::select! {
        _ = both => {}
        _ = cut.wait_for(|c| *c) => {}
    }
}

/// Copies one direction, checking the cut flag after every read so nothing read
/// after [`Relay::cut`] returned is delivered. EOF is passed on as a half-close,
/// so a client's Terminate-then-close reaches the server intact.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, shared: &Shared, count: &AtomicU64) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if shared.is_cut() {
            return;
        }
        let Some(chunk) = buf.get(..n) else { return };
        if to.write_all(chunk).await.is_err() {
            return;
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests;
