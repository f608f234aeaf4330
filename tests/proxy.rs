//! The policy proxy as a library, on loopback only: local upstream servers on
//! 127.0.0.1, reached through `--resolve`-style overrides. No other address is
//! ever a target (names that are not overridden are refused before any dial,
//! or resolve through /etc/hosts only: `localhost`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use vallignus::net::decide::{build_client_hello, Decision, Policy, Reason, Rules};
use vallignus::net::proxy::{start, NetRequest, ProxyConfig, ProxyHandle};

const TIMEOUT: Duration = Duration::from_secs(20);

/// A local HTTP upstream: answers `NAME METHOD PATH?QUERY host=HOST body=LEN`.
struct Upstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    _runtime: tokio::runtime::Runtime,
}

fn upstream(name: &'static str) -> Upstream {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&connections);
    runtime.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<Incoming>| async move {
                        let method = req.method().clone();
                        let uri = req.uri().clone();
                        let host = req
                            .headers()
                            .get("host")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_owned();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let text = format!("{name} {method} {uri} host={host} body={}", body.len());
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        connections,
        _runtime: runtime,
    }
}

/// A raw TCP echo server (the far end of CONNECT tunnels).
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

#[derive(Default)]
struct Setup<'a> {
    allow: &'a [&'a str],
    deny: &'a [&'a str],
    resolve: Vec<String>,
    connect_ports: Vec<u16>,
    raw_tunnel_ports: Vec<u16>,
    max_requests: Option<u64>,
}

fn proxy(setup: Setup<'_>) -> ProxyHandle {
    let rules = Rules::parse(setup.allow, setup.deny).unwrap();
    let resolve = setup.resolve.iter().map(|r| r.parse().unwrap()).collect();
    let policy = Policy::new(rules, resolve, setup.connect_ports, setup.raw_tunnel_ports).unwrap();
    let mut cfg = ProxyConfig::new(policy);
    cfg.max_requests = setup.max_requests;
    cfg.connect_timeout = Duration::from_secs(5);
    cfg.client_timeout = Duration::from_secs(5);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    start(listener, cfg).unwrap()
}

/// A parsed HTTP response.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

fn read_reply(stream: &mut TcpStream) -> Reply {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "eof in head: {buf:?}");
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let status = head[9..12].parse().unwrap();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).unwrap();
    Reply {
        status,
        head,
        body: String::from_utf8(body).unwrap(),
    }
}

fn connect(proxy: &ProxyHandle) -> TcpStream {
    let s = TcpStream::connect(proxy.addr()).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}

/// Send raw request bytes on a fresh connection and read one response.
fn raw(proxy: &ProxyHandle, request: &str) -> Reply {
    let mut s = connect(proxy);
    s.write_all(request.as_bytes()).unwrap();
    read_reply(&mut s)
}

fn get(proxy: &ProxyHandle, url: &str, host: &str) -> Reply {
    raw(
        proxy,
        &format!("GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
}

/// Wait (with poll(2) on the notification fd) until `n` records arrived.
fn records(proxy: &mut ProxyHandle, n: usize) -> Vec<NetRequest> {
    use nix::poll::{poll, PollFd, PollFlags};
    let deadline = Instant::now() + TIMEOUT;
    let mut out = Vec::new();
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} records: {out:?}",
            out.len()
        );
        let ready = {
            let mut fds = [PollFd::new(proxy.notify_fd(), PollFlags::POLLIN)];
            poll(&mut fds, 1000u16).unwrap()
        };
        if ready > 0 {
            out.extend(proxy.drain_records());
        }
    }
    // Nothing else pending.
    std::thread::sleep(Duration::from_millis(20));
    out.extend(proxy.drain_records());
    assert_eq!(out.len(), n, "{out:?}");
    out
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{body:?}: {e}"))
}

