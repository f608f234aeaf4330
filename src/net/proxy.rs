//! The policy proxy: an HTTP/1.1 forward proxy with CONNECT tunnels, on
//! tokio + hyper, running in its own OS thread with its own runtime.
//!
//! Where things are:
//! - this file: accepting, plain requests (`ClientConn::forward`), the
//!   part every request shares (`ClientConn::exchange`: credentials,
//!   spend, the request cap, the upstream connection, the record), CONNECT
//!   and spliced tunnels;
//! - `proxy/intercept.rs`: TLS interception (requests read inside tunnels);
//! - `proxy/meter.rs`: spend metering; `proxy/upgrade.rs`: WebSocket
//!   relaying; `proxy/splice.rs`: zero-copy relaying of spliced tunnels.
//!
//! Invariants:
//! - The caller binds the listener ([`start`] takes a bound
//!   [`std::net::TcpListener`]), so "cannot bind" is an error before the agent
//!   starts, and the proxy accepts from the moment [`start`] returns.
//! - Every request reaches the upstream only after [`decide`](super::decide)
//!   allowed its host and port and vetted the address; the proxy resolves
//!   names itself (tokio's `lookup_host`, or `--resolve`) and dials the vetted
//!   IP, never the name (no DNS rebinding between check and dial).
//! - Plain requests must be absolute-URI `http://` requests whose Host header
//!   agrees with the URI; CONNECT must target an allowed port and (unless the
//!   port is a raw tunnel port) start with a TLS ClientHello whose SNI is the
//!   CONNECT host. The upstream of a tunnel is dialled only after that check.
//! - Every request and tunnel, allowed or denied, yields exactly one
//!   [`NetRequest`] (when its response body or tunnel ends, or as
//!   `cancelled` when the proxy stops under it) and bumps the counters; refusals answer 403 (429 for the request cap, 400 for
//!   malformed requests) with a JSON body `{"error": reason, "host": host}`.
//!   A refused tunnel (after its 200) gets a TLS `access_denied` alert.
//! - The request cap counts requests let through (after the domain check
//!   and address vetting); a spliced tunnel counts once, when it is
//!   accepted; an intercepted one counts the requests inside it instead.
//! - The notification pipe ([`ProxyHandle::notify_fd`]) is readable whenever
//!   records may be pending; it reads end-of-file once the proxy has stopped.
//! - Refusals and records allocate; the allowed keep-alive path reuses the
//!   client connection's upstream connection (no DNS, no dial, no reparse).

use std::convert::Infallible;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::credentials::Credentials;
use super::decide::{
    authority_agrees, check_sni, scan_client_hello, take_request_slot, vet_address, Addresses,
    Decision, HelloScan, Kind, Policy, Reason, Verdict, MAX_CLIENT_HELLO, TLS_ALERT_ACCESS_DENIED,
    TLS_ALERT_INTERNAL_ERROR,
};
use super::spend::PicoUsd;
use super::tls::Interceptor;
use crate::policy::domain::{parse_host, DomainPattern, Host};

mod intercept;
mod meter;
mod splice;
mod upgrade;

use intercept::{Prefixed, TunnelTarget};
pub use meter::Spend;

/// Metered request bodies buffered at once (8 x 32 MiB at most).
const MAX_METERED_BODIES: usize = 8;

/// Errors starting or stopping the proxy; each names the listen address.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("policy proxy: cannot read the listener's local address")]
    LocalAddr(#[source] io::Error),
    #[error("policy proxy on {addr}: cannot prepare the listener")]
    Listener {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("policy proxy on {addr}: cannot start the async runtime")]
    Runtime {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("policy proxy on {addr}: cannot create the notification pipe")]
    NotifyPipe {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("policy proxy on {addr}: cannot start its thread")]
    Thread {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("policy proxy on {addr}: its thread panicked")]
    Panicked { addr: SocketAddr },
}

/// How the proxy runs. Build with [`ProxyConfig::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Rules, `--resolve` entries, CONNECT ports.
    pub policy: Policy,
    /// `--max-requests`: requests let through before 429.
    pub max_requests: Option<u64>,
    /// Resolving and connecting to an upstream (all its addresses together).
    pub connect_timeout: Duration,
    /// From sending a request upstream to its response head (`None`: wait;
    /// model APIs may think for minutes before answering).
    pub response_timeout: Option<Duration>,
    /// For a client to send its request head, or a tunnel's ClientHello.
    pub client_timeout: Duration,
    /// On shutdown, how long open connections may finish before they are cut.
    pub shutdown_grace: Duration,
    /// Runtime worker threads; 0 runs everything on the proxy's own thread.
    pub worker_threads: usize,
    /// TLS interception: tunnels (except `tls: passthrough` hosts and raw
    /// tunnel ports) are ended here and their requests read.
    pub intercept: Option<Arc<Interceptor>>,
    /// `--max-spend-usd`: metered requests are priced and budgeted.
    pub spend: Option<Arc<Spend>>,
    /// `--credential`: placeholders in request headers are replaced with
    /// the secrets for their hosts; elsewhere they are refused.
    pub credentials: Option<Arc<Credentials>>,
}

impl ProxyConfig {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            max_requests: None,
            connect_timeout: Duration::from_secs(10),
            response_timeout: None,
            client_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(1),
            worker_threads: 2,
            intercept: None,
            spend: None,
            credentials: None,
        }
    }
}

