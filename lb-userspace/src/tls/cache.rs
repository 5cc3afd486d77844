//! The server-side TLS session cache: TLS 1.2 session ids.
//!
//! rustls stores a session here when it cannot (or may not) put the session
//! in an encrypted ticket: TLS 1.2 clients that resume by session id, and
//! TLS 1.3 "stateful" tickets when the ticketer is disabled (never in `lb`,
//! whose frontends always have ticket keys; TLS 1.3 takes
//! each entry out with `take`, so a ticket resumes at most once). One
//! [`SessionCache`] serves one frontend and is shared by all its workers, so
//! a client resumes whichever worker its next connection lands on.
//!
//! The cache holds at most `size` entries and evicts the oldest first (by
//! insertion: every entry has the same lifetime, so the oldest is also the
//! next to expire); an entry older than `lifetime` is a miss and is dropped.
//! rustls gives TLS 1.3 stateful tickets a lifetime of 24 hours, so a shorter
//! `lifetime` only makes those resumptions miss earlier.
//!
//! A second tier shared by several `lb` nodes (e.g. Redis) plugs in as a
//! [`Backend`]: a local miss asks it and keeps what it finds, a put writes
//! both (an entry found there is kept locally for a full `lifetime`, as its
//! age is not known). Its calls are synchronous and made on the TLS handshake path, so a
//! backend must answer fast or give up fast.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

/// A second tier of the session cache, shared by several `lb` nodes.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Stores `value` under `key`, to be forgotten after `lifetime`.
    fn put(&self, key: &[u8], value: &[u8], lifetime: Duration);

    /// The value stored under `key`, if any and not expired.
    fn get(&self, key: &[u8]) -> Option<Vec<u8>>;

    /// Removes the value under `key` and returns it, atomically (TLS 1.3
    /// single-use tickets). The default finds nothing: a backend that
    /// cannot delete atomically must not hand out a single-use ticket
    /// twice, so it does not hand it out at all.
    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        let _ = key;
        None
    }
}

/// Counters of a [`SessionCache`], since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheStats {
    /// Lookups (`get` and `take`) that found a live entry, here or in the
    /// backend.
    pub hits: u64,
    /// Of `hits`, those found only in the backend.
    pub backend_hits: u64,
    /// Lookups that found nothing (or an expired entry).
    pub misses: u64,
    /// Sessions stored.
    pub puts: u64,
    /// Entries evicted, oldest first, to stay within `size`.
    pub evictions: u64,
    /// Entries dropped because they outlived `lifetime`.
    pub expired: u64,
    /// Entries held now.
    pub entries: u64,
}

struct Entry {
    value: Vec<u8>,
    stored: Instant,
    /// Matches the entry's place in `Local::order`; older places of the
    /// same key (before it was overwritten) are stale and skipped.
    seq: u64,
}

/// The local tier: entries, and their keys in insertion order.
#[derive(Default)]
struct Local {
    map: HashMap<Vec<u8>, Entry>,
    order: VecDeque<(u64, Vec<u8>)>,
    next_seq: u64,
}

impl Local {
    /// Whether `order`'s front is the live place of its key.
    fn front_is_live(&self) -> Option<bool> {
        let (seq, key) = self.order.front()?;
        Some(self.map.get(key).is_some_and(|e| e.seq == *seq))
    }

    /// Drops stale places at the front of `order`, then expired entries;
    /// returns how many entries expired.
    fn purge_expired(&mut self, now: Instant, lifetime: Duration) -> u64 {
        let mut expired = 0;
        while let Some(live) = self.front_is_live() {
            if live {
                let Some((_, key)) = self.order.front() else {
                    break;
                };
                let fresh = self
                    .map
                    .get(key)
                    .is_some_and(|e| now.saturating_duration_since(e.stored) < lifetime);
                if fresh {
                    break;
                }
                self.map.remove(key);
                expired += 1;
            }
            self.order.pop_front();
        }
        expired
    }

    /// Removes the oldest live entry.
    fn evict_oldest(&mut self) -> bool {
        while let Some((seq, key)) = self.order.pop_front() {
            if self.map.get(&key).is_some_and(|e| e.seq == seq) {
                self.map.remove(&key);
                return true;
            }
        }
        false
    }

    /// Keeps `order` within twice the live entries (it gathers stale places
    /// when keys are overwritten or taken).
    fn compact(&mut self) {
        if self.order.len() > 2 * self.map.len() + 16 {
            let map = &self.map;
            self.order
                .retain(|(seq, key)| map.get(key).is_some_and(|e| e.seq == *seq));
        }
    }
}