#[test]
fn allowed_host_is_forwarded_and_recorded() {
    let up = upstream("up1");
    let port = up.addr.port();
    let mut p = proxy(Setup {
        allow: &["api.example.com"],
        resolve: vec![format!("api.example.com:{port}:127.0.0.1")],
        ..Setup::default()
    });
    let r = get(
        &p,
        &format!("http://api.example.com:{port}/v1/models?key=secret"),
        &format!("api.example.com:{port}"),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.body,
        format!("up1 GET /v1/models?key=secret host=api.example.com:{port} body=0")
    );
    let post = raw(
        &p,
        &format!(
            "POST http://api.example.com:{port}/v1/chat HTTP/1.1\r\nHost: api.example.com:{port}\r\n\
             Content-Length: 5\r\nProxy-Connection: keep-alive\r\nConnection: close\r\n\r\nhello"
        ),
    );
    assert_eq!(post.status, 200, "{post:?}");
    assert!(post.body.ends_with("body=5"), "{post:?}");

    let recs = records(&mut p, 2);
    let get_rec = recs.iter().find(|r| r.method == "GET").unwrap();
    assert_eq!(get_rec.host, "api.example.com");
    assert_eq!(get_rec.port, port);
    assert_eq!(get_rec.path.as_deref(), Some("/v1/models"), "no query");
    assert_eq!(get_rec.resolved, Some(up.addr));
    assert_eq!(get_rec.rule.as_deref(), Some("api.example.com"));
    assert_eq!(get_rec.decision, Decision::Allow);
    assert_eq!(get_rec.reason, None);
    assert_eq!(get_rec.status, 200);
    assert_eq!(get_rec.bytes_up, 0);
    assert_eq!(get_rec.bytes_down, r.body.len() as u64);
    assert!(get_rec.duration_us > 0);
    assert_eq!(get_rec.duration_ms, get_rec.duration_us / 1000);
    let post_rec = recs.iter().find(|r| r.method == "POST").unwrap();
    assert_eq!(post_rec.bytes_up, 5);
    assert_eq!(post_rec.bytes_down, post.body.len() as u64);
    let c = p.counters();
    assert_eq!((c.total, c.allowed, c.denied), (2, 2, 0));
    // The event form.
    let v = serde_json::to_value(get_rec).unwrap();
    assert_eq!(v["decision"], "allow");
    assert_eq!(v["resolved"], up.addr.to_string());
}

#[test]
fn denied_host_gets_403_json_and_a_record() {
    let up = upstream("up");
    let port = up.addr.port();
    let mut p = proxy(Setup {
        allow: &["api.example.com"],
        resolve: vec![format!("other.test:{port}:127.0.0.1")],
        ..Setup::default()
    });
    let r = get(
        &p,
        &format!("http://other.test:{port}/x?y=1"),
        &format!("other.test:{port}"),
    );
    assert_eq!(r.status, 403);
    assert!(r
        .head
        .to_ascii_lowercase()
        .contains("content-type: application/json"));
    let v = json(&r.body);
    assert_eq!(v["error"], "domain_not_allowed");
    assert_eq!(v["host"], "other.test");
    let rec = &records(&mut p, 1)[0];
    assert_eq!(rec.decision, Decision::Deny);
    assert_eq!(rec.reason, Some(Reason::DomainNotAllowed));
    assert_eq!(rec.status, 403);
    assert_eq!(rec.path.as_deref(), Some("/x"));
    assert_eq!(rec.resolved, None, "never resolved");
    assert_eq!(up.connections.load(Ordering::SeqCst), 0, "never dialled");
    let c = p.counters();
    assert_eq!((c.total, c.allowed, c.denied), (1, 0, 1));
}