/// One request or tunnel as the proxy saw it (a `net_request` event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetRequest {
    /// `GET`, `POST`, ..., or `CONNECT`.
    pub method: String,
    /// The normalised host (the raw authority text when it did not parse).
    pub host: String,
    /// The target port (0 when the request had none that parsed).
    pub port: u16,
    /// The URI path without the query; `None` for CONNECT.
    pub path: Option<String>,
    /// The address dialled (or the first candidate when dialling failed).
    pub resolved: Option<SocketAddr>,
    /// The pattern that allowed or denied the host.
    pub rule: Option<String>,
    pub decision: Decision,
    /// Why it was denied or failed; `None` for an allowed, completed request.
    pub reason: Option<Reason>,
    /// The HTTP status the client got (200 for an accepted CONNECT, even if
    /// the tunnel was then refused for its ClientHello).
    pub status: u16,
    /// The ClientHello's SNI of a tunnel, when it had one.
    pub sni: Option<String>,
    /// Request body bytes (tunnel: client to upstream, including the hello).
    pub bytes_up: u64,
    /// Response body bytes (tunnel: upstream to client).
    pub bytes_down: u64,
    pub duration_ms: u64,
    pub duration_us: u64,
    /// `intercepted` for a tunnel the proxy ended (and every request read
    /// inside one), `passthrough` for a spliced tunnel; absent for plain
    /// http requests and raw tunnels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    /// A metered request: the model it asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// A metered request: what it cost (USD).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "usd",
        rename = "cost_usd"
    )]
    pub cost: Option<PicoUsd>,
    /// Credentials whose secrets were put in this request's headers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub credentials_injected: Vec<String>,
    /// A request refused for the budget: what admitting it would have
    /// committed (spent + reserved + its estimate, USD).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "usd",
        rename = "needed_usd"
    )]
    pub needed: Option<PicoUsd>,
    /// A metered request: the run's spend after it (USD).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "usd",
        rename = "spend_usd"
    )]
    pub spent: Option<PicoUsd>,
}

/// How a tunnel's TLS was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tls {
    Intercepted,
    Passthrough,
}

fn usd<S: serde::Serializer>(v: &Option<PicoUsd>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(p) => s.serialize_f64(p.to_usd_f64()),
        None => s.serialize_none(),
    }
}

/// The proxy's counters, as read at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CounterSnapshot {
    pub total: u64,
    pub allowed: u64,
    pub denied: u64,
}

/// Live counters shared with the proxy thread.
#[derive(Debug, Default)]
pub struct Counters {
    total: AtomicU64,
    allowed: AtomicU64,
    denied: AtomicU64,
    /// Slots of the request cap taken so far.
    granted: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            total: self.total.load(Ordering::Acquire),
            allowed: self.allowed.load(Ordering::Acquire),
            denied: self.denied.load(Ordering::Acquire),
        }
    }
}

/// A running proxy. Dropping it shuts the proxy down (see [`Self::shutdown`]).
#[derive(Debug)]
pub struct ProxyHandle {
    addr: SocketAddr,
    counters: Arc<Counters>,
    records: mpsc::UnboundedReceiver<NetRequest>,
    notify: std::io::PipeReader,
    pending: Arc<AtomicBool>,
    /// Cleared (and notified) when the proxy stops accepting.
    listening: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl ProxyHandle {
    /// The address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn counters(&self) -> CounterSnapshot {
        self.counters.snapshot()
    }

    /// Readable (for poll(2)) whenever records may be pending; then call
    /// [`Self::drain_records`]. Reads end-of-file (POLLHUP) once the proxy
    /// has stopped: stop polling it then. Non-blocking, close-on-exec.
    pub fn notify_fd(&self) -> BorrowedFd<'_> {
        self.notify.as_fd()
    }

    /// Take every record that is ready, without blocking; this also
    /// consumes the pending notification.
    pub fn drain_records(&mut self) -> Vec<NetRequest> {
        // Order matters (see Notifier): empty the pipe, clear the flag,
        // then take the records.
        let mut sink = [0u8; 64];
        while matches!((&self.notify).read(&mut sink), Ok(n) if n > 0) {}
        self.pending.store(false, Ordering::SeqCst);
        let mut out = Vec::new();
        while let Ok(rec) = self.records.try_recv() {
            out.push(rec);
        }
        out
    }

    /// Wait for the next record (for async callers; the pipe is not needed
    /// then). `None` once the proxy has stopped and every record was taken.
    pub async fn next_record(&mut self) -> Option<NetRequest> {
        self.records.recv().await
    }

    /// Whether the proxy thread is still running.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Whether the proxy still accepts connections: false once its
    /// listening socket is gone or it was asked to stop (its thread may
    /// still be finishing open connections). The change is notified
    /// through [`ProxyHandle::notify_fd`].
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::SeqCst) && self.is_running()
    }

    /// Stop accepting, give open connections [`ProxyConfig::shutdown_grace`]
    /// to finish, cut the rest (their records are still delivered), and join
    /// the thread. Idempotent. Records stay readable afterwards.
    pub fn shutdown(&mut self) -> Result<(), ProxyError> {
        self.stop.send_replace(true);
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| ProxyError::Panicked { addr: self.addr }),
            None => Ok(()),
        }
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Start the proxy on a bound listener. Returns once the proxy accepts
/// (connections queue in the listener's backlog from the moment it was bound).
pub fn start(listener: std::net::TcpListener, cfg: ProxyConfig) -> Result<ProxyHandle, ProxyError> {
    let addr = listener.local_addr().map_err(ProxyError::LocalAddr)?;
    listener
        .set_nonblocking(true)
        .map_err(|source| ProxyError::Listener { addr, source })?;
    let runtime = if cfg.worker_threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cfg.worker_threads)
            .thread_name("vallignus-proxy-worker")
            .enable_all()
            .build()
    }
    .map_err(|source| ProxyError::Runtime { addr, source })?;
    let listener = {
        let _guard = runtime.enter();
        tokio::net::TcpListener::from_std(listener)
    }
    .map_err(|source| ProxyError::Listener { addr, source })?;

    let pipe_err = |source| ProxyError::NotifyPipe { addr, source };
    let (notify_rx, notify_tx) = std::io::pipe().map_err(pipe_err)?;
    set_nonblocking(&notify_rx).map_err(pipe_err)?;
    set_nonblocking(&notify_tx).map_err(pipe_err)?;

    let (tx, records) = mpsc::unbounded_channel();
    let (stop, stop_rx) = watch::channel(false);
    let counters = Arc::new(Counters::default());
    let pending = Arc::new(AtomicBool::new(false));
    let listening = Arc::new(AtomicBool::new(true));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(cfg.client_timeout)
        .keep_alive(true);
    let shared = Arc::new(Shared {
        cfg,
        http,
        counters: Arc::clone(&counters),
        records: tx,
        notifier: Notifier {
            pending: Arc::clone(&pending),
            pipe: notify_tx,
        },
        active: AtomicUsize::new(0),
        listening: Arc::clone(&listening),
        stop: stop_rx,
        metered_bodies: Arc::new(tokio::sync::Semaphore::new(MAX_METERED_BODIES)),
    });
    let thread = std::thread::Builder::new()
        .name("vallignus-proxy".into())
        .spawn(move || {
            let grace = shared.cfg.shutdown_grace;
            runtime.block_on(accept_loop(Arc::clone(&shared), listener, grace));
            drop(shared);
            runtime.shutdown_timeout(Duration::from_millis(200));
        })
        .map_err(|source| ProxyError::Thread { addr, source })?;
    Ok(ProxyHandle {
        addr,
        counters,
        records,
        notify: notify_rx,
        pending,
        listening,
        stop,
        thread: Some(thread),
    })
}

