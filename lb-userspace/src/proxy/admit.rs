//! Admission by the limits in force, for both frontend modes: `maxConn` on
//! client connections (global and frontend levels, refused at once when
//! over), `maxSessRate` on new sessions (all three levels), and the pool's
//! `maxConn` with its queue. Each refusal is counted and logged here under
//! the level and axis that refused; what the client is told is up to the
//! mode ([`super::http`]: 503, [`super::tcp`]: close).

use super::FrontendCtx;
use std::sync::Arc;

use crate::limits::{
    live::Scope,
    rate::try_take_all,
    slots::{ConnLimit, Permit, Refused},
    Axis, Level,
};

/// A refusal: who refused, and the words for the log and the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The level.
    pub level: Level,
    /// The axis.
    pub axis: Axis,
    /// Why, in a few words.
    pub why: &'static str,
}

/// Slots a client connection holds at the global and frontend levels.
#[derive(Debug)]
pub struct ConnPermits(#[allow(dead_code, reason = "held for their Drop")] Vec<Permit>);

/// Takes a connection slot at the global and the frontend level.
///
/// # Errors
/// The first level at its `maxConn`.
pub async fn connection(ctx: &FrontendCtx) -> Result<ConnPermits, Refusal> {
    let [global, frontend, _] = ctx.shared.live.levels(ctx.index);
    slots(
        ctx,
        &[global, frontend],
        |s| &s.conns,
        Axis::MaxConn,
        "too many connections",
    )
    .await
}

/// Takes a `maxSslConn` slot at every level (TLS frontends).
///
/// # Errors
/// The first level at its `maxSslConn`.
pub async fn ssl_connection(ctx: &FrontendCtx) -> Result<ConnPermits, Refusal> {
    let levels = ctx.shared.live.levels(ctx.index);
    slots(
        ctx,
        &levels,
        |s| &s.ssl_conns,
        Axis::MaxSslConn,
        "too many TLS connections (fatal alert)",
    )
    .await
}

/// A slot of `limit` at each of `scopes`, or the refusal of the first
/// that has none.
async fn slots(
    ctx: &FrontendCtx,
    scopes: &[&Scope],
    limit: fn(&Scope) -> &Arc<ConnLimit>,
    axis: Axis,
    why: &'static str,
) -> Result<ConnPermits, Refusal> {
    let mut held = Vec::with_capacity(scopes.len());
    for scope in scopes {
        match limit(scope).acquire().await {
            Ok(p) => held.push(p),
            Err(_) => return Err(refuse(ctx, scope.level, axis, why)),
        }
    }
    Ok(ConnPermits(held))
}

/// Counts a new session against `maxSessRate` at every level.
///
/// # Errors
/// The first level whose rate is spent.
pub fn new_session(ctx: &FrontendCtx) -> Result<(), Refusal> {
    let levels = ctx.shared.live.levels(ctx.index);
    let gates = levels.map(|s| &s.sessions);
    try_take_all(&gates).map_err(|i| {
        refuse(
            ctx,
            levels[i].level,
            Axis::MaxSessRate,
            "too many new sessions per second",
        )
    })
}

/// Takes a slot of the pool's `maxConn`, waiting in its queue if need be.
///
/// # Errors
/// The queue was full, or the wait timed out.
pub async fn pool_slot(ctx: &FrontendCtx) -> Result<Permit, Refusal> {
    let [_, _, pool] = ctx.shared.live.levels(ctx.index);
    pool.conns.acquire().await.map_err(|r| {
        let why = match r {
            Refused::Full => "the pool is at maxConn and its queue is full",
            Refused::Timeout => "waited the queue's timeout for a pool slot",
        };
        refuse(ctx, Level::Pool, Axis::MaxConn, why)
    })
}

fn refuse(ctx: &FrontendCtx, level: Level, axis: Axis, why: &'static str) -> Refusal {
    ctx.refused(level, axis, why);
    Refusal { level, axis, why }
}
