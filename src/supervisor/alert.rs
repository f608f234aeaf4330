//! `violation_protocol.alert_webhook`: on a violation the supervisor (never
//! the sandbox) POSTs a JSON alert to the configured URL.
//!
//! Invariants: the whole attempt (name lookup, connect, send, response) runs
//! on its own thread, and the supervisor waits for its outcome at most until
//! [`TIMEOUT`] after it started ([`PendingAlert::wait`]): a slow DNS lookup
//! (`getaddrinfo` has no timeout of its own) or a server that never answers
//! cannot hold up the end of the run. The attempt is an `alert_attempt`
//! event when it starts, and its outcome an `alert_sent` or `alert_failed`
//! event before the session is finished. A thread still stuck in a lookup
//! when the run ends is left behind (it touches nothing of the session).
//! Only `http://` URLs are supported (checked when the policy is resolved,
//! so a run with an `https://` webhook fails before it starts).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Total time an alert may take, name lookup to last byte.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// What the attempt was doing, for the message when it runs out of time.
const STAGES: [&str; 4] = [
    "resolving the host name",
    "connecting",
    "sending the alert",
    "waiting for the response",
];

/// Resolves a host name (injectable, so tests can make it slow).
type Resolver = fn(&str, u16) -> io::Result<Vec<SocketAddr>>;

fn system_resolver(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    (host, port).to_socket_addrs().map(Iterator::collect)
}

/// A socket timeout: `EAGAIN` for a read or write timeout, `ETIMEDOUT`
/// for a connect timeout.
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// An alert being delivered.
#[derive(Debug)]
pub struct PendingAlert {
    pub url: String,
    deadline: Instant,
    stage: Arc<AtomicU8>,
    outcome: Receiver<Result<u16, String>>,
}

impl PendingAlert {
    /// The HTTP status, or why the alert was not delivered; waits at most
    /// until the attempt's deadline.
    pub fn wait(self) -> Result<u16, String> {
        // A little past the deadline: the attempt's own timeouts end at
        // it, and their message is the more precise one.
        let left =
            self.deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(100);
        match self.outcome.recv_timeout(left) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => {
                let stage = usize::from(self.stage.load(Ordering::Relaxed));
                Err(format!(
                    "no result within {} s (still {})",
                    TIMEOUT.as_secs(),
                    STAGES.get(stage).copied().unwrap_or("running")
                ))
            }
            Err(RecvTimeoutError::Disconnected) => {
                Err("the alert thread ended without a result".into())
            }
        }
    }
}

/// A parsed `http://host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub url: String,
    host: String,
    port: u16,
    path: String,
}