fn set_nonblocking<F: AsFd>(fd: F) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(&fd, FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl(&fd, FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    Ok(())
}

/// Wakes a poll(2) loop: one byte in the pipe per "records pending" episode.
///
/// Protocol: a producer sends its record, then writes a byte only if it
/// flips `pending` from false to true. The consumer empties the pipe, clears
/// `pending`, then takes records. A record sent after the consumer's last
/// `try_recv` was sent after the clear, so its producer (or another one
/// after the clear) writes a byte that the consumer has not yet read.
#[derive(Debug)]
struct Notifier {
    pending: Arc<AtomicBool>,
    pipe: std::io::PipeWriter,
}

impl Notifier {
    fn notify(&self) {
        if !self.pending.swap(true, Ordering::SeqCst) {
            // Non-blocking; a full pipe is readable already.
            let _ = (&self.pipe).write(&[1]);
        }
    }
}

struct Shared {
    cfg: ProxyConfig,
    http: hyper::server::conn::http1::Builder,
    counters: Arc<Counters>,
    records: mpsc::UnboundedSender<NetRequest>,
    notifier: Notifier,
    /// Open client connections and tunnels.
    active: AtomicUsize,
    /// See [`ProxyHandle::is_listening`].
    listening: Arc<AtomicBool>,
    stop: watch::Receiver<bool>,
    /// Metered request bodies held in memory at once (each up to
    /// [`meter::MAX_METERED_BODY`]): bounds what an agent can make the
    /// supervisor buffer.
    metered_bodies: Arc<tokio::sync::Semaphore>,
}

impl Shared {
    fn emit(&self, rec: NetRequest) {
        let c = &self.counters;
        match rec.decision {
            Decision::Allow => c.allowed.fetch_add(1, Ordering::AcqRel),
            Decision::Deny => c.denied.fetch_add(1, Ordering::AcqRel),
        };
        c.total.fetch_add(1, Ordering::AcqRel);
        if self.records.send(rec).is_ok() {
            self.notifier.notify();
        }
    }

    fn take_slot(&self) -> bool {
        let max = self.cfg.max_requests;
        self.counters
            .granted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                take_request_slot(n, max)
            })
            .is_ok()
    }

    /// Whether the cap is used up already (checked before resolving, so an
    /// over-cap request costs no DNS; [`Self::take_slot`] decides).
    fn cap_reached(&self) -> bool {
        self.cfg
            .max_requests
            .is_some_and(|max| self.counters.granted.load(Ordering::Acquire) >= max)
    }

    fn active(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        ActiveGuard(Arc::clone(self))
    }
}

struct ActiveGuard(Arc<Shared>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Resolves when shutdown was asked for (or the handle is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn accept_loop(shared: Arc<Shared>, listener: tokio::net::TcpListener, grace: Duration) {
    let stop = stopped(shared.stop.clone());
    tokio::pin!(stop);
    loop {
        tokio::select! {
            biased;
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let guard = shared.active();
                    tokio::spawn(serve_client(guard, stream));
                }
                // The listening socket itself is gone (closed, or destroyed
                // from outside): stop, so that the supervisor sees the
                // proxy end and records that the agent has no network.
                Err(e) if listener_gone(&e) => break,
                // EMFILE and friends, or a connection that failed before
                // it was accepted: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            },
        }
    }
    drop(listener);
    shared.listening.store(false, Ordering::SeqCst);
    shared.notifier.notify();
    let deadline = Instant::now() + grace;
    while shared.active.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Whether an accept error means the listening socket no longer listens
/// (not a passing shortage of fds or memory, nor an error of one pending
/// connection, which accept(2) also reports).
fn listener_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EBADF | libc::ENOTSOCK)
    )
}

async fn serve_client(guard: ActiveGuard, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let shared = Arc::clone(&guard.0);
    let client = Arc::new(ClientConn {
        shared: Arc::clone(&shared),
        upstream: Mutex::new(None),
        tunnel: None,
    });
    serve_http(shared, client, stream).await;
    drop(guard);
}

/// Serve HTTP/1.1 on `io` (a client connection, or the inside of an
/// intercepted tunnel) until it closes or the proxy stops.
async fn serve_http<T>(shared: Arc<Shared>, client: Arc<ClientConn>, io: T)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let client = Arc::clone(&client);
        async move { Ok::<_, Infallible>(client.handle(req).await) }
    });
    let conn = shared
        .http
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = stopped(shared.stop.clone()) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// An upstream HTTP connection kept for the client connection's next request.
struct Upstream {
    host: Host,
    port: u16,
    addr: SocketAddr,
    sender: SendRequest<RequestBody>,
}

/// Per client connection state (a connection to the proxy, or the inside
/// of an intercepted tunnel).
struct ClientConn {
    shared: Arc<Shared>,
    upstream: Mutex<Option<Upstream>>,
    /// Set inside an intercepted tunnel: where every request goes.
    tunnel: Option<Arc<TunnelTarget>>,
}

