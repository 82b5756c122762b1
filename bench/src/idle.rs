//! Idle client sessions for the memory measurement: each connects, logs in (the proxy
//! must use `trust`), waits for ReadyForQuery and then just stays open.

use anyhow::{bail, Context, Result};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Logins in flight at once: enough to be quick, few enough that the listen backlog
/// never overflows (a dropped SYN costs a 1 s retransmit).
const CONCURRENT_LOGINS: usize = 128;
const LOGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Opens `n` logged-in idle sessions to 127.0.0.1:`port`.
pub async fn open(port: u16, n: usize) -> Result<Vec<TcpStream>> {
    let gate = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_LOGINS));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            tokio::time::timeout(LOGIN_TIMEOUT, login(port))
                .await
                .context("login timed out")?
        }));
    }
    let mut sessions = Vec::with_capacity(n);
    for t in tasks {
        sessions.push(t.await.context("login task")??);
    }
    Ok(sessions)
}

async fn login(port: u16) -> Result<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .context("connect")?;
    s.write_all(&startup_packet(&[
        ("user", cluster::APP_USER),
        ("database", cluster::APP_DB),
        ("application_name", "pgrelay-bench-idle"),
    ]))
    .await?;
    loop {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await.context("read message")?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        s.read_exact(&mut body).await.context("read message body")?;
        match head[0] {
            b'Z' => return Ok(s),
            b'E' => bail!("login refused: {}", String::from_utf8_lossy(&body)),
            b'R' if body.get(..4) != Some(&[0, 0, 0, 0]) => {
                bail!("the proxy asks for a password: the memory test needs `auth: trust`")
            }
            _ => {}
        }
    }
}

pub fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_packet_layout() {
        let p = startup_packet(&[("user", "a")]);
        assert_eq!(&p[..4], &(p.len() as u32).to_be_bytes());
        assert_eq!(&p[4..8], &[0, 3, 0, 0]);
        assert_eq!(&p[8..], b"user\0a\0\0");
    }
}
