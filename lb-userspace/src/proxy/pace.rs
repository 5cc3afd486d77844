//! `rateLimitSessions`: accept pacing. Each level (global, frontend, the
//! pool's profile) has one [`RateGate`] shared by every worker; a worker
//! waits until all gates of its frontend allow a connection before it
//! accepts the next one. Nothing is refused: the connections wait in the
//! kernel's accept backlog. A level that leaves the axis off has an open
//! gate.

use crate::limits::rate::RateGate;

/// Waits while any gate is spent, without taking (`maxSslRate`: full
/// handshakes are charged when they finish). Returns whether it waited.
pub async fn pause_while_spent(gates: &[&RateGate]) -> bool {
    let mut waited = false;
    loop {
        let wait = gates.iter().map(|g| g.wait()).max().unwrap_or_default();
        if wait.is_zero() {
            return waited;
        }
        waited = true;
        tokio::time::sleep(wait).await;
    }
}

/// Waits until every gate allows one more connection, then takes from
/// each. Returns whether it had to wait.
pub async fn admit(gates: &[&RateGate]) -> bool {
    let mut waited = false;
    loop {
        let wait = gates.iter().map(|g| g.wait()).max().unwrap_or_default();
        if wait.is_zero() {
            for g in gates {
                g.take();
            }
            return waited;
        }
        waited = true;
        tokio::time::sleep(wait).await;
    }
}
