//! Cluster mode: `[cluster] redis = "redis://..."` backs every TLS frontend's
//! session cache with Redis, so a session started on any node resumes on
//! any other (the job distcache did for Apache farms). A frontend without
//! its own `ticketKeys` file also takes the farm's ticket keys from this
//! Redis ([`super::farm`]).
//!
//! Redis is a help, never a dependency: every call has a short timeout;
//! when Redis does not answer, handshakes go on as full ones (a cache miss),
//! `lb` logs the outage once and retries at most once a second, and logs
//! again when Redis is back. One connection is shared by the workers, and a
//! worker never waits for another's call: if the connection is busy, the
//! lookup is a miss. A handshake makes at most [`allow_lookups`] lookups, so
//! a ClientHello full of session ids cannot hold its worker for long.
//!
//! The values stored are rustls' serialized sessions, secrets included:
//! keep Redis on a private network, reachable only by the nodes.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use super::{cache::Backend, TlsError};

/// How long a connect, read or write to Redis may take.
const TIMEOUT: Duration = Duration::from_millis(50);

thread_local! {
    /// Backend lookups the current handshake on this thread may still make.
    static LOOKUPS: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
}

/// Lets the handshake about to run on this thread make `n` lookups.
pub fn allow_lookups(n: u8) {
    LOOKUPS.with(|l| l.set(n));
}

/// Spends one lookup of the current handshake; false when none is left.
fn spend_lookup() -> bool {
    LOOKUPS.with(|l| {
        let n = l.get();
        l.set(n.saturating_sub(1));
        n > 0
    })
}

/// `url` without a user name or password, for logs and the status page.
pub fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://{host}"),
        _ => url.to_owned(),
    }
}
/// How long after a failure the next connect is tried.
const RETRY: Duration = Duration::from_secs(1);

/// A connection to `client` whose connect, reads and writes each give up
/// after `timeout`.
pub(super) fn open(
    client: &redis::Client,
    timeout: Duration,
) -> redis::RedisResult<redis::Connection> {
    let c = client.get_connection_with_timeout(timeout)?;
    c.set_read_timeout(Some(timeout))?;
    c.set_write_timeout(Some(timeout))?;
    Ok(c)
}

/// The cluster's Redis, shared by every frontend.
pub struct Redis {
    url: String,
    client: redis::Client,
    conn: Mutex<Option<redis::Connection>>,
    retry_at: Mutex<Option<Instant>>,
    up: AtomicBool,
    errors: AtomicU64,
    calls: AtomicU64,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("url", &self.url)
            .field("up", &self.up.load(Relaxed))
            .finish_non_exhaustive()
    }
}

/// What `/api/status` shows of the cluster's Redis.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedisStatus {
    /// The URL.
    pub url: String,
    /// Whether the last call succeeded.
    pub up: bool,
    /// Calls that failed (timeouts, refused connects, errors).
    pub errors: u64,
    /// Calls made.
    pub calls: u64,
}

impl Redis {
    /// The cluster's Redis at `url` (connected on first use).
    ///
    /// # Errors
    /// The URL is not a Redis URL.
    pub fn new(url: &str) -> Result<Arc<Self>, TlsError> {
        let client = redis::Client::open(url).map_err(|e| TlsError::Options {
            frontend: "[cluster]".into(),
            why: format!(
                "redis = \"{}\": {e}; allowed: redis://[:PASSWORD@]HOST:PORT[/DB]",
                redact(url)
            ),
        })?;
        Ok(Arc::new(Self {
            url: redact(url),
            client,
            conn: Mutex::new(None),
            retry_at: Mutex::new(None),
            up: AtomicBool::new(true),
            errors: AtomicU64::new(0),
            calls: AtomicU64::new(0),
        }))
    }

    /// The URL, without a password.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// What `/api/status` shows.
    #[must_use]
    pub fn status(&self) -> RedisStatus {
        RedisStatus {
            url: self.url.clone(),
            up: self.up.load(Relaxed),
            errors: self.errors.load(Relaxed),
            calls: self.calls.load(Relaxed),
        }
    }