/// How a checked request reaches its upstream.
enum Route<'a> {
    /// A plain `http://` request: addresses as the policy's verdict says.
    Plain(Addresses<'a>),
    /// Inside an intercepted tunnel: the tunnel's vetted addresses, TLS.
    Tunnel(&'a TunnelTarget),
}

/// What a record needs, gathered while the request is handled. Exactly one
/// record per `Pending`: [`Pending::finish`] makes it; a `Pending` dropped
/// unfinished (its request cut off by the proxy stopping, or by the client
/// going away) records itself as `cancelled`, and a metered request's
/// meter is settled either way.
struct Pending {
    shared: Arc<Shared>,
    /// Not yet finished: dropping it records it.
    armed: bool,
    /// The request may have reached the upstream (a metered one is then
    /// charged its reservation unless its response settles it).
    sent: bool,
    /// A metered request's meter (from admission to settlement).
    meter: Option<meter::Meter>,
    method: String,
    host: String,
    port: u16,
    path: Option<String>,
    rule: Option<String>,
    resolved: Option<SocketAddr>,
    sni: Option<String>,
    started: Instant,
    tls: Option<Tls>,
    model: Option<String>,
    cost: Option<PicoUsd>,
    spent: Option<PicoUsd>,
    needed: Option<PicoUsd>,
    credentials_injected: Vec<String>,
}

impl Pending {
    fn new(shared: &Arc<Shared>, method: &Method) -> Self {
        Pending {
            shared: Arc::clone(shared),
            armed: true,
            sent: false,
            meter: None,
            method: method.as_str().to_owned(),
            host: String::new(),
            port: 0,
            path: None,
            rule: None,
            resolved: None,
            sni: None,
            started: Instant::now(),
            tls: None,
            model: None,
            cost: None,
            spent: None,
            needed: None,
            credentials_injected: Vec::new(),
        }
    }

    /// Settle a metered request that got no (complete) response: charged
    /// its reservation if it may have reached the upstream, else free.
    fn settle_unanswered(&mut self) {
        if let Some(m) = self.meter.take() {
            let settled = if self.sent {
                m.settle(None, false)
            } else {
                m.unsent()
            };
            self.settled(settled);
        }
    }

    fn settled(&mut self, s: Option<crate::net::spend::Settlement>) {
        if let Some(s) = s {
            self.cost = Some(s.cost);
            self.spent = Some(s.spent);
        }
    }

    /// Make the record and emit it (once).
    fn finish(mut self, reason: Option<Reason>, status: u16, up: u64, down: u64) {
        self.settle_unanswered();
        self.armed = false;
        let rec = self.record(reason, status, up, down);
        self.shared.emit(rec);
    }

    fn record(&mut self, reason: Option<Reason>, status: u16, up: u64, down: u64) -> NetRequest {
        let elapsed = self.started.elapsed();
        NetRequest {
            method: std::mem::take(&mut self.method),
            host: std::mem::take(&mut self.host),
            port: self.port,
            path: self.path.take(),
            resolved: self.resolved,
            rule: self.rule.take(),
            decision: reason.map_or(Decision::Allow, Reason::decision),
            reason,
            status,
            sni: self.sni.take(),
            bytes_up: up,
            bytes_down: down,
            duration_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            duration_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            tls: self.tls,
            model: self.model.take(),
            cost: self.cost,
            spent: self.spent,
            needed: self.needed,
            credentials_injected: std::mem::take(&mut self.credentials_injected),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.armed {
            self.armed = false;
            self.settle_unanswered();
            let rec = self.record(Some(Reason::Cancelled), 0, 0, 0);
            self.shared.emit(rec);
        }
    }
}

impl ClientConn {
    async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let mut rec = Pending::new(&self.shared, req.method());
        if let Some(target) = &self.tunnel {
            return self.intercepted(req, rec, Arc::clone(target)).await;
        }
        if req.method() == Method::CONNECT {
            self.connect(req, rec).await
        } else {
            rec.path = Some(req.uri().path().to_owned());
            self.forward(req, rec).await
        }
    }

    /// Answer a refusal (or failure) and record it.
    fn refuse(&self, rec: Pending, reason: Reason) -> Response<ProxyBody> {
        let body = serde_json::json!({ "error": reason.as_str(), "host": rec.host }).to_string();
        let body = Bytes::from(body);
        let len = body.len() as u64;
        let status = reason.status();
        let mut resp = Response::new(ProxyBody::fixed(body));
        *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        rec.finish(Some(reason), status, 0, len);
        resp
    }

    async fn forward(&self, req: Request<Incoming>, mut rec: Pending) -> Response<ProxyBody> {
        let uri = req.uri();
        match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("http") => {}
            Some(_) => {
                rec.host = uri.host().unwrap_or_default().to_owned();
                return self.refuse(rec, Reason::UnsupportedScheme);
            }
            None => return self.refuse(rec, Reason::BadRequest),
        }
        let Some(authority) = uri.authority() else {
            return self.refuse(rec, Reason::BadRequest);
        };
        let port = authority.port_u16().unwrap_or(80);
        rec.port = port;
        let host = match parse_host(authority.host()) {
            Ok(h) => h,
            Err(_) => {
                rec.host = authority.host().to_owned();
                return self.refuse(rec, Reason::BadRequest);
            }
        };
        rec.host = host.to_string();
        if let Err(reason) = check_host_header(
            req.headers(),
            req.version(),
            (&host, port, 80),
            Reason::HostHeaderMismatch,
        ) {
            return self.refuse(rec, reason);
        }
        let addrs = match self.shared.cfg.policy.decide(Kind::Http, &host, port) {
            Verdict::Allow { rule, addrs } => {
                rec.rule = Some(rule.to_string());
                addrs
            }
            Verdict::Deny { reason, rule } => {
                rec.rule = rule.map(DomainPattern::to_string);
                return self.refuse(rec, reason);
            }
        };
        if let Some(reason) =
            self.shared
                .cfg
                .policy
                .request_rule(&host, req.method().as_str(), req.uri().path())
        {
            return self.refuse(rec, reason);
        }
        self.exchange(req, rec, host, port, Route::Plain(addrs))
            .await
    }

    /// Send a checked request upstream and hand back the response: the
    /// part plain requests and requests inside intercepted tunnels share
    /// (connection reuse, the request cap, spend metering, the record).
    async fn exchange(
        &self,
        mut req: Request<Incoming>,
        mut rec: Pending,
        host: Host,
        port: u16,
        route: Route<'_>,
    ) -> Response<ProxyBody> {
        // Reuse this client's upstream connection when it goes to the same
        // host and port (vetted when it was dialled); else resolve and dial.
        let cached = self
            .upstream
            .lock()
            .ok()
            .and_then(|mut slot| slot.take())
            .filter(|u| u.host == host && u.port == port && !u.sender.is_closed());
        if cached.is_none() && self.shared.cap_reached() {
            return self.refuse(rec, Reason::MaxRequests);
        }

        // A WebSocket handshake: the client's side of the upgrade, taken
        // before the request is taken apart.
        let websocket = upgrade::wants_websocket(req.headers());
        let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));

        // Credentials: placeholders in the headers become the secrets for
        // their hosts; a placeholder going anywhere else (headers, URL, a
        // body read whole) refuses the request.
        let (mut parts, body) = req.into_parts();
        if let Some(creds) = self.shared.cfg.credentials.as_deref() {
            let target = parts.uri.path_and_query().map_or("", |pq| pq.as_str());
            if creds.find_foreign(&host, target.as_bytes()).is_some() {
                return self.refuse(rec, Reason::CredentialExfiltration);
            }
            if matches!(route, Route::Plain(_)) {
                // Secrets go only over TLS to a verified upstream: a
                // placeholder in a plain http request is refused.
                if parts
                    .headers
                    .values()
                    .any(|v| creds.find_in(v.as_bytes()).is_some())
                {
                    return self.refuse(rec, Reason::CredentialExfiltration);
                }
            } else {
                match creds.rewrite_headers(&host, &mut parts.headers) {
                    Ok(done) => rec.credentials_injected = done.injected,
                    Err(_) => return self.refuse(rec, Reason::CredentialExfiltration),
                }
                // TRACE echoes the request, secret included, back.
                if !rec.credentials_injected.is_empty() && parts.method == Method::TRACE {
                    return self.refuse(rec, Reason::CredentialExfiltration);
                }
            }
        }

        // A metered request is priced and reserved before it may go.
        let metered = match self.shared.cfg.spend.as_deref() {
            None => None,
            Some(spend) => match meter::classify(&parts.method, parts.uri.path(), websocket) {
                meter::Class::Free => None,
                meter::Class::Unmetered => {
                    return self.refuse(rec, Reason::UnmeteredEndpoint);
                }
                meter::Class::Metered(endpoint) => Some((spend, endpoint)),
            },
        };
        let mut body_permit = None;
        let body = match metered {
            None => RequestInner::Stream(body),
            Some((spend, endpoint)) => {
                let Ok(permit) = Arc::clone(&self.shared.metered_bodies)
                    .acquire_owned()
                    .await
                else {
                    return self.refuse(rec, Reason::UpstreamError);
                };
                body_permit = Some(permit);
                let read = meter::read_body(body);
                let bytes = match tokio::time::timeout(self.shared.cfg.client_timeout, read).await {
                    Ok(Ok(b)) => b,
                    Ok(Err(reason)) => return self.refuse(rec, reason),
                    Err(_) => return self.refuse(rec, Reason::ClientTimeout),
                };
                if let Some(creds) = self.shared.cfg.credentials.as_deref() {
                    if creds.find_foreign(&host, &bytes).is_some() {
                        return self.refuse(rec, Reason::CredentialExfiltration);
                    }
                }
                let admitted = match spend.admit(endpoint, &bytes) {
                    Ok(a) => a,
                    Err((reason, needed)) => {
                        rec.spent = Some(spend.spent());
                        rec.needed = needed;
                        return self.refuse(rec, reason);
                    }
                };
                rec.model = Some(admitted.meter.model.clone());
                let bytes = admitted.body.map_or(bytes, Bytes::from);
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                parts.headers.remove(header::TRANSFER_ENCODING);
                // Usage is read from the raw body.
                parts.headers.insert(
                    header::ACCEPT_ENCODING,
                    HeaderValue::from_static("identity"),
                );
                rec.meter = Some(admitted.meter);
                RequestInner::Full(Some(bytes))
            }
        };
        // From here a refusal releases a metered request's reservation
        // (see Pending::finish): it was not sent.
        let unsent = |rec: Pending, reason| self.refuse(rec, reason);

        let mut upstream = match cached {
            Some(u) => {
                rec.resolved = Some(u.addr);
                if !self.shared.take_slot() {
                    return unsent(rec, Reason::MaxRequests);
                }
                u
            }
            None => {
                let candidates = match route {
                    Route::Plain(addrs) => match self.shared.candidates(&host, port, addrs).await {
                        Ok(c) => c,
                        Err(reason) => return unsent(rec, reason),
                    },
                    Route::Tunnel(t) => t.candidates.clone(),
                };
                rec.resolved = candidates.first().copied();
                if !self.shared.take_slot() {
                    return unsent(rec, Reason::MaxRequests);
                }
                let dialled = match route {
                    Route::Plain(_) => self.shared.dial_http(&candidates, host, port).await,
                    Route::Tunnel(_) => self.shared.dial_https(&candidates, host, port).await,
                };
                match dialled {
                    Ok(u) => u,
                    Err(reason) => return unsent(rec, reason),
                }
            }
        };
        rec.resolved = Some(upstream.addr);
        if upstream.sender.ready().await.is_err() {
            return unsent(rec, Reason::UpstreamError);
        }

        parts.uri = parts
            .uri
            .path_and_query()
            .cloned()
            .map_or_else(|| Uri::from_static("/"), Uri::from);
        parts.version = Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        if websocket {
            upgrade::restore_upgrade_headers(&mut parts.headers);
        }
        let up = Arc::new(AtomicU64::new(0));
        let body = RequestBody {
            inner: body,
            up: Arc::clone(&up),
            _permit: body_permit,
        };
        rec.sent = true;
        let sent = upstream
            .sender
            .send_request(Request::from_parts(parts, body));
        let response = match self.shared.cfg.response_timeout {
            Some(limit) => match tokio::time::timeout(limit, sent).await {
                Ok(r) => r.map_err(Some),
                Err(_) => Err(None),
            },
            None => sent.await.map_err(Some),
        };
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                // Sent (perhaps): a metered request is charged its
                // reservation (Pending::finish).
                let reason = if e.is_some() {
                    Reason::UpstreamError
                } else {
                    Reason::UpstreamTimeout
                };
                return self.refuse(rec, reason);
            }
        };
        let mut response = response;
        if let Some(client_upgrade) =
            client_upgrade.filter(|_| response.status() == StatusCode::SWITCHING_PROTOCOLS)
        {
            // Switched: the upstream connection is the WebSocket's now (not
            // kept for reuse); relay both sides once the 101 is sent.
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            let (mut parts, _empty) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            upgrade::restore_upgrade_headers(&mut parts.headers);
            let guard = self.shared.active();
            tokio::spawn(upgrade::relay(guard, rec, client_upgrade, upstream_upgrade));
            return Response::from_parts(parts, ProxyBody::empty());
        }
        if let Ok(mut slot) = self.upstream.lock() {
            *slot = Some(upstream);
        }
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let status = parts.status.as_u16();
        if let Some(m) = rec.meter.as_mut() {
            let event_stream = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
            m.start(event_stream);
        }
        let body = ProxyBody(BodyKind::Upstream(Box::new(UpstreamBody {
            inner: body,
            down: 0,
            failed: false,
            ended: false,
            status,
            up,
            record: Some(rec),
        })));
        Response::from_parts(parts, body)
    }

    async fn connect(&self, req: Request<Incoming>, mut rec: Pending) -> Response<ProxyBody> {
        let Some(authority) = req.uri().authority() else {
            return self.refuse(rec, Reason::BadRequest);
        };
        rec.host = authority.host().to_owned();
        let Some(port) = authority.port_u16() else {
            return self.refuse(rec, Reason::BadRequest);
        };
        rec.port = port;
        let Ok(host) = parse_host(authority.host()) else {
            return self.refuse(rec, Reason::BadRequest);
        };
        rec.host = host.to_string();
        let addrs = match self.shared.cfg.policy.decide(Kind::Connect, &host, port) {
            Verdict::Allow { rule, addrs } => {
                rec.rule = Some(rule.to_string());
                addrs
            }
            Verdict::Deny { reason, rule } => {
                rec.rule = rule.map(DomainPattern::to_string);
                return self.refuse(rec, reason);
            }
        };
        if self.shared.cap_reached() {
            return self.refuse(rec, Reason::MaxRequests);
        }
        let candidates = match self.shared.candidates(&host, port, addrs).await {
            Ok(c) => c,
            Err(reason) => return self.refuse(rec, reason),
        };
        rec.resolved = candidates.first().copied();
        // An intercepted tunnel's requests take the slots, not the tunnel.
        let intercepted = self.shared.intercepts(&host, port);
        if !intercepted && !self.shared.take_slot() {
            return self.refuse(rec, Reason::MaxRequests);
        }
        let tunnel = Tunnel {
            guard: self.shared.active(),
            host,
            port,
            candidates,
            rec,
        };
        tokio::spawn(tunnel.run(hyper::upgrade::on(req)));
        Response::new(ProxyBody::empty())
    }
}