impl Webhook {
    pub fn parse(url: &str) -> Result<Self, String> {
        let bad = |m: String| format!("alert webhook {url:?}: {m}");
        let normalised = crate::policy::file::validate_webhook(url).map_err(bad)?;
        let parsed = url::Url::parse(&normalised).map_err(|e| bad(e.to_string()))?;
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) => d.to_string(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            None => return Err(bad("the URL has no host".into())),
        };
        let path = &parsed[url::Position::BeforePath..];
        Ok(Self {
            url: url.to_string(),
            host,
            port: parsed.port_or_known_default().unwrap_or(80),
            path: if path.is_empty() { "/" } else { path }.to_string(),
        })
    }

    /// POST `body` (JSON) on a new thread; [`PendingAlert::wait`] gives
    /// the HTTP status.
    pub fn send(&self, body: String) -> PendingAlert {
        self.send_with(body, system_resolver)
    }

    fn send_with(&self, body: String, resolve: Resolver) -> PendingAlert {
        let deadline = Instant::now() + TIMEOUT;
        let stage = Arc::new(AtomicU8::new(0));
        let (tx, outcome) = mpsc::sync_channel(1);
        let hook = self.clone();
        let at = Arc::clone(&stage);
        // If the thread cannot start, `tx` is dropped with the closure and
        // `wait` says so.
        let _ = std::thread::Builder::new()
            .name("vallignus-alert".into())
            .spawn(move || {
                let _ = tx.send(hook.post(&body, deadline, resolve, &at));
            });
        PendingAlert {
            url: self.url.clone(),
            deadline,
            stage,
            outcome,
        }
    }

    fn post(
        &self,
        body: &str,
        deadline: Instant,
        resolve: Resolver,
        stage: &AtomicU8,
    ) -> Result<u16, String> {
        let left = || {
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        };
        let addrs = resolve(&self.host, self.port)
            .map_err(|e| format!("cannot resolve {}: {e}", self.host))?;
        if addrs.is_empty() {
            return Err(format!("no address for {}", self.host));
        }
        stage.store(1, Ordering::Relaxed);
        let mut last_error = format!("no time left to connect to {}", self.host);
        let mut connected = None;
        for addr in addrs {
            if Instant::now() >= deadline {
                break;
            }
            match TcpStream::connect_timeout(&addr, left()) {
                Ok(c) => {
                    connected = Some(c);
                    break;
                }
                Err(e) => last_error = format!("connect {addr}: {e}"),
            }
        }
        let mut conn = connected.ok_or(last_error)?;
        stage.store(2, Ordering::Relaxed);
        conn.set_write_timeout(Some(left()))
            .map_err(|e| e.to_string())?;
        let request = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: vallignus/{}\r\n\r\n{}",
            self.path,
            self.host,
            body.len(),
            env!("CARGO_PKG_VERSION"),
            body
        );
        conn.write_all(request.as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        stage.store(3, Ordering::Relaxed);
        conn.set_read_timeout(Some(left()))
            .map_err(|e| e.to_string())?;
        let mut head = [0u8; 64];
        let mut got = 0;
        while got < 12 {
            match conn.read(&mut head[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if is_timeout(&e) => {
                    return Err(format!("no response within {} s", TIMEOUT.as_secs()))
                }
                Err(e) => return Err(format!("no response: {e}")),
            }
        }
        let line = String::from_utf8_lossy(&head[..got]);
        line.split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not an HTTP response: {line:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_urls_only() {
        let w = Webhook::parse("http://127.0.0.1:9000/hook").unwrap();
        assert_eq!(
            (w.host.as_str(), w.port, w.path.as_str()),
            ("127.0.0.1", 9000, "/hook")
        );
        let w = Webhook::parse("http://alerts.example").unwrap();
        assert_eq!((w.port, w.path.as_str()), (80, "/"));
        assert!(Webhook::parse("https://x/").unwrap_err().contains("https"));
        assert!(Webhook::parse("http://user:pw@x/").is_err());
        assert!(Webhook::parse("http://x:notaport/").is_err());
        // The flag is checked as the policy file is (these passed the flag
        // and would only have failed at the first violation).
        for bad in [
            "http://exa mple/x",
            "http://:80/x",
            "http://[::1/x",
            "garbage",
        ] {
            assert!(Webhook::parse(bad).is_err(), "{bad}");
        }
        let w = Webhook::parse("HTTP://[::1]:8080/a?b=c").unwrap();
        assert_eq!(
            (w.host.as_str(), w.port, w.path.as_str()),
            ("::1", 8080, "/a?b=c")
        );
    }

    #[test]
    fn posts_and_reads_the_status() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            let mut buf = vec![0u8; 4096];
            let n = c.read(&mut buf).unwrap();
            c.write_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
                .unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        let w = Webhook::parse(&format!("http://127.0.0.1:{port}/hook")).unwrap();
        let pending = w.send("{\"a\":1}".into());
        assert_eq!(pending.url, format!("http://127.0.0.1:{port}/hook"));
        assert_eq!(pending.wait(), Ok(202));
        let req = server.join().unwrap();
        assert!(req.starts_with("POST /hook HTTP/1.1\r\n"), "{req}");
        assert!(req.ends_with("{\"a\":1}"), "{req}");
    }

    #[test]
    fn a_dead_endpoint_fails_fast() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let w = Webhook::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        let t = Instant::now();
        assert!(w.send(String::new()).wait().is_err());
        assert!(t.elapsed() < TIMEOUT + Duration::from_millis(500));
    }

    #[test]
    fn a_hanging_name_lookup_is_bounded_too() {
        fn slow(_: &str, _: u16) -> io::Result<Vec<SocketAddr>> {
            std::thread::sleep(Duration::from_secs(30));
            Ok(Vec::new())
        }
        let w = Webhook::parse("http://alerts.example/").unwrap();
        let t = Instant::now();
        let err = w.send_with(String::new(), slow).wait().unwrap_err();
        assert!(t.elapsed() < TIMEOUT + Duration::from_millis(500));
        assert!(t.elapsed() >= TIMEOUT, "{:?}", t.elapsed());
        assert_eq!(err, "no result within 2 s (still resolving the host name)");
    }

    #[test]
    fn a_server_that_never_answers_is_bounded() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let w = Webhook::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        let t = Instant::now();
        let err = w.send("{}".into()).wait().unwrap_err();
        assert!(t.elapsed() < TIMEOUT + Duration::from_millis(500));
        // The attempt's own read timeout, or (on a loaded machine) the
        // deadline of the wait.
        assert!(
            err == "no response within 2 s"
                || err == "no result within 2 s (still waiting for the response)",
            "{err}"
        );
        drop(listener);
    }
}