/// A [`rustls::server::StoresServerSessions`] holding at most `size`
/// sessions for at most `lifetime` each, optionally backed by a shared
/// [`Backend`]. Share one (`Arc`) between the TLS configs of all workers of
/// a frontend.
pub struct SessionCache {
    size: usize,
    lifetime: Duration,
    backend: Option<Arc<dyn Backend>>,
    clock: Arc<dyn Fn() -> Instant + Send + Sync>,
    local: Mutex<Local>,
    hits: AtomicU64,
    backend_hits: AtomicU64,
    misses: AtomicU64,
    puts: AtomicU64,
    evictions: AtomicU64,
    expired: AtomicU64,
}

impl fmt::Debug for SessionCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionCache")
            .field("size", &self.size)
            .field("lifetime", &self.lifetime)
            .field("backend", &self.backend)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl SessionCache {
    /// A cache of at most `size` sessions (0: no caching), each kept for at
    /// most `lifetime`.
    #[must_use]
    pub fn new(size: usize, lifetime: Duration) -> Self {
        Self::with_backend(size, lifetime, None)
    }

    /// As [`SessionCache::new`], with a second tier asked on a local miss
    /// and written on every put.
    #[must_use]
    pub fn with_backend(
        size: usize,
        lifetime: Duration,
        backend: Option<Arc<dyn Backend>>,
    ) -> Self {
        Self::with_clock(size, lifetime, backend, Arc::new(Instant::now))
    }

    fn with_clock(
        size: usize,
        lifetime: Duration,
        backend: Option<Arc<dyn Backend>>,
        clock: Arc<dyn Fn() -> Instant + Send + Sync>,
    ) -> Self {
        Self {
            size,
            lifetime,
            backend,
            clock,
            local: Mutex::new(Local::default()),
            hits: AtomicU64::new(0),
            backend_hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            puts: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            expired: AtomicU64::new(0),
        }
    }

    /// Most entries held.
    #[must_use]
    pub fn size(&self) -> usize {
        self.size
    }

    /// How long an entry is kept.
    #[must_use]
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The counters so far.
    #[must_use]
    pub fn stats(&self) -> CacheStats {
        let entries = self.lock().map.len();
        CacheStats {
            hits: self.hits.load(Relaxed),
            backend_hits: self.backend_hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            puts: self.puts.load(Relaxed),
            evictions: self.evictions.load(Relaxed),
            expired: self.expired.load(Relaxed),
            entries: u64::try_from(entries).unwrap_or(u64::MAX),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores locally, evicting expired entries then the oldest ones.
    fn put_local(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        if self.size == 0 {
            return false;
        }
        let now = (self.clock)();
        let mut local = self.lock();
        let expired = local.purge_expired(now, self.lifetime);
        let mut evicted = 0;
        while local.map.len() >= self.size && !local.map.contains_key(&key) {
            if !local.evict_oldest() {
                break;
            }
            evicted += 1;
        }
        let seq = local.next_seq;
        local.next_seq += 1;
        local.order.push_back((seq, key.clone()));
        local.map.insert(
            key,
            Entry {
                value,
                stored: now,
                seq,
            },
        );
        local.compact();
        drop(local);
        self.expired.fetch_add(expired, Relaxed);
        self.evictions.fetch_add(evicted, Relaxed);
        true
    }

    /// Looks `key` up locally, removing it if expired or if `remove`.
    fn lookup_local(&self, key: &[u8], remove: bool) -> Option<Vec<u8>> {
        let now = (self.clock)();
        let mut local = self.lock();
        let entry = local.map.get(key)?;
        if now.saturating_duration_since(entry.stored) >= self.lifetime {
            local.map.remove(key);
            drop(local);
            self.expired.fetch_add(1, Relaxed);
            return None;
        }
        if remove {
            local.map.remove(key).map(|e| e.value)
        } else {
            Some(entry.value.clone())
        }
    }

    fn count(&self, found: Option<Vec<u8>>) -> Option<Vec<u8>> {
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Relaxed);
        found
    }
}

impl rustls::server::StoresServerSessions for SessionCache {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        if let Some(backend) = &self.backend {
            backend.put(&key, &value, self.lifetime);
        }
        let stored = self.put_local(key, value) || self.backend.is_some();
        if stored {
            self.puts.fetch_add(1, Relaxed);
        }
        stored
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        super::note_resumption_offer();
        if let Some(value) = self.lookup_local(key, false) {
            return self.count(Some(value));
        }
        let found = self.backend.as_ref().and_then(|b| b.get(key));
        if let Some(value) = &found {
            self.backend_hits.fetch_add(1, Relaxed);
            self.put_local(key.to_vec(), value.clone());
        }
        self.count(found)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        super::note_resumption_offer();
        let local = self.lookup_local(key, true);
        // Always take it out of the backend too, so that no other node
        // resumes the same single-use ticket.
        let remote = self.backend.as_ref().and_then(|b| b.take(key));
        if local.is_none() && remote.is_some() {
            self.backend_hits.fetch_add(1, Relaxed);
        }
        self.count(local.or(remote))
    }

    fn can_cache(&self) -> bool {
        self.size > 0 || self.backend.is_some()
    }
}

