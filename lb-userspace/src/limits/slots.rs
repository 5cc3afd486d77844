//! `maxConn`: connection slots at each level, and the pool queue.
//!
//! The counts of a level live in one [`SlotCounts`]: active, queued, the
//! limit in force, and whether the level is saturated (at its limit with a
//! full queue). The counts of every level sit in one [`Table`], laid out as
//! the XDP `pool_state` map is (index 0 global, then frontends, then pools:
//! `lb_common::bucket`), either in that map's memory (mapped, so a worker
//! updates it with plain atomics and no syscall, a second `lb --join`ed
//! process shares the same counts, and XDP reads `saturated`) or, without
//! BPF, in process memory.
//!
//! A [`ConnLimit`] takes a slot with one compare-and-swap while the level is
//! under its limit and nobody in this process waits. Over the limit, a pool
//! level queues the taker (FIFO, bounded by `depth`, each waiter for at most
//! `timeout`); a freed slot goes straight to the oldest waiter. Global and
//! frontend levels have no queue: over the limit is a refusal at once.
//!
//! Each waiter's time in the queue is counted when it leaves ([`QueueWaits`],
//! atomic buckets: the queued path only, and no lock of its own).

use std::{
    collections::VecDeque,
    ptr::NonNull,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use tokio::sync::oneshot;

use super::Level;
use crate::metrics::DurationHistogram;

/// The counts of one level; the layout of `lb_common::PoolState`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct SlotCounts {
    /// Slots taken (connections, or HTTP requests at a pool).
    pub active: AtomicU64,
    /// Waiting in the queue, all processes.
    pub queued: AtomicU64,
    /// `maxConn` in force; 0: not limited.
    pub limit: AtomicU64,
    /// 1 when at the limit with the queue full: XDP applies
    /// `xdp.overflow` to new SYNs.
    pub saturated: AtomicU64,
}
const _: () = assert!(
    size_of::<SlotCounts>() == size_of::<lb_common::PoolState>() && size_of::<SlotCounts>() == 32
);

/// Where the counts live.
enum Backing {
    /// Process memory (no BPF).
    Heap(#[allow(dead_code, reason = "owns the memory `Table::base` points to")] Box<[SlotCounts]>),
    /// A mapped BPF array.
    Mapped { len_bytes: usize },
}

/// Every level's counts, indexed like `lb_common::bucket`.
pub struct Table {
    base: NonNull<SlotCounts>,
    len: usize,
    backing: Backing,
}

// SAFETY: the memory is only accessed through atomics, and lives as long as
// the table (heap box, or the mapping unmapped on drop).
unsafe impl Send for Table {}
// SAFETY: as above.
unsafe impl Sync for Table {}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("len", &self.len)
            .field("mapped", &matches!(self.backing, Backing::Mapped { .. }))
            .finish()
    }
}

impl Table {
    /// `len` zeroed slots in process memory.
    #[must_use]
    pub fn heap(len: usize) -> Self {
        let mut b: Box<[SlotCounts]> = (0..len).map(|_| SlotCounts::default()).collect();
        let base = NonNull::new(b.as_mut_ptr()).unwrap_or(NonNull::dangling());
        Self {
            base,
            len,
            backing: Backing::Heap(b),
        }
    }

    /// Maps `len` slots of a `BPF_F_MMAPABLE` array map.
    ///
    /// # Errors
    /// The kernel refused the mapping.
    pub fn map(fd: std::os::fd::BorrowedFd<'_>, len: usize) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd as _;
        let len_bytes = len * size_of::<SlotCounts>();
        // SAFETY: a fresh shared mapping of a map fd; the kernel checks the
        // length against the map's size.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base =
            NonNull::new(p.cast::<SlotCounts>()).ok_or_else(std::io::Error::last_os_error)?;
        Ok(Self {
            base,
            len,
            backing: Backing::Mapped { len_bytes },
        })
    }

    /// Maps the pinned `pool_state` map at `path`.
    ///
    /// # Errors
    /// No such pin, or the kernel refused the mapping.
    pub fn from_pin(path: &std::path::Path) -> std::io::Result<Self> {
        use std::os::fd::AsFd as _;
        let map = aya::maps::MapData::from_pin(path)
            .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
        // The mapping keeps the map alive after its fd closes.
        Self::map(map.fd().as_fd(), lb_common::MAX_BUCKETS as usize)
    }