/// The Host header must be present once (HTTP/1.0 may omit it) and name
/// `host:port`, where a Host without a port means `default_port` (80 for
/// plain requests, 443 inside an intercepted tunnel); one that names
/// something else is refused for `mismatch`.
fn check_host_header(
    headers: &HeaderMap,
    version: Version,
    (host, port, default_port): (&Host, u16, u16),
    mismatch: Reason,
) -> Result<(), Reason> {
    let mut values = headers.get_all(header::HOST).iter();
    match (values.next(), values.next()) {
        (None, _) if version <= Version::HTTP_10 => Ok(()),
        (None, _) | (Some(_), Some(_)) => Err(Reason::BadRequest),
        (Some(value), None) => match value.to_str() {
            Ok(text) if authority_agrees(host, port, text, default_port) => Ok(()),
            _ => Err(mismatch),
        },
    }
}

/// Remove hop-by-hop headers (RFC 9110 7.6.1), including those the
/// Connection header names; Upgrade is dropped (no protocol switches).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

impl Shared {
    /// The addresses an allowed host may be dialled at, in order. `--resolve`
    /// and IP-rule addresses are named (not vetted); looked-up ones must be
    /// public.
    async fn candidates(
        &self,
        host: &Host,
        port: u16,
        addrs: Addresses<'_>,
    ) -> Result<Vec<SocketAddr>, Reason> {
        match addrs {
            Addresses::Named(list) => {
                Ok(list.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
            }
            Addresses::Literal(ip) => Ok(vec![SocketAddr::new(ip, port)]),
            Addresses::Lookup => {
                let Host::Name(name) = host else {
                    return Err(Reason::BadRequest);
                };
                let lookup = tokio::net::lookup_host((name.as_str(), port));
                let found: Vec<SocketAddr> =
                    match tokio::time::timeout(self.cfg.connect_timeout, lookup).await {
                        Ok(Ok(it)) => it.collect(),
                        Ok(Err(_)) => return Err(Reason::ResolveFailed),
                        Err(_) => return Err(Reason::UpstreamTimeout),
                    };
                if found.is_empty() {
                    return Err(Reason::ResolveFailed);
                }
                let vetted: Vec<SocketAddr> = found
                    .into_iter()
                    .filter(|a| vet_address(a.ip(), false).is_ok())
                    .collect();
                if vetted.is_empty() {
                    Err(Reason::NonPublicAddress)
                } else {
                    Ok(vetted)
                }
            }
        }
    }

    /// Connect to the first candidate that answers, within the timeout.
    async fn dial(&self, candidates: &[SocketAddr]) -> Result<(TcpStream, SocketAddr), Reason> {
        let deadline = tokio::time::Instant::now() + self.cfg.connect_timeout;
        for &addr in candidates {
            match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok((stream, addr));
                }
                Ok(Err(_)) => continue,
                Err(_) => return Err(Reason::UpstreamTimeout),
            }
        }
        Err(Reason::UpstreamUnreachable)
    }

    /// Whether a tunnel to `host:port` is intercepted (rather than spliced).
    fn intercepts(&self, host: &Host, port: u16) -> bool {
        self.cfg.intercept.is_some()
            && self.cfg.policy.requires_tls(port)
            && !self.cfg.policy.passthrough(host)
    }

    /// An upstream connection over TLS verified for `host`.
    async fn dial_https(
        &self,
        candidates: &[SocketAddr],
        host: Host,
        port: u16,
    ) -> Result<Upstream, Reason> {
        let Some(ic) = &self.cfg.intercept else {
            return Err(Reason::UpstreamTls);
        };
        let config = ic.client_config().map_err(|_| Reason::UpstreamTls)?;
        let (stream, addr) = self.dial(candidates).await?;
        let connect = tokio_rustls::TlsConnector::from(config)
            .connect(super::tls::server_name(&host), stream);
        let tls = match tokio::time::timeout(self.cfg.connect_timeout, connect).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(_)) => return Err(Reason::UpstreamTls),
            Err(_) => return Err(Reason::UpstreamTimeout),
        };
        http1_upstream(tls, addr, host, port).await
    }

    async fn dial_http(
        &self,
        candidates: &[SocketAddr],
        host: Host,
        port: u16,
    ) -> Result<Upstream, Reason> {
        let (stream, addr) = self.dial(candidates).await?;
        http1_upstream(stream, addr, host, port).await
    }
}