#[cfg(test)]
mod tests {
    use rustls::server::StoresServerSessions as _;

    use super::*;
    use crate::tls::testkit::{connect, tls_pair};

    /// A clock the test moves by hand.
    fn manual_clock() -> (Arc<Mutex<Instant>>, Arc<dyn Fn() -> Instant + Send + Sync>) {
        let now = Arc::new(Mutex::new(Instant::now()));
        let read = Arc::clone(&now);
        (now, Arc::new(move || *read.lock().unwrap()))
    }

    fn k(i: u32) -> Vec<u8> {
        format!("key-{i}").into_bytes()
    }

    #[test]
    fn hit_and_miss() {
        let cache = SessionCache::new(10, Duration::from_secs(60));
        assert!(cache.can_cache());
        assert!(cache.put(k(1), b"one".to_vec()));
        assert_eq!(cache.get(&k(1)).unwrap(), b"one");
        assert_eq!(cache.get(&k(1)).unwrap(), b"one", "get leaves it");
        assert_eq!(cache.get(&k(2)), None);
        // Overwrite.
        assert!(cache.put(k(1), b"uno".to_vec()));
        assert_eq!(cache.get(&k(1)).unwrap(), b"uno");
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.puts), (3, 1, 2));
        assert_eq!(
            (stats.entries, stats.evictions, stats.backend_hits),
            (1, 0, 0)
        );
    }

    #[test]
    fn take_removes() {
        let cache = SessionCache::new(10, Duration::from_secs(60));
        cache.put(k(1), b"one".to_vec());
        assert_eq!(cache.take(&k(1)).unwrap(), b"one");
        assert_eq!(cache.take(&k(1)), None);
        assert_eq!(cache.get(&k(1)), None);
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.entries), (1, 2, 0));
    }

    #[test]
    fn evicts_the_oldest_at_size() {
        let cache = SessionCache::new(3, Duration::from_secs(60));
        for i in 1..=3 {
            cache.put(k(i), vec![1]);
        }
        // Reading does not make an entry younger.
        assert!(cache.get(&k(1)).is_some());
        cache.put(k(4), vec![4]);
        assert_eq!(cache.get(&k(1)), None, "the oldest went first");
        for i in 2..=4 {
            assert!(cache.get(&k(i)).is_some(), "key {i}");
        }
        // Overwriting a held key evicts nothing, and makes it the youngest.
        cache.put(k(2), vec![22]);
        assert_eq!(cache.stats().evictions, 1);
        cache.put(k(5), vec![5]);
        assert_eq!(cache.get(&k(3)), None);
        assert_eq!(cache.get(&k(2)).unwrap(), vec![22]);
        let stats = cache.stats();
        assert_eq!((stats.evictions, stats.entries), (2, 3));
    }

    #[test]
    fn many_overwrites_keep_the_order_queue_small() {
        let cache = SessionCache::new(4, Duration::from_secs(60));
        for round in 0..1000u32 {
            cache.put(k(round % 2), round.to_le_bytes().to_vec());
            cache.take(&k(7));
        }
        let local = cache.lock();
        assert_eq!(local.map.len(), 2);
        assert!(local.order.len() <= 2 * 2 + 17, "{}", local.order.len());
    }

    #[test]
    fn size_zero_caches_nothing() {
        let cache = SessionCache::new(0, Duration::from_secs(60));
        assert!(!cache.can_cache());
        assert!(!cache.put(k(1), vec![1]));
        assert_eq!(cache.get(&k(1)), None);
    }

    #[test]
    fn expires_after_lifetime() {
        let (now, clock) = manual_clock();
        let cache = SessionCache::with_clock(10, Duration::from_secs(300), None, clock);
        cache.put(k(1), vec![1]);
        *now.lock().unwrap() += Duration::from_secs(200);
        cache.put(k(2), vec![2]);
        *now.lock().unwrap() += Duration::from_secs(99);
        assert!(cache.get(&k(1)).is_some(), "299 s old");
        *now.lock().unwrap() += Duration::from_secs(1);
        assert_eq!(cache.get(&k(1)), None, "300 s old");
        assert_eq!(cache.stats().entries, 1, "removed on the miss");
        assert!(cache.get(&k(2)).is_some());
        // A put drops the expired entries at the front.
        *now.lock().unwrap() += Duration::from_secs(200);
        cache.put(k(3), vec![3]);
        let stats = cache.stats();
        assert_eq!((stats.expired, stats.entries, stats.evictions), (2, 1, 0));
    }

    #[test]
    fn expires_with_the_system_clock() {
        let cache = SessionCache::new(10, Duration::from_millis(20));
        cache.put(k(1), vec![1]);
        assert!(cache.get(&k(1)).is_some());
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(cache.get(&k(1)), None);
    }

    /// A value and the lifetime it was stored with.
    type Stored = (Vec<u8>, Duration);

    #[derive(Debug, Default)]
    struct FakeBackend {
        map: Mutex<HashMap<Vec<u8>, Stored>>,
        gets: AtomicU64,
    }

    impl Backend for FakeBackend {
        fn put(&self, key: &[u8], value: &[u8], lifetime: Duration) {
            self.map
                .lock()
                .unwrap()
                .insert(key.to_vec(), (value.to_vec(), lifetime));
        }

        fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
            self.gets.fetch_add(1, Relaxed);
            self.map.lock().unwrap().get(key).map(|(v, _)| v.clone())
        }

        fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
            self.map.lock().unwrap().remove(key).map(|(v, _)| v)
        }
    }

    #[test]
    fn backend_is_asked_on_a_local_miss() {
        let backend = Arc::new(FakeBackend::default());
        let shared: Arc<dyn Backend> = backend.clone();
        let node1 = SessionCache::with_backend(10, Duration::from_secs(60), Some(shared.clone()));
        let node2 = SessionCache::with_backend(10, Duration::from_secs(60), Some(shared));

        // A put writes both tiers.
        assert!(node1.put(k(1), b"one".to_vec()));
        assert_eq!(
            backend.map.lock().unwrap().get(&k(1)).unwrap(),
            &(b"one".to_vec(), Duration::from_secs(60))
        );
        // A local hit does not ask the backend.
        assert_eq!(node1.get(&k(1)).unwrap(), b"one");
        assert_eq!(backend.gets.load(Relaxed), 0);
        // A local miss does, and keeps the answer.
        assert_eq!(node2.get(&k(1)).unwrap(), b"one");
        assert_eq!(backend.gets.load(Relaxed), 1);
        assert_eq!(node2.get(&k(1)).unwrap(), b"one");
        assert_eq!(backend.gets.load(Relaxed), 1, "now held locally");
        assert_eq!(node2.get(&k(9)), None);
        let stats = node2.stats();
        assert_eq!((stats.hits, stats.backend_hits, stats.misses), (2, 1, 1));

        // take: from the backend on a local miss, and out of the backend on
        // a local hit, so no node resumes the ticket twice.
        node1.put(k(2), b"two".to_vec());
        assert_eq!(node2.take(&k(2)).unwrap(), b"two");
        assert_eq!(node1.take(&k(2)).unwrap(), b"two", "node1's own copy");
        node1.put(k(3), b"three".to_vec());
        assert_eq!(node1.take(&k(3)).unwrap(), b"three");
        assert_eq!(node2.take(&k(3)), None);
    }

    #[derive(Debug)]
    struct GetOnly;

    impl Backend for GetOnly {
        fn put(&self, _: &[u8], _: &[u8], _: Duration) {}

        fn get(&self, _: &[u8]) -> Option<Vec<u8>> {
            Some(b"remote".to_vec())
        }
    }

    #[test]
    fn backend_without_take_never_hands_out_single_use_tickets() {
        let cache =
            SessionCache::with_backend(10, Duration::from_secs(60), Some(Arc::new(GetOnly)));
        assert_eq!(cache.take(&k(1)), None);
        assert_eq!(cache.get(&k(1)).unwrap(), b"remote");
    }

    #[test]
    fn shared_between_threads() {
        let cache = Arc::new(SessionCache::new(64, Duration::from_secs(60)));
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                let cache = Arc::clone(&cache);
                std::thread::spawn(move || {
                    for i in 0..500 {
                        cache.put(k(t * 1000 + i), vec![1]);
                        cache.get(&k(t * 1000 + i));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let stats = cache.stats();
        assert_eq!(stats.entries, 64);
        assert_eq!(stats.puts, 2000);
        assert_eq!(stats.evictions, 2000 - 64);
    }

    /// A self-signed certificate for `localhost` and a client trusting it.
    #[test]
    fn rustls_resumes_through_the_cache() {
        for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
            let (builder, cert, key, client) = tls_pair(version);
            let mut server = builder.with_single_cert(vec![cert], key).unwrap();
            // The ticketer stays disabled: TLS 1.2 resumes by session id and
            // TLS 1.3 by stateful tickets, both through the cache.
            let cache = Arc::new(SessionCache::new(100, Duration::from_secs(60)));
            server.session_storage = cache.clone();
            let server = Arc::new(server);
            assert_eq!(connect(&server, &client), rustls::HandshakeKind::Full);
            assert!(cache.stats().puts >= 1, "{version:?}");
            assert_eq!(
                connect(&server, &client),
                rustls::HandshakeKind::Resumed,
                "{version:?}"
            );
            assert!(cache.stats().hits >= 1, "{version:?}");
        }
    }
}