    fn down(&self, e: &redis::RedisError) {
        self.errors.fetch_add(1, Relaxed);
        *self.retry_at.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(Instant::now() + RETRY);
        if self.up.swap(false, Relaxed) {
            tracing::warn!(
                url = %self.url,
                error = %e,
                "cluster Redis unreachable: TLS sessions are not shared until it returns \
                 (clients do full handshakes); retrying every second"
            );
        }
    }

    fn up(&self) {
        if !self.up.swap(true, Relaxed) {
            tracing::info!(url = %self.url, "cluster Redis is back: TLS sessions are shared again");
        }
    }

    /// Connects, unless a failure is too recent.
    fn connect(&self) -> Result<Option<redis::Connection>, redis::RedisError> {
        let wait = *self.retry_at.lock().unwrap_or_else(PoisonError::into_inner);
        if wait.is_some_and(|t| Instant::now() < t) {
            return Ok(None);
        }
        self.calls.fetch_add(1, Relaxed);
        open(&self.client, TIMEOUT).map(Some)
    }

    /// Runs `f` on the connection (made if need be); None when Redis is
    /// down or the call failed. A call that fails on an old connection
    /// (Redis restarted) is tried once more on a new one at once.
    pub(super) fn call<T>(
        &self,
        f: impl Fn(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Option<T> {
        // Busy with another worker's call: a miss, not a wait.
        let mut conn = match self.conn.try_lock() {
            Ok(c) => c,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        let mut fresh = false;
        for _ in 0..2 {
            if conn.is_none() {
                match self.connect() {
                    Ok(Some(c)) => {
                        *conn = Some(c);
                        fresh = true;
                    }
                    Ok(None) => return None,
                    Err(e) => {
                        self.down(&e);
                        return None;
                    }
                }
            }
            let c = conn.as_mut()?;
            self.calls.fetch_add(1, Relaxed);
            match f(c) {
                Ok(v) => {
                    self.up();
                    return Some(v);
                }
                Err(e) => {
                    *conn = None;
                    if fresh || !(e.is_io_error() || e.is_connection_dropped()) {
                        self.down(&e);
                        return None;
                    }
                }
            }
        }
        None
    }
}

/// One frontend's slice of the shared session cache in Redis: keys
/// `lb:tls:<frontend>:<session id in hex>`, expiring with the sessions.
#[derive(Debug)]
pub struct SessionBackend {
    redis: Arc<Redis>,
    prefix: String,
}

impl SessionBackend {
    /// Frontend `name`'s sessions in `redis`.
    #[must_use]
    pub fn new(redis: Arc<Redis>, name: &str) -> Self {
        Self {
            redis,
            prefix: format!("lb:tls:{name}:"),
        }
    }

    fn key(&self, id: &[u8]) -> String {
        use std::fmt::Write as _;
        let mut k = String::with_capacity(self.prefix.len() + id.len() * 2);
        k.push_str(&self.prefix);
        for b in id {
            let _ = write!(k, "{b:02x}");
        }
        k
    }
}

impl Backend for SessionBackend {
    fn put(&self, key: &[u8], value: &[u8], lifetime: Duration) {
        let ms = u64::try_from(lifetime.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let k = self.key(key);
        let _ = self.redis.call(|c| {
            redis::cmd("SET")
                .arg(&k)
                .arg(value)
                .arg("PX")
                .arg(ms)
                .query::<()>(c)
        });
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        if !spend_lookup() {
            return None;
        }
        let k = self.key(key);
        self.redis
            .call(|c| redis::cmd("GET").arg(&k).query::<Option<Vec<u8>>>(c))
            .flatten()
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        if !spend_lookup() {
            return None;
        }
        let k = self.key(key);
        self.redis
            .call(|c| redis::cmd("GETDEL").arg(&k).query::<Option<Vec<u8>>>(c))
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_logs_or_the_status_page() {
        assert_eq!(
            redact("redis://:s3cret@10.0.0.5:6379/0"),
            "redis://10.0.0.5:6379/0"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn a_handshake_makes_at_most_the_lookups_it_is_allowed() {
        allow_lookups(2);
        assert!(spend_lookup() && spend_lookup());
        assert!(!spend_lookup());
    }
}