/// An HTTP/1.1 client connection on `io`, driven by its own task.
async fn http1_upstream<T>(
    io: T,
    addr: SocketAddr,
    host: Host,
    port: u16,
) -> Result<Upstream, Reason>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|_| Reason::UpstreamError)?;
    tokio::spawn(async move {
        // with_upgrades: a WebSocket handshake may switch this connection.
        let _ = conn.with_upgrades().await;
    });
    Ok(Upstream {
        host,
        port,
        addr,
        sender,
    })
}

/// An accepted CONNECT, from the upgrade to the end of the splice.
struct Tunnel {
    guard: ActiveGuard,
    host: Host,
    port: u16,
    candidates: Vec<SocketAddr>,
    rec: Pending,
}

/// How a tunnel ended before or instead of the splice.
struct TunnelEnd {
    reason: Option<Reason>,
    up: u64,
    down: u64,
}

impl Tunnel {
    /// Boxed: an intercepted tunnel serves requests, and serving requests
    /// can start tunnels; the explicit `Send` future breaks that cycle.
    fn run(
        mut self,
        upgrade: hyper::upgrade::OnUpgrade,
    ) -> Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            let end = self.splice(upgrade).await;
            self.rec.finish(end.reason, 200, end.up, end.down);
            drop(self.guard);
        })
    }

    async fn splice(&mut self, upgrade: hyper::upgrade::OnUpgrade) -> TunnelEnd {
        let refused = |reason| TunnelEnd {
            reason: Some(reason),
            up: 0,
            down: 0,
        };
        let shared = Arc::clone(&self.guard.0);
        let Ok(upgraded) = upgrade.await else {
            return refused(Reason::BadRequest);
        };
        let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
            return refused(Reason::BadRequest);
        };
        let mut client = parts.io.into_inner();
        let mut first = Vec::from(parts.read_buf.as_ref());

        if shared.cfg.policy.requires_tls(self.port) {
            let deadline = tokio::time::Instant::now() + shared.cfg.client_timeout;
            let verdict = loop {
                match scan_client_hello(&first) {
                    HelloScan::Incomplete => {}
                    HelloScan::NotTls => break Err(Reason::NotTls),
                    HelloScan::ClientHello { sni } => {
                        self.rec.sni = sni.map(|s| String::from_utf8_lossy(s).into_owned());
                        break check_sni(&self.host, sni);
                    }
                }
                let want = MAX_CLIENT_HELLO.saturating_sub(first.len()).clamp(1, 4096);
                let mut chunk = [0u8; 4096];
                let chunk = chunk.get_mut(..want).unwrap_or_default();
                match tokio::time::timeout_at(deadline, client.read(chunk)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break Err(Reason::NotTls),
                    Ok(Ok(n)) => first.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                    Err(_) => break Err(Reason::ClientTimeout),
                }
            };
            if let Err(reason) = verdict {
                if reason != Reason::NotTls && reason != Reason::ClientTimeout {
                    let _ = client.write_all(&TLS_ALERT_ACCESS_DENIED).await;
                }
                let _ = client.shutdown().await;
                return TunnelEnd {
                    reason: Some(reason),
                    up: first.len() as u64,
                    down: 0,
                };
            }
        }

        if let Some(ic) = shared
            .cfg
            .intercept
            .clone()
            .filter(|_| shared.intercepts(&self.host, self.port))
        {
            self.rec.tls = Some(Tls::Intercepted);
            let counted = Counted::new(Prefixed::new(first, client), 0);
            let (up, down) = (Arc::clone(&counted.up), Arc::clone(&counted.down));
            let target = TunnelTarget {
                host: self.host.clone(),
                port: self.port,
                candidates: std::mem::take(&mut self.candidates),
                sni: self.rec.sni.clone(),
                rule: self.rec.rule.clone(),
            };
            let reason = intercept::serve(Arc::clone(&shared), &ic, counted, target).await;
            return TunnelEnd {
                reason,
                up: up.load(Ordering::Relaxed),
                down: down.load(Ordering::Relaxed),
            };
        }
        if shared.cfg.intercept.is_some() && shared.cfg.policy.requires_tls(self.port) {
            self.rec.tls = Some(Tls::Passthrough);
        }

        let (mut upstream, addr) = match shared.dial(&self.candidates).await {
            Ok(d) => d,
            Err(reason) => {
                let _ = client.write_all(&TLS_ALERT_INTERNAL_ERROR).await;
                let _ = client.shutdown().await;
                return TunnelEnd {
                    reason: Some(reason),
                    up: first.len() as u64,
                    down: 0,
                };
            }
        };
        self.rec.resolved = Some(addr);
        if upstream.write_all(&first).await.is_err() {
            return TunnelEnd {
                reason: Some(Reason::UpstreamError),
                up: first.len() as u64,
                down: 0,
            };
        }
        let up = AtomicU64::new(first.len() as u64);
        let down = AtomicU64::new(0);
        tokio::select! {
            _ = splice::relay(&client, &upstream, &up, &down) => {}
            () = stopped(shared.stop.clone()) => {}
        }
        TunnelEnd {
            reason: None,
            up: up.load(Ordering::Relaxed),
            down: down.load(Ordering::Relaxed),
        }
    }
}