    /// Whether the counts live in the BPF map.
    #[must_use]
    pub fn is_mapped(&self) -> bool {
        matches!(self.backing, Backing::Mapped { .. })
    }

    /// Slot `i` (None past the end).
    #[must_use]
    pub fn get(&self, i: usize) -> Option<&SlotCounts> {
        // SAFETY: in bounds; the memory lives as long as `self` and is only
        // used through atomics.
        (i < self.len).then(|| unsafe { &*self.base.as_ptr().add(i) })
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        if let Backing::Mapped { len_bytes } = self.backing {
            // SAFETY: the mapping made in `map`, no longer referenced.
            unsafe { libc::munmap(self.base.as_ptr().cast(), len_bytes) };
        }
    }
}

/// Why a slot was not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Over the limit with no room in the queue (or no queue).
    Full,
    /// Waited `timeout` in the queue.
    Timeout,
}

/// Waiters of one process, oldest first.
#[derive(Debug, Default)]
struct Queue {
    next_id: u64,
    waiters: VecDeque<(u64, oneshot::Sender<()>)>,
}

/// How long this process's waiters spent in a level's queue, counted when
/// they leave it.
#[derive(Debug, Default)]
pub struct QueueWaits {
    /// Waiters that got a slot.
    pub admitted: DurationHistogram,
    /// Waiters refused at the queue's timeout.
    pub timed_out: DurationHistogram,
}

/// `maxConn` at one level.
#[derive(Debug)]
pub struct ConnLimit {
    table: Arc<Table>,
    index: usize,
    /// The level, for refusals.
    pub level: Level,
    /// Queue depth (0: none).
    depth: AtomicU64,
    /// Queue timeout, ns.
    timeout_ns: AtomicU64,
    queue: Mutex<Queue>,
    /// Waiters in this process's queue.
    local_queued: AtomicU64,
    /// Time spent in the queue by those that left it.
    pub waits: QueueWaits,
}

