//! The floor under every proxy: a relay that copies bytes between each client and a
//! server connection of its own, reading nothing of the protocol (no pooling, routing,
//! parsing or statistics), on one tokio thread like pgrelay's default on 2 cores.
//! Whatever it costs is the price of the extra hop itself (kernel wake-ups, socket
//! copies, the event loop), which no proxy on this machine can go below; what a proxy
//! costs beyond it is that proxy's own work.
//!
//! It runs as a child of the bench (`pgrelay-bench --bare-relay LISTEN TO`), so its CPU
//! time is measured per transaction like the proxies'.

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};

/// Serves 127.0.0.1:`listen`, relaying each client to 127.0.0.1:`to`, until killed.
pub fn serve(listen: u16, to: u16) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", listen))
            .await
            .with_context(|| format!("bind 127.0.0.1:{listen}"))?;
        loop {
            let (client, _) = listener.accept().await?;
            tokio::spawn(async move {
                // A client the server refuses just loses its connection.
                let _ = relay(client, to).await;
            });
        }
    })
}

async fn relay(mut client: TcpStream, to: u16) -> std::io::Result<()> {
    let mut server = TcpStream::connect(("127.0.0.1", to)).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener as StdListener;

    /// Bytes go both ways unchanged, through a relay on its own thread.
    #[test]
    fn relays_both_ways() {
        let server = StdListener::bind("127.0.0.1:0").unwrap();
        let to = server.local_addr().unwrap().port();
        let listen = cluster::free_port().unwrap();
        std::thread::spawn(move || serve(listen, to));
        let echo = std::thread::spawn(move || {
            let (mut s, _) = server.accept().unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
            buf.reverse();
            s.write_all(&buf).unwrap();
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut c = loop {
            match std::net::TcpStream::connect(("127.0.0.1", listen)) {
                Ok(c) => break c,
                Err(e) if std::time::Instant::now() > deadline => panic!("relay not up: {e}"),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        };
        c.write_all(b"hello").unwrap();
        let mut got = [0u8; 5];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"olleh");
        echo.join().unwrap();
    }
}
