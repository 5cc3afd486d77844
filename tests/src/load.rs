//! A closed-loop HTTP/1.1 load of the tests' own, timed request by request:
//! each request on a new connection (`Connection: close`), with its status,
//! which backend answered (`x-backend`) and how long it took, so a fault
//! test can assert on every single request (none waited past a timeout,
//! every GET got 200), not on an average. It runs on threads of its own,
//! optionally inside a network namespace, until [`Load::stop`] (or drop).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// How long one request may take before the client gives up on it: far
/// above any timeout the tests configure, so a request that hangs is
/// measured (and fails the test's bound) instead of hanging the test.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);

/// One kind of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Req {
    /// `GET path`: idempotent, no body (`lb` may replay it).
    Get(&'static str),
    /// `POST path` with a small body (`lb` must never replay it).
    Post(&'static str),
}

impl Req {
    /// Whether `lb` may send it again after a backend lost it.
    #[must_use]
    pub fn retryable(self) -> bool {
        matches!(self, Self::Get(_))
    }
}

/// What one request got.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// What was sent.
    pub req: Req,
    /// When it started, from the start of the load.
    pub at: Duration,
    /// From connect to the end of the response (or the failure).
    pub took: Duration,
    /// The status code; 0 when no response came (see `error`).
    pub status: u16,
    /// The `x-backend` header of the response (the test backend's name).
    pub backend: String,
    /// What went wrong on the client's side (connect, write, read), if
    /// anything.
    pub error: String,
}

/// A running load; [`Load::stop`] ends it and returns every outcome.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<Outcome>>>,
    started: Instant,
}

impl Load {
    /// Starts `threads` clients sending requests to `target` in turn from
    /// `mix` (client `t`'s `i`-th request is `mix[(t + i) % len]`), with
    /// `pause` between two requests of one client, from inside the
    /// namespace `ns` if given.
    ///
    /// # Panics
    /// `mix` is empty.
    #[must_use]
    pub fn start(
        ns: Option<&str>,
        target: SocketAddr,
        threads: usize,
        pause: Duration,
        mix: &[Req],
    ) -> Self {
        assert!(!mix.is_empty(), "a load needs at least one kind of request");
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let threads = (0..threads)
            .map(|t| {
                let (stop, mix, ns) = (Arc::clone(&stop), mix.to_vec(), ns.map(str::to_owned));
                std::thread::spawn(move || {
                    if let Some(ns) = &ns {
                        if let Err(e) = crate::netns::enter(ns) {
                            return vec![Outcome {
                                req: mix[0],
                                at: started.elapsed(),
                                took: Duration::ZERO,
                                status: 0,
                                backend: String::new(),
                                error: format!("{e:#}"),
                            }];
                        }
                    }
                    let mut out = Vec::new();
                    let mut i = t;
                    while !stop.load(Relaxed) {
                        out.push(one(target, mix[i % mix.len()], started));
                        i += 1;
                        std::thread::sleep(pause);
                    }
                    out
                })
            })
            .collect();
        Self {
            stop,
            threads,
            started,
        }
    }

    /// When it started (each [`Outcome::at`] counts from here).
    #[must_use]
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Stops the clients (each finishes its request in flight) and returns
    /// every outcome, in the order they started.
    #[must_use]
    pub fn stop(mut self) -> Vec<Outcome> {
        self.stop.store(true, Relaxed);
        let mut all: Vec<Outcome> = std::mem::take(&mut self.threads)
            .into_iter()
            .flat_map(|t| t.join().unwrap_or_default())
            .collect();
        all.sort_by_key(|o| o.at);
        all
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
    }
}

/// One request on a new connection.
fn one(target: SocketAddr, req: Req, started: Instant) -> Outcome {
    let at = started.elapsed();
    let t0 = Instant::now();
    let mut o = Outcome {
        req,
        at,
        took: Duration::ZERO,
        status: 0,
        backend: String::new(),
        error: String::new(),
    };
    let head = match req {
        Req::Get(path) => format!("GET {path} HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n"),
        Req::Post(path) => format!(
            "POST {path} HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 8\r\n\r\norder=42"
        ),
    };
    let mut answer = Vec::new();
    let r = TcpStream::connect_timeout(&target, CLIENT_TIMEOUT)
        .map_err(|e| format!("connect: {e}"))
        .and_then(|mut s| {
            s.set_read_timeout(Some(CLIENT_TIMEOUT))
                .and_then(|()| s.set_write_timeout(Some(CLIENT_TIMEOUT)))
                .and_then(|()| s.write_all(head.as_bytes()))
                .map_err(|e| format!("write: {e}"))?;
            // Read to the end; a reset after the head still counts the head.
            let mut buf = [0u8; 16 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("read: {e}")),
                }
            }
        });
    o.took = t0.elapsed();
    if let Err(e) = r {
        o.error = e;
    }
    let text = String::from_utf8_lossy(&answer);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let mut lines = head.lines();
    o.status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    o.backend = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("x-backend"))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    o
}

/// The `q` quantile (0.0..=1.0) of `samples` (nearest rank); zero when
/// there are none.
#[must_use]
pub fn quantile(samples: &[Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut s = samples.to_vec();
    s.sort_unstable();
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}