/// A slot held: given back on drop (to the oldest waiter if there is one).
#[derive(Debug)]
pub struct Permit(Arc<ConnLimit>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// How often a waiter at the head of the queue looks for a slot freed
/// elsewhere (another process sharing the counts).
const POLL: Duration = Duration::from_millis(20);

impl ConnLimit {
    /// Level `level`'s limit, counted in `table[index]`.
    #[must_use]
    pub fn new(table: Arc<Table>, index: usize, level: Level) -> Self {
        Self {
            table,
            index,
            level,
            depth: AtomicU64::new(0),
            timeout_ns: AtomicU64::new(0),
            queue: Mutex::new(Queue::default()),
            local_queued: AtomicU64::new(0),
            waits: QueueWaits::default(),
        }
    }

    fn counts(&self) -> &SlotCounts {
        static NONE: SlotCounts = SlotCounts {
            active: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            limit: AtomicU64::new(0),
            saturated: AtomicU64::new(0),
        };
        self.table.get(self.index).unwrap_or(&NONE)
    }

    /// Slots taken now, all processes.
    #[must_use]
    pub fn active(&self) -> u64 {
        self.counts().active.load(Relaxed)
    }

    /// Waiters now, all processes.
    #[must_use]
    pub fn queued(&self) -> u64 {
        self.counts().queued.load(Relaxed)
    }

    /// The limit in force (0: off).
    #[must_use]
    pub fn limit(&self) -> u64 {
        self.counts().limit.load(Relaxed)
    }

    /// The queue in front of the limit: how many may wait, and how long.
    #[must_use]
    pub fn queue(&self) -> (u64, Duration) {
        (
            self.depth.load(Relaxed),
            Duration::from_nanos(self.timeout_ns.load(Relaxed)),
        )
    }

    /// Sets the limit and the queue; a raised limit lets waiters in at once,
    /// a lowered one lets the connections over it finish.
    pub fn set(&self, limit: u64, depth: u64, timeout: Duration) {
        self.counts().limit.store(limit, Relaxed);
        self.depth.store(depth, Relaxed);
        self.timeout_ns.store(
            u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX),
            Relaxed,
        );
        self.pump();
        self.update_saturated();
    }

    /// One more slot if under `limit` (or no limit).
    fn try_inc(&self) -> bool {
        let c = self.counts();
        let limit = c.limit.load(Relaxed);
        let mut cur = c.active.load(Relaxed);
        loop {
            if limit != 0 && cur >= limit {
                return false;
            }
            match c
                .active
                .compare_exchange_weak(cur, cur + 1, Relaxed, Relaxed)
            {
                Ok(_) => return true,
                Err(seen) => cur = seen,
            }
        }
    }

    fn update_saturated(&self) {
        let c = self.counts();
        let limit = c.limit.load(Relaxed);
        let full = limit != 0
            && c.active.load(Relaxed) >= limit
            && self.local_queued.load(Relaxed) >= self.depth.load(Relaxed);
        let v = u64::from(full);
        if c.saturated.load(Relaxed) != v {
            c.saturated.store(v, Relaxed);
        }
    }

    /// Takes a slot: at once when under the limit, else after waiting in
    /// the queue (pools), else refused.
    ///
    /// # Errors
    /// [`Refused::Full`] with no room in the queue, [`Refused::Timeout`]
    /// after waiting the queue's timeout.
    pub async fn acquire(self: &Arc<Self>) -> Result<Permit, Refused> {
        if self.local_queued.load(Relaxed) == 0 && self.try_inc() {
            // The slot that fills the level may saturate it (no queue).
            let c = self.counts();
            let limit = c.limit.load(Relaxed);
            if limit != 0 && c.active.load(Relaxed) >= limit {
                self.update_saturated();
            }
            return Ok(Permit(Arc::clone(self)));
        }
        let (id, rx) = {
            let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            // Nobody ahead, and a slot freed meanwhile: take it.
            if q.waiters.is_empty() && self.try_inc() {
                return Ok(Permit(Arc::clone(self)));
            }
            if q.waiters.len() as u64 >= self.depth.load(Relaxed) {
                drop(q);
                self.counts().saturated.store(1, Relaxed);
                return Err(Refused::Full);
            }
            let (tx, rx) = oneshot::channel();
            let id = q.next_id;
            q.next_id += 1;
            q.waiters.push_back((id, tx));
            self.local_queued.fetch_add(1, Relaxed);
            self.counts().queued.fetch_add(1, Relaxed);
            (id, rx)
        };
        self.update_saturated();
        let queued_at = tokio::time::Instant::now();
        let admitted = || {
            self.waits.admitted.observe(queued_at.elapsed());
            Ok(Permit(Arc::clone(self)))
        };
        let timed_out = || {
            self.waits.timed_out.observe(queued_at.elapsed());
            Err(Refused::Timeout)
        };
        let timeout = Duration::from_nanos(self.timeout_ns.load(Relaxed));
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline, rx);
        let mut poll = tokio::time::interval(POLL);
        loop {
            tokio::select! {
                r = &mut rx => {
                    if r.is_ok() {
                        return admitted();
                    }
                    // The sender was dropped without a slot: cannot happen
                    // while we are queued; treat as a timeout.
                    return timed_out();
                }
                () = &mut deadline => {
                    let removed = self.remove(id);
                    // Handed a slot just as time ran out: keep it.
                    if !removed && rx.try_recv().is_ok() {
                        return admitted();
                    }
                    return timed_out();
                }
                _ = poll.tick() => {
                    // A slot freed by another process (or a raised limit
                    // seen late) reaches the head of the queue this way.
                    let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                    if q.waiters.front().is_some_and(|w| w.0 == id) && self.try_inc() {
                        q.waiters.pop_front();
                        drop(q);
                        self.dequeued();
                        return admitted();
                    }
                }
            }
        }
    }

    /// Takes waiter `id` out of the queue; false if it was not there.
    fn remove(&self, id: u64) -> bool {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(pos) = q.waiters.iter().position(|w| w.0 == id) else {
            return false;
        };
        q.waiters.remove(pos);
        drop(q);
        self.dequeued();
        true
    }

    fn dequeued(&self) {
        self.local_queued.fetch_sub(1, Relaxed);
        self.counts().queued.fetch_sub(1, Relaxed);
        self.update_saturated();
    }

    /// A slot given back: to the oldest waiter while the level is not over
    /// its limit, else freed.
    fn release(&self) {
        if self.local_queued.load(Relaxed) > 0 {
            let c = self.counts();
            let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            let limit = c.limit.load(Relaxed);
            // Hand over only if this slot is within the limit (a lowered
            // limit drains by not handing over).
            if limit == 0 || c.active.load(Relaxed) <= limit {
                while let Some((_, tx)) = q.waiters.pop_front() {
                    let sent = tx.send(()).is_ok();
                    self.local_queued.fetch_sub(1, Relaxed);
                    c.queued.fetch_sub(1, Relaxed);
                    if sent {
                        drop(q);
                        self.update_saturated();
                        return;
                    }
                }
            }
        }
        self.counts().active.fetch_sub(1, Relaxed);
        self.update_saturated();
    }

    /// Lets waiters in while there is room (after a raised limit).
    fn pump(&self) {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        while !q.waiters.is_empty() && self.try_inc() {
            let Some((_, tx)) = q.waiters.pop_front() else {
                break;
            };
            self.local_queued.fetch_sub(1, Relaxed);
            self.counts().queued.fetch_sub(1, Relaxed);
            if tx.send(()).is_err() {
                self.counts().active.fetch_sub(1, Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(n: u64, depth: u64, timeout_ms: u64) -> Arc<ConnLimit> {
        let l = Arc::new(ConnLimit::new(Arc::new(Table::heap(1)), 0, Level::Pool));
        l.set(n, depth, Duration::from_millis(timeout_ms));
        l
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_get_freed_slots_in_arrival_order() {
        let l = limit(1, 3, 10_000);
        let first = l.acquire().await.expect("under the limit");
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..3 {
            let (l, order) = (Arc::clone(&l), Arc::clone(&order));
            tasks.push(tokio::spawn(async move {
                let p = l.acquire().await.expect("queued, then admitted");
                order.lock().expect("lock").push(i);
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(p);
            }));
            tokio::task::yield_now().await;
        }
        assert_eq!(l.queued(), 3);
        assert_eq!(l.counts().saturated.load(Relaxed), 1, "full queue");
        assert_eq!(l.acquire().await.err(), Some(Refused::Full));
        drop(first);
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(*order.lock().expect("lock"), [0, 1, 2]);
        assert_eq!((l.active(), l.queued()), (0, 0));
        assert_eq!(l.counts().saturated.load(Relaxed), 0);
        // Three waits counted as they left the queue; the one refused at
        // once never queued.
        let waits = l.waits.admitted.snapshot();
        assert_eq!(waits.count(), 3);
        assert_eq!(l.waits.timed_out.snapshot().count(), 0);
        // Served 5 ms apart, in paused time: 0, 5 and 10 ms.
        assert_eq!(waits.sum_ns, 15_000_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_times_out_and_a_raised_limit_lets_waiters_in() {
        let l = limit(1, 5, 100);
        let _held = l.acquire().await.expect("first");
        assert_eq!(l.acquire().await.err(), Some(Refused::Timeout));
        assert_eq!(l.queued(), 0);
        let waited = l.waits.timed_out.snapshot();
        assert_eq!((waited.count(), waited.sum_ns), (1, 100_000_000));
        let l2 = Arc::clone(&l);
        let waiter = tokio::spawn(async move { l2.acquire().await.map(|_| ()) });
        tokio::task::yield_now().await;
        l.set(2, 5, Duration::from_millis(100));
        assert_eq!(waiter.await.expect("task"), Ok(()));
    }

    #[tokio::test]
    async fn no_queue_means_refused_at_once_and_zero_means_unlimited() {
        let l = limit(1, 0, 0);
        let a = l.acquire().await.expect("first");
        assert_eq!(l.counts().saturated.load(Relaxed), 1, "full, no queue");
        drop(a);
        assert_eq!(l.counts().saturated.load(Relaxed), 0);
        let _a = l.acquire().await.expect("again");
        assert_eq!(l.acquire().await.err(), Some(Refused::Full));
        l.set(0, 0, Duration::ZERO);
        let _b = l.acquire().await.expect("off");
        assert_eq!(l.active(), 2);
    }
}
