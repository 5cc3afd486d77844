//! A TLS handshake storm: clients that open a TCP connection, send a
//! ClientHello, read what the server answers, and never finish the
//! handshake. Each costs the server its whole share of a full handshake
//! (key exchange and signature) and the client almost nothing: one
//! ClientHello, made once by rustls, is sent on every connection. This is
//! the cheap flood a TLS terminator must survive (as THC-SSL-DOS showed).
//!
//! The storm is open loop: it starts connections at a fixed rate whatever
//! the server does, up to a bound on the connections open at once, from
//! its own thread (a single-threaded tokio runtime). It stops by itself at
//! its deadline, or when [`Storm::stop`] is called.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// Connections open at once, at most (the test process's descriptors).
const MAX_OPEN: u64 = 8000;
/// How long a connect, and then the server's first answer, may take.
const WAIT: Duration = Duration::from_millis(500);

/// What the storm's connections met, counted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StormCounts {
    /// Connections started (a connect begun).
    pub started: u64,
    /// Not started: [`MAX_OPEN`] were open.
    pub skipped: u64,
    /// The connect failed or did not finish within 500 ms (the accept
    /// backlog full: the kernel drops the SYN).
    pub connect_failed: u64,
    /// The server answered the ClientHello with its handshake flight.
    pub flights: u64,
    /// The server answered with a TLS alert (a refusal).
    pub alerts: u64,
    /// The server closed or reset without a TLS record.
    pub closed: u64,
    /// No answer within 500 ms (connected, but still in the backlog).
    pub no_answer: u64,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    open: AtomicU64,
    connect_failed: AtomicU64,
    flights: AtomicU64,
    alerts: AtomicU64,
    closed: AtomicU64,
    no_answer: AtomicU64,
}

/// A running storm.
pub struct Storm {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<(u64, u64)>>,
    started: Instant,
}

/// A TLS 1.3 ClientHello (X25519 key share, SNI `lb.test`) as rustls's
/// client sends it: the bytes of its first record.
///
/// # Panics
/// If rustls cannot make one (a bug in this function).
#[must_use]
pub fn client_hello() -> Vec<u8> {
    let config = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(crate::tls::any_cert(false))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("lb.test").expect("name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).expect("ClientHello");
    }
    hello
}

impl Storm {
    /// Starts `rate` connections a second at `target` for at most `run`,
    /// from a thread pinned to `cpu` (if given). Of the connections the server answers with its flight, every
    /// `hold_every`-th (0: none) is kept open for `hold` before it is
    /// dropped, as a client that never sends its Finished; the others are
    /// dropped at once.
    ///
    /// # Panics
    /// If the thread or its runtime cannot start.
    #[must_use]
    pub fn start(
        target: SocketAddr,
        cpu: Option<usize>,
        rate: u64,
        run: Duration,
        hold_every: u64,
        hold: Duration,
    ) -> Self {
        let shared = Arc::new(Shared::default());
        let sh = Arc::clone(&shared);
        let hello: Arc<[u8]> = client_hello().into();
        let thread = std::thread::Builder::new()
            .name("storm".into())
            .spawn(move || {
                if let Some(cpu) = cpu {
                    crate::pin_this_thread(cpu);
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(drive(sh, target, rate, run, hold_every, hold, hello))
            })
            .expect("storm thread");
        Self {
            shared,
            thread: Some(thread),
            started: Instant::now(),
        }
    }

    /// Connections open now.
    #[must_use]
    pub fn open(&self) -> u64 {
        self.shared.open.load(Relaxed)
    }

    /// Stops starting connections, drops the open ones, and returns the
    /// counts and how long connections were started for.
    ///
    /// # Panics
    /// If the storm's thread panicked.
    #[must_use]
    pub fn stop(mut self) -> (StormCounts, Duration) {
        self.shared.stop.store(true, Relaxed);
        let (started, skipped) = self
            .thread
            .take()
            .map(|t| t.join().expect("storm thread"))
            .unwrap_or_default();
        let s = &self.shared;
        let counts = StormCounts {
            started,
            skipped,
            connect_failed: s.connect_failed.load(Relaxed),
            flights: s.flights.load(Relaxed),
            alerts: s.alerts.load(Relaxed),
            closed: s.closed.load(Relaxed),
            no_answer: s.no_answer.load(Relaxed),
        };
        (counts, self.started.elapsed())
    }
}

impl Drop for Storm {
    fn drop(&mut self) {
        self.shared.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The storm's loop: a batch of connections every millisecond, each a
/// task; returns (started, skipped) once stopped or at the deadline, after
/// dropping every task.
async fn drive(
    sh: Arc<Shared>,
    target: SocketAddr,
    rate: u64,
    run: Duration,
    hold_every: u64,
    hold: Duration,
    hello: Arc<[u8]>,
) -> (u64, u64) {
    let t0 = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let (mut started, mut skipped) = (0_u64, 0_u64);
    while !sh.stop.load(Relaxed) && t0.elapsed() < run {
        tick.tick().await;
        // Connections due by now at `rate`, less those already begun.
        let due = (t0.elapsed().as_secs_f64() * rate as f64) as u64;
        while started + skipped < due {
            if sh.open.load(Relaxed) >= MAX_OPEN {
                skipped += 1;
                continue;
            }
            started += 1;
            sh.open.fetch_add(1, Relaxed);
            let hold = (hold_every > 0 && started % hold_every == 0).then_some(hold);
            tasks.spawn(one(Arc::clone(&sh), target, Arc::clone(&hello), hold));
        }
        while tasks.try_join_next().is_some() {}
    }
    tasks.shutdown().await;
    (started, skipped)
}

/// One storm connection.
async fn one(sh: Arc<Shared>, target: SocketAddr, hello: Arc<[u8]>, hold: Option<Duration>) {
    struct Open(Arc<Shared>);
    impl Drop for Open {
        fn drop(&mut self) {
            self.0.open.fetch_sub(1, Relaxed);
        }
    }
    let _open = Open(Arc::clone(&sh));
    let bump = |c: &AtomicU64| {
        c.fetch_add(1, Relaxed);
    };
    let Ok(Ok(mut s)) = tokio::time::timeout(WAIT, TcpStream::connect(target)).await else {
        bump(&sh.connect_failed);
        return;
    };
    if s.write_all(&hello).await.is_err() {
        bump(&sh.closed);
        return;
    }
    let mut first = [0_u8; 1];
    match tokio::time::timeout(WAIT, s.read(&mut first)).await {
        Err(_) => bump(&sh.no_answer),
        Ok(Ok(1)) if first[0] == 0x16 => {
            bump(&sh.flights);
            if let Some(hold) = hold {
                tokio::time::sleep(hold).await;
            }
        }
        Ok(Ok(1)) if first[0] == 0x15 => bump(&sh.alerts),
        Ok(_) => bump(&sh.closed),
    }
}
