//! The backend tries of one HTTP request or TCP connection: which backends
//! were tried, how many tries are left (1 + the tightest `maxRetries` in force),
//! and the counters each try moves. Both frontend modes use it, so a retry
//! means the same thing and is counted the same way in either.

use std::sync::atomic::Ordering::Relaxed;

use super::{counters::Timeout, upstream::ConnectError, FrontendCtx};
use crate::pool::{ActiveGuard, PickKey};

/// Tries so far.
#[derive(Debug)]
pub struct Tries {
    tried: Vec<usize>,
    attempts: usize,
}

impl Tries {
    /// None yet; `1 + maxRetries` allowed.
    #[must_use]
    pub fn new(ctx: &FrontendCtx) -> Self {
        Self {
            tried: Vec::new(),
            attempts: 1 + usize::try_from(ctx.shared.live.max_retries(ctx.index).0)
                .unwrap_or(usize::MAX),
        }
    }

    /// The backend for the next try, counted in flight until the guard
    /// drops; None when the tries or the healthy backends ran out.
    pub fn next(&mut self, ctx: &FrontendCtx, key: &PickKey) -> Option<(usize, ActiveGuard)> {
        if self.tried.len() >= self.attempts {
            return None;
        }
        let index = ctx
            .pool
            .pick_retry(&mut ctx.picker.borrow_mut(), key, &self.tried)?;
        if !self.tried.is_empty() {
            ctx.counters().retries.fetch_add(1, Relaxed);
        }
        self.tried.push(index);
        Some((index, ctx.pool.track(index)))
    }

    /// Counts a connection opened to backend `index`.
    pub fn connected(ctx: &FrontendCtx, index: usize) {
        ctx.pool.backends[index].connects.fetch_add(1, Relaxed);
    }

    /// Counts a failed connect to backend `index`.
    pub fn connect_failed(ctx: &FrontendCtx, index: usize, e: &ConnectError) {
        let backend = &ctx.pool.backends[index];
        backend.connect_errors.fetch_add(1, Relaxed);
        if matches!(e, ConnectError::Timeout(_)) {
            ctx.counters().timeout(Timeout::Connect);
        }
        tracing::debug!(pool = %ctx.pool.name, backend = %backend.addr, error = %e, "backend connect failed");
    }

    /// Counts giving up with no backend reached; true when no backend was
    /// even tried (none healthy).
    pub fn give_up(&self, ctx: &FrontendCtx) -> bool {
        let counters = ctx.counters();
        counters.backend_failed.fetch_add(1, Relaxed);
        let none = self.tried.is_empty();
        if none {
            counters.no_backend.fetch_add(1, Relaxed);
        }
        none
    }
}
