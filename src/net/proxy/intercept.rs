//! Intercepted CONNECT tunnels: the proxy ends the agent's TLS with a leaf
//! of the run's CA, reads the HTTP/1.1 requests inside, and sends each one
//! (checked and recorded like a plain request) over its own verified TLS
//! connection to the tunnel's host.
//!
//! Invariants:
//! - The tunnel's host, port and vetted addresses were fixed by the CONNECT
//!   (and its ClientHello's SNI checked against the host) before anything
//!   here runs; every request inside may only go there: its Host header
//!   (and absolute URI, if any) must name the tunnel's host and port
//!   (`domain_fronting` otherwise).
//! - Each request inside takes one slot of the request cap and yields one
//!   record; the tunnel itself yields one more record (`CONNECT`, `tls:
//!   intercepted`) when it closes, and takes no slot.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};

use super::{check_host_header, serve_http, ClientConn, Pending, ProxyBody, Shared};
use crate::net::decide::{authority_agrees, Reason, TLS_ALERT_INTERNAL_ERROR};
use crate::net::tls::Interceptor;
use crate::policy::domain::Host;

/// Where every request of an intercepted tunnel goes.
pub(super) struct TunnelTarget {
    pub host: Host,
    pub port: u16,
    pub candidates: Vec<SocketAddr>,
    pub sni: Option<String>,
    /// The pattern that allowed the CONNECT.
    pub rule: Option<String>,
}

/// Serve the agent's side of an intercepted tunnel until it closes (or the
/// proxy stops). `io` replays the ClientHello bytes already read. `None`
/// when the TLS handshake succeeded (each request has its own record).
pub(super) async fn serve<T>(
    shared: Arc<Shared>,
    interceptor: &Interceptor,
    mut io: T,
    target: TunnelTarget,
) -> Option<Reason>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = match interceptor.server_config(&target.host) {
        Ok(c) => c,
        Err(_) => {
            let _ = io.write_all(&TLS_ALERT_INTERNAL_ERROR).await;
            let _ = io.shutdown().await;
            return Some(Reason::ClientTls);
        }
    };
    let accept = tokio_rustls::TlsAcceptor::from(config).accept(io);
    let tls = match tokio::time::timeout(shared.cfg.client_timeout, accept).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(_)) => return Some(Reason::ClientTls),
        Err(_) => return Some(Reason::ClientTimeout),
    };
    let client = Arc::new(ClientConn {
        shared: Arc::clone(&shared),
        upstream: Mutex::new(None),
        tunnel: Some(Arc::new(target)),
    });
    serve_http(shared, client, tls).await;
    None
}

impl ClientConn {
    /// One request inside an intercepted tunnel.
    pub(super) async fn intercepted(
        &self,
        req: Request<Incoming>,
        mut rec: Pending,
        target: Arc<TunnelTarget>,
    ) -> Response<ProxyBody> {
        rec.host = target.host.to_string();
        rec.port = target.port;
        rec.sni.clone_from(&target.sni);
        rec.rule.clone_from(&target.rule);
        rec.tls = Some(super::Tls::Intercepted);
        rec.path = Some(req.uri().path().to_owned());
        if req.method() == hyper::Method::CONNECT {
            return self.refuse(rec, Reason::BadRequest);
        }
        if let Err(reason) = check_tunnel_authority(&req, &target.host, target.port) {
            return self.refuse(rec, reason);
        }
        if let Some(reason) = self.shared.cfg.policy.request_rule(
            &target.host,
            req.method().as_str(),
            req.uri().path(),
        ) {
            return self.refuse(rec, reason);
        }
        let host = target.host.clone();
        let port = target.port;
        self.exchange(req, rec, host, port, super::Route::Tunnel(&target))
            .await
    }
}

/// Inside a tunnel to `host:port`, the Host header (required once from
/// HTTP/1.1 on) and an absolute URI's authority must both name it.
fn check_tunnel_authority<B>(req: &Request<B>, host: &Host, port: u16) -> Result<(), Reason> {
    if let Some(authority) = req.uri().authority() {
        if !authority_agrees(host, port, authority.as_str(), 443) {
            return Err(Reason::DomainFronting);
        }
    }
    check_host_header(
        req.headers(),
        req.version(),
        (host, port, 443),
        Reason::DomainFronting,
    )
}

/// The client side of a tunnel after its ClientHello was read for the SNI
/// check: replays those bytes, then reads on.
pub(super) struct Prefixed<T> {
    prefix: Vec<u8>,
    pos: usize,
    io: T,
}

impl<T> Prefixed<T> {
    pub fn new(prefix: Vec<u8>, io: T) -> Self {
        Prefixed { prefix, pos: 0, io }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(rest) = this.prefix.get(this.pos..).filter(|r| !r.is_empty()) {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(rest.get(..n).unwrap_or_default());
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use hyper::header::{self, HeaderValue};
    use tokio::io::AsyncReadExt as _;

    fn req(uri: &str, host: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header(header::HOST, h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn requests_inside_a_tunnel_must_name_its_host() {
        let h = Host::Name("api.example.test".into());
        let ok = |r: &Request<()>| check_tunnel_authority(r, &h, 443);
        assert_eq!(ok(&req("/v1", Some("api.example.test"))), Ok(()));
        assert_eq!(ok(&req("/v1", Some("api.example.test:443"))), Ok(()));
        assert_eq!(
            ok(&req("/v1", Some("evil.example.test"))),
            Err(Reason::DomainFronting)
        );
        assert_eq!(
            ok(&req("/v1", Some("api.example.test:8443"))),
            Err(Reason::DomainFronting)
        );
        assert_eq!(
            ok(&req(
                "https://evil.example.test/v1",
                Some("api.example.test")
            )),
            Err(Reason::DomainFronting)
        );
        assert_eq!(ok(&req("/v1", None)), Err(Reason::BadRequest));
        let mut two = req("/v1", Some("api.example.test"));
        two.headers_mut()
            .append(header::HOST, HeaderValue::from_static("api.example.test"));
        assert_eq!(ok(&two), Err(Reason::BadRequest));
    }

    #[test]
    fn prefixed_replays_then_reads_on() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let inner: &[u8] = b" world";
            let mut p = Prefixed::new(b"hello".to_vec(), inner);
            let mut out = String::new();
            p.read_to_string(&mut out).await.unwrap();
            assert_eq!(out, "hello world");
        });
    }
}