#[test]
fn wildcard_is_subdomains_only_and_deny_wins() {
    let up = upstream("up");
    let port = up.addr.port();
    let mut p = proxy(Setup {
        allow: &["*.example.com"],
        deny: &["secret.example.com"],
        resolve: ["api.example.com", "example.com", "secret.example.com"]
            .iter()
            .map(|h| format!("{h}:{port}:127.0.0.1"))
            .collect(),
        ..Setup::default()
    });
    let at = |h: &str| get(&p, &format!("http://{h}:{port}/"), &format!("{h}:{port}"));
    assert_eq!(at("api.example.com").status, 200);
    let apex = at("example.com");
    assert_eq!(apex.status, 403);
    assert_eq!(json(&apex.body)["error"], "domain_not_allowed");
    let secret = at("secret.example.com");
    assert_eq!(secret.status, 403);
    assert_eq!(json(&secret.body)["error"], "domain_denied");
    let recs = records(&mut p, 3);
    let denied = recs
        .iter()
        .find(|r| r.host == "secret.example.com")
        .unwrap();
    assert_eq!(denied.rule.as_deref(), Some("secret.example.com"));
    let ok = recs.iter().find(|r| r.host == "api.example.com").unwrap();
    assert_eq!(ok.rule.as_deref(), Some("*.example.com"));
}

#[test]
fn ip_literals_need_an_exact_rule() {
    let up = upstream("up");
    let port = up.addr.port();
    let host = format!("127.0.0.1:{port}");
    let url = format!("http://{host}/");
    let p = proxy(Setup {
        allow: &["*.example.com"],
        ..Setup::default()
    });
    let r = get(&p, &url, &host);
    assert_eq!(r.status, 403);
    assert_eq!(json(&r.body)["error"], "ip_literal_not_allowed");
    // An exact rule names the (loopback) address: allowed.
    let named = proxy(Setup {
        allow: &["127.0.0.1"],
        ..Setup::default()
    });
    assert_eq!(get(&named, &url, &host).status, 200);
    assert_eq!(
        get(&named, "http://127.0.0.2:9/", "127.0.0.2:9").status,
        403
    );
}

