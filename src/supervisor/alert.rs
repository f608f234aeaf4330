//! `violation_protocol.alert_webhook`: on a violation the supervisor (never
//! the sandbox) POSTs a JSON alert to the configured URL.
//!
//! Invariants: the alert runs on its own thread with a short, total
//! timeout, so teardown never waits for it; its outcome is recorded as an
//! `alert_sent` or `alert_failed` event before the session is finished.
//! Only `http://` URLs are supported (checked when the policy is resolved,
//! so a run with an `https://` webhook fails before it starts).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Total time an alert may take, connect to last byte.
pub const TIMEOUT: Duration = Duration::from_secs(2);

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
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("alert webhook {url:?}: only http:// URLs are supported (https is not yet)")
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!(
                "alert webhook {url:?}: no host (or credentials in the URL)"
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                p.parse()
                    .map_err(|_| format!("alert webhook {url:?}: bad port {p:?}"))?,
            ),
            _ => (authority.to_string(), 80),
        };
        Ok(Self {
            url: url.to_string(),
            host,
            port,
            path: path.to_string(),
        })
    }

    /// POST `body` (JSON) on a new thread; the result is the HTTP status.
    pub fn send(&self, body: String) -> JoinHandle<Result<u16, String>> {
        let hook = self.clone();
        std::thread::spawn(move || hook.post(&body))
    }

    fn post(&self, body: &str) -> Result<u16, String> {
        let deadline = Instant::now() + TIMEOUT;
        let left = || {
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        };
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", self.host))?
            .next()
            .ok_or_else(|| format!("no address for {}", self.host))?;
        let mut conn = TcpStream::connect_timeout(&addr, left())
            .map_err(|e| format!("connect {addr}: {e}"))?;
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
        conn.set_read_timeout(Some(left()))
            .map_err(|e| e.to_string())?;
        let mut head = [0u8; 64];
        let mut got = 0;
        while got < 12 {
            match conn.read(&mut head[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
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
        assert_eq!(w.send("{\"a\":1}".into()).join().unwrap(), Ok(202));
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
        assert!(w.send(String::new()).join().unwrap().is_err());
        assert!(t.elapsed() < TIMEOUT + Duration::from_millis(500));
    }
}