/// The client side of a tunnel, counting bytes read (up) and written (down).
struct Counted<T> {
    io: T,
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
}

impl<T> Counted<T> {
    fn new(io: T, up: u64) -> Self {
        Counted {
            io,
            up: Arc::new(AtomicU64::new(up)),
            down: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            let n = (buf.filled().len() - before) as u64;
            this.up.fetch_add(n, Ordering::Relaxed);
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            this.down.fetch_add(n as u64, Ordering::Relaxed);
        }
        res
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A request body on its way upstream, counting its bytes.
struct RequestBody {
    inner: RequestInner,
    up: Arc<AtomicU64>,
    /// A metered body's slot of [`MAX_METERED_BODIES`], freed with it.
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

enum RequestInner {
    /// Streamed from the client as it arrives.
    Stream(Incoming),
    /// Read whole first (a metered request), possibly rewritten.
    Full(Option<Bytes>),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let res = match &mut this.inner {
            RequestInner::Stream(body) => Pin::new(body).poll_frame(cx),
            RequestInner::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        };
        if let Poll::Ready(Some(Ok(frame))) = &res {
            if let Some(data) = frame.data_ref() {
                this.up.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            RequestInner::Stream(body) => body.is_end_stream(),
            RequestInner::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            RequestInner::Stream(body) => body.size_hint(),
            RequestInner::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            RequestInner::Full(None) => SizeHint::with_exact(0),
        }
    }
}

/// The body of every response the proxy sends.
struct ProxyBody(BodyKind);

enum BodyKind {
    Fixed(Option<Bytes>),
    /// Boxed: with its record and meter it is large; `Fixed` is common.
    Upstream(Box<UpstreamBody>),
}

impl ProxyBody {
    fn fixed(bytes: Bytes) -> Self {
        ProxyBody(BodyKind::Fixed(Some(bytes)))
    }

    fn empty() -> Self {
        ProxyBody(BodyKind::Fixed(None))
    }
}

/// An upstream response body on its way to the client; emits the request's
/// record when it is dropped (finished, failed or abandoned).
struct UpstreamBody {
    inner: Incoming,
    down: u64,
    failed: bool,
    /// The body reached its end.
    ended: bool,
    status: u16,
    up: Arc<AtomicU64>,
    /// Its record (with a metered request's meter), made on drop.
    record: Option<Pending>,
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if let Some(mut rec) = self.record.take() {
            let complete = !self.failed && (self.ended || self.inner.is_end_stream());
            if let Some(m) = rec.meter.take() {
                let settled = m.settle(Some(self.status), complete);
                rec.settled(settled);
            }
            let reason = self.failed.then_some(Reason::UpstreamError);
            let up = self.up.load(Ordering::Relaxed);
            rec.finish(reason, self.status, up, self.down);
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().0 {
            BodyKind::Fixed(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            BodyKind::Upstream(u) => {
                let res = Pin::new(&mut u.inner).poll_frame(cx);
                match &res {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            u.down += data.len() as u64;
                            if let Some(m) = u.record.as_mut().and_then(|r| r.meter.as_mut()) {
                                m.feed(data);
                            }
                        }
                    }
                    Poll::Ready(Some(Err(_))) => u.failed = true,
                    Poll::Ready(None) => u.ended = true,
                    Poll::Pending => {}
                }
                res
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            BodyKind::Fixed(bytes) => bytes.is_none(),
            BodyKind::Upstream(u) => u.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            BodyKind::Fixed(Some(b)) => SizeHint::with_exact(b.len() as u64),
            BodyKind::Fixed(None) => SizeHint::with_exact(0),
            BodyKind::Upstream(u) => u.inner.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic x"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn host_header_rules() {
        let host = parse_host("a.test").unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(
            check_host_header(
                &h,
                Version::HTTP_10,
                (&host, 80, 80),
                Reason::HostHeaderMismatch
            ),
            Ok(())
        );
        assert_eq!(
            check_host_header(
                &h,
                Version::HTTP_11,
                (&host, 80, 80),
                Reason::HostHeaderMismatch
            ),
            Err(Reason::BadRequest)
        );
        h.insert(header::HOST, HeaderValue::from_static("a.test"));
        assert_eq!(
            check_host_header(
                &h,
                Version::HTTP_11,
                (&host, 80, 80),
                Reason::HostHeaderMismatch
            ),
            Ok(())
        );
        assert_eq!(
            check_host_header(
                &h,
                Version::HTTP_11,
                (&host, 8080, 80),
                Reason::HostHeaderMismatch
            ),
            Err(Reason::HostHeaderMismatch)
        );
        h.append(header::HOST, HeaderValue::from_static("a.test"));
        assert_eq!(
            check_host_header(
                &h,
                Version::HTTP_11,
                (&host, 80, 80),
                Reason::HostHeaderMismatch
            ),
            Err(Reason::BadRequest)
        );
    }
}