#[test]
fn non_public_addresses_need_a_rule() {
    // `localhost` resolves (via /etc/hosts) to loopback only: refused,
    // because nothing names that address.
    let up = upstream("up");
    let port = up.addr.port();
    let mut p = proxy(Setup {
        allow: &["localhost"],
        ..Setup::default()
    });
    let r = get(
        &p,
        &format!("http://localhost:{port}/"),
        &format!("localhost:{port}"),
    );
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(json(&r.body)["error"], "non_public_address");
    assert_eq!(records(&mut p, 1)[0].reason, Some(Reason::NonPublicAddress));
    assert_eq!(up.connections.load(Ordering::SeqCst), 0);
    // The same name pointed at loopback by --resolve is named: allowed.
    let named = proxy(Setup {
        allow: &["localhost"],
        resolve: vec![format!("localhost:{port}:127.0.0.1")],
        ..Setup::default()
    });
    let r = get(
        &named,
        &format!("http://localhost:{port}/"),
        &format!("localhost:{port}"),
    );
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn host_header_spoof_is_denied() {
    let up = upstream("up");
    let port = up.addr.port();
    let mut p = proxy(Setup {
        allow: &["api.example.com", "evil.test"],
        resolve: vec![format!("api.example.com:{port}:127.0.0.1")],
        ..Setup::default()
    });
    let url = format!("http://api.example.com:{port}/");
    for host in [
        "evil.test".to_string(),
        format!("evil.test:{port}"),
        "api.example.com:1".into(),
    ] {
        let r = get(&p, &url, &host);
        assert_eq!(r.status, 403, "{host}: {r:?}");
        assert_eq!(json(&r.body)["error"], "host_header_mismatch");
    }
    // Missing Host in HTTP/1.1 and two Host headers: malformed.
    let none = raw(
        &p,
        &format!("GET {url} HTTP/1.1\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(none.status, 400);
    let two = raw(
        &p,
        &format!(
            "GET {url} HTTP/1.1\r\nHost: api.example.com:{port}\r\nHost: evil.test\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(two.status, 400);
    let recs = records(&mut p, 5);
    assert_eq!(
        recs.iter()
            .filter(|r| r.reason == Some(Reason::HostHeaderMismatch))
            .count(),
        3
    );
    assert_eq!(up.connections.load(Ordering::SeqCst), 0);
}

#[test]
fn malformed_proxy_requests_are_refused() {
    let p = proxy(Setup {
        allow: &["api.example.com"],
        ..Setup::default()
    });
    let origin = raw(
        &p,
        "GET /x HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(origin.status, 400);
    assert_eq!(json(&origin.body)["error"], "bad_request");
    let https = get(&p, "https://api.example.com/", "api.example.com");
    assert_eq!(https.status, 400);
    assert_eq!(json(&https.body)["error"], "unsupported_scheme");
}

/// Send a CONNECT and return the stream and the proxy's response.
fn connect_to(p: &ProxyHandle, target: &str) -> (TcpStream, Reply) {
    let mut s = connect(p);
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .unwrap();
    let reply = read_reply(&mut s);
    (s, reply)
}

fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
fn connect_to_disallowed_host_or_port_is_denied() {
    let mut p = proxy(Setup {
        allow: &["api.example.com"],
        ..Setup::default()
    });
    let (_, r) = connect_to(&p, "evil.test:443");
    assert_eq!(r.status, 403);
    assert_eq!(json(&r.body)["error"], "domain_not_allowed");
    let (_, r) = connect_to(&p, "api.example.com:22");
    assert_eq!(r.status, 403);
    assert_eq!(json(&r.body)["error"], "port_not_allowed");
    let (_, r) = connect_to(&p, "127.0.0.1:443");
    assert_eq!(json(&r.body)["error"], "ip_literal_not_allowed");
    let recs = records(&mut p, 3);
    assert!(recs
        .iter()
        .all(|r| r.method == "CONNECT" && r.path.is_none()));
    assert!(recs
        .iter()
        .all(|r| r.decision == Decision::Deny && r.status == 403));
}

#[test]
fn connect_with_another_sni_is_refused() {
    // api.example.com:443 maps to 127.0.0.1:443, which is never dialled:
    // the ClientHello is checked before the upstream is contacted.
    let mut p = proxy(Setup {
        allow: &["api.example.com", "evil.test"],
        resolve: vec!["api.example.com:443:127.0.0.1".into()],
        ..Setup::default()
    });
    let (mut s, r) = connect_to(&p, "api.example.com:443");
    assert_eq!(r.status, 200, "{r:?}");
    s.write_all(&build_client_hello(Some("evil.test"))).unwrap();
    assert_eq!(
        read_to_end(&mut s),
        [21, 3, 3, 0, 2, 2, 49],
        "TLS access_denied alert"
    );
    let (mut s, _) = connect_to(&p, "api.example.com:443");
    s.write_all(&build_client_hello(None)).unwrap();
    assert_eq!(read_to_end(&mut s), [21, 3, 3, 0, 2, 2, 49]);
    let recs = records(&mut p, 2);
    let mismatch = recs.iter().find(|r| r.sni.is_some()).unwrap();
    assert_eq!(mismatch.decision, Decision::Deny);
    assert_eq!(mismatch.reason, Some(Reason::SniMismatch));
    assert_eq!(mismatch.sni.as_deref(), Some("evil.test"));
    assert_eq!(mismatch.status, 200);
    assert_eq!(mismatch.bytes_down, 0);
    let missing = recs.iter().find(|r| r.sni.is_none()).unwrap();
    assert_eq!(missing.reason, Some(Reason::SniMissing));
    let c = p.counters();
    assert_eq!((c.allowed, c.denied), (0, 2));
}

#[test]
fn non_tls_bytes_in_a_443_tunnel_are_refused() {
    let mut p = proxy(Setup {
        allow: &["api.example.com"],
        resolve: vec!["api.example.com:443:127.0.0.1".into()],
        ..Setup::default()
    });
    let (mut s, r) = connect_to(&p, "api.example.com:443");
    assert_eq!(r.status, 200);
    s.write_all(b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
        .unwrap();
    assert!(read_to_end(&mut s).is_empty());
    let rec = &records(&mut p, 1)[0];
    assert_eq!(rec.reason, Some(Reason::NotTls));
    assert_eq!(rec.decision, Decision::Deny);
}

#[test]
fn connect_with_matching_sni_is_spliced() {
    let echo = echo_server();
    let port = echo.port();
    let mut p = proxy(Setup {
        allow: &["api.example.com"],
        resolve: vec![format!("api.example.com:{port}:127.0.0.1")],
        connect_ports: vec![port],
        ..Setup::default()
    });
    let (mut s, r) = connect_to(&p, &format!("api.example.com:{port}"));
    assert_eq!(r.status, 200);
    let hello = build_client_hello(Some("API.example.com"));
    s.write_all(&hello).unwrap();
    let mut back = vec![0u8; hello.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, hello, "the hello reached the upstream unchanged");
    let payload = vec![7u8; 100_000];
    let mut reader = s.try_clone().unwrap();
    let echoed = std::thread::spawn(move || {
        let mut got = vec![0u8; 100_000];
        reader.read_exact(&mut got).unwrap();
        got
    });
    s.write_all(&payload).unwrap();
    assert_eq!(echoed.join().unwrap(), payload);
    drop(s);
    let rec = &records(&mut p, 1)[0];
    assert_eq!(rec.decision, Decision::Allow);
    assert_eq!(rec.reason, None);
    assert_eq!(rec.sni.as_deref(), Some("API.example.com"));
    assert_eq!(rec.resolved, Some(echo));
    let total = hello.len() as u64 + 100_000;
    assert_eq!((rec.bytes_up, rec.bytes_down), (total, total));
}

#[test]
fn raw_tunnel_ports_skip_the_tls_check() {
    let echo = echo_server();
    let port = echo.port();
    let p = proxy(Setup {
        allow: &["git.example.com"],
        resolve: vec![format!("git.example.com:{port}:127.0.0.1")],
        connect_ports: vec![port],
        raw_tunnel_ports: vec![port],
        ..Setup::default()
    });
    let (mut s, r) = connect_to(&p, &format!("git.example.com:{port}"));
    assert_eq!(r.status, 200);
    s.write_all(b"SSH-2.0-test\r\n").unwrap();
    let mut back = [0u8; 14];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"SSH-2.0-test\r\n");
}

#[test]
fn request_cap_answers_429_after_n() {
    let up = upstream("up");
    let port = up.addr.port();
    let mut p = proxy(Setup {
        allow: &["api.example.com"],
        resolve: vec![
            format!("api.example.com:{port}:127.0.0.1"),
            "api.example.com:443:127.0.0.1".into(),
        ],
        max_requests: Some(2),
        ..Setup::default()
    });
    let url = format!("http://api.example.com:{port}/");
    let host = format!("api.example.com:{port}");
    // Denied requests do not use up the cap.
    assert_eq!(get(&p, "http://evil.test/", "evil.test").status, 403);
    // Keep-alive: the cap holds on a reused upstream connection too.
    let mut s = connect(&p);
    for _ in 0..2 {
        s.write_all(format!("GET {url} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .unwrap();
        assert_eq!(read_reply(&mut s).status, 200);
    }
    s.write_all(format!("GET {url} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .unwrap();
    let third = read_reply(&mut s);
    assert_eq!(third.status, 429);
    assert_eq!(json(&third.body)["error"], "max_requests");
    let (_, tunnel) = connect_to(&p, "api.example.com:443");
    assert_eq!(tunnel.status, 429);
    let recs = records(&mut p, 5);
    assert_eq!(
        recs.iter()
            .filter(|r| r.reason == Some(Reason::MaxRequests))
            .count(),
        2
    );
    let c = p.counters();
    assert_eq!((c.total, c.allowed, c.denied), (5, 2, 3));
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        1,
        "one upstream connection reused"
    );
}

#[test]
fn curl_through_the_proxy() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: curl is not installed");
        return;
    }
    let up = upstream("curl-up");
    let port = up.addr.port();
    let mut p = proxy(Setup {
        allow: &["api.example.com"],
        resolve: vec![format!("api.example.com:{port}:127.0.0.1")],
        ..Setup::default()
    });
    let proxy_url = format!("http://{}", p.addr());
    let curl = |args: &[&str]| {
        std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--noproxy", "", "-x", &proxy_url])
            .args(args)
            .output()
            .unwrap()
    };
    let ok = curl(&[&format!("http://api.example.com:{port}/hello?x=1")]);
    assert!(ok.status.success(), "{ok:?}");
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout),
        format!("curl-up GET /hello?x=1 host=api.example.com:{port} body=0")
    );
    let denied = curl(&["-w", "\n%{http_code}", "http://evil.test/"]);
    let out = String::from_utf8_lossy(&denied.stdout);
    assert!(out.ends_with("\n403"), "{out}");
    assert!(out.contains("domain_not_allowed"), "{out}");
    // https through CONNECT to a host that is not allowed: the tunnel fails.
    let tunnel = curl(&["https://evil.test/"]);
    assert!(!tunnel.status.success(), "{tunnel:?}");
    let recs = records(&mut p, 3);
    assert!(recs
        .iter()
        .any(|r| r.method == "CONNECT" && r.reason == Some(Reason::DomainNotAllowed)));
}

#[test]
fn two_hundred_concurrent_connections() {
    raise_fd_limit();
    let up = upstream("many");
    let port = up.addr.port();
    let mut p = proxy(Setup {
        allow: &["api.example.com"],
        resolve: vec![format!("api.example.com:{port}:127.0.0.1")],
        ..Setup::default()
    });
    const N: usize = 200;
    let barrier = Arc::new(Barrier::new(N));
    let addr = p.addr();
    let threads: Vec<_> = (0..N)
        .map(|i| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(TIMEOUT)).unwrap();
                // All connections are open at once before any request.
                barrier.wait();
                s.write_all(
                    format!(
                        "GET http://api.example.com:{port}/{i} HTTP/1.1\r\nHost: api.example.com:{port}\r\nConnection: close\r\n\r\n"
                    )
                    .as_bytes(),
                )
                .unwrap();
                let r = read_reply(&mut s);
                assert_eq!(r.status, 200, "{r:?}");
                assert!(r.body.starts_with(&format!("many GET /{i} ")), "{r:?}");
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let recs = records(&mut p, N);
    assert!(recs
        .iter()
        .all(|r| r.decision == Decision::Allow && r.status == 200));
    assert_eq!(p.counters().allowed, N as u64);
}

#[test]
fn shutdown_stops_listening_and_keeps_records() {
    let up = upstream("up");
    let port = up.addr.port();
    let mut p = proxy(Setup {
        allow: &["api.example.com"],
        resolve: vec![format!("api.example.com:{port}:127.0.0.1")],
        ..Setup::default()
    });
    let addr = p.addr();
    assert!(p.is_running());
    assert_eq!(
        get(
            &p,
            &format!("http://api.example.com:{port}/"),
            &format!("api.example.com:{port}")
        )
        .status,
        200
    );
    // Let the record land, then stop.
    std::thread::sleep(Duration::from_millis(50));
    p.shutdown().unwrap();
    p.shutdown().unwrap();
    assert!(!p.is_running());
    assert!(TcpStream::connect(addr).is_err(), "no longer listening");
    let recs = p.drain_records();
    assert_eq!(recs.len(), 1);
    // The notification pipe reads end-of-file once the proxy is gone.
    let mut buf = [0u8; 8];
    let fd = p.notify_fd().try_clone_to_owned().unwrap();
    let mut file = std::fs::File::from(fd);
    assert_eq!(file.read(&mut buf).unwrap(), 0);
    let _ = p.notify_fd().as_fd();
}

fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let _ = setrlimit(Resource::RLIMIT_NOFILE, hard.min(65536), hard);
}
