//! Health checks: one task per backend of every pool with `health = {...}`,
//! run on the main thread's runtime (never on a worker).
//!
//! A `tcp` check passes when a connect succeeds within the timeout; an
//! `http` check sends `GET path HTTP/1.1` with `Connection: close` and
//! passes when the status line carries the expected status. `fall`
//! consecutive failures take an up backend down; `rise` consecutive passes
//! bring a down backend back. Every transition is logged once.

use std::sync::{atomic::Ordering::Relaxed, Arc};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinHandle,
};
use tracing::{info, warn};

use super::Pool;
use crate::config::{Health, HealthKind};

/// Starts the checks of one pool; abort the handles to stop them.
#[must_use]
pub fn spawn(pool: &Arc<Pool>, health: &Health) -> Vec<JoinHandle<()>> {
    (0..pool.backends.len())
        .map(|i| {
            let pool = Arc::clone(pool);
            let health = health.clone();
            tokio::spawn(async move { check_loop(pool, i, health).await })
        })
        .collect()
}

async fn check_loop(pool: Arc<Pool>, index: usize, health: Health) {
    let Some(addr) = pool.backends.get(index).map(|b| b.addr) else {
        return;
    };
    let mut passes = 0u64;
    let mut failures = 0u64;
    let mut ticker = tokio::time::interval(health.interval.0);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let outcome = check_once(addr, &health).await;
        let up = pool.backends[index].is_up();
        match outcome {
            Ok(()) => {
                failures = 0;
                passes += 1;
                if !up && passes >= health.rise.0 {
                    pool.set_up(index, true);
                    info!(pool = %pool.name, backend = %addr, passes, "backend up: health checks pass");
                }
            }
            Err(why) => {
                passes = 0;
                failures += 1;
                pool.backends[index].check_failures.fetch_add(1, Relaxed);
                if up && failures >= health.fall.0 {
                    pool.set_up(index, false);
                    warn!(pool = %pool.name, backend = %addr, failures, %why, "backend down: health checks fail");
                }
            }
        }
    }
}

/// One check; the error says why it failed.
async fn check_once(addr: std::net::SocketAddr, health: &Health) -> Result<(), String> {
    let run = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        if health.kind == HealthKind::Tcp {
            return Ok(());
        }
        let host = health.host.clone().unwrap_or_else(|| addr.to_string());
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lb-health\r\nConnection: close\r\n\r\n",
            health.path
        );
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        // The status line fits in the first read of any real server; read
        // until a line ends or 1 KiB arrived.
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 512];
        while !buf.contains(&b'\n') && buf.len() < 1024 {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let status = parse_status(&buf).ok_or_else(|| "no HTTP status line".to_owned())?;
        if status == health.expect.0 {
            Ok(())
        } else {
            Err(format!("status {status}, expected {}", health.expect.0))
        }
    };
    match tokio::time::timeout(health.timeout.0, run).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", health.timeout.0)),
    }
}

/// The status code of `HTTP/1.x NNN ...`.
fn parse_status(buf: &[u8]) -> Option<u64> {
    let line = buf.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parse_status;

    #[test]
    fn status_lines_parse_and_garbage_does_not() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            parse_status(b"HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b""), None);
    }
}
