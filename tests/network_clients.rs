//! Real clients inside the sandbox: python `requests`, the `openai` SDK,
//! Node's fetch, the libc resolver, openssl's CONNECT, and two runs at once.
//! Root (tier 2). Every target is on this machine: upstreams listen on
//! 127.0.0.1 and the proxy reaches them through `--resolve`; from inside the
//! agent, only its own 127.0.0.1 (where the proxy listens) is ever dialled.
//! A missing client (python module, node, openssl) skips with a reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::clients::*;
use common::*;

/// One request as a local upstream saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

type Handler = dyn Fn(&Seen) -> (u16, &'static str, String) + Send + Sync;

/// A small HTTP/1.1 server on 127.0.0.1 (a thread per connection, one
/// request per connection) that records what it was sent.
struct Upstream {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
}

impl Upstream {
    fn start(handler: Arc<Handler>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (s, c) = (Arc::clone(&seen), Arc::clone(&connections));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let (seen, handler) = (Arc::clone(&s), Arc::clone(&handler));
                std::thread::spawn(move || serve_one(conn, &seen, &*handler));
            }
        });
        Self {
            port,
            seen,
            connections,
        }
    }

    /// Answers every request with 200 and `body`.
    fn text(body: &'static str) -> Self {
        Self::start(Arc::new(move |_: &Seen| {
            (200, "text/plain", body.to_owned())
        }))
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve_one(mut conn: TcpStream, seen: &Mutex<Vec<Seen>>, handler: &Handler) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return;
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_owned();
    let path = first.next().unwrap_or_default().to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let want: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        .min(1 << 20);
    let mut body = buf[head_end..].to_vec();
    while body.len() < want {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let req = Seen {
        method,
        path,
        headers,
        body,
    };
    let (status, ctype, answer) = handler(&req);
    seen.lock().unwrap().push(req);
    let resp = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
    let _ = conn.write_all(resp.as_bytes());
}

const REQUESTS_SCRIPT: &str = r#"
import json, sys, requests
port = sys.argv[1]
r = requests.get(f"http://api.example.test:{port}/v1/models?key=secret", timeout=20)
print("allowed", r.status_code, r.text)
r = requests.get(f"http://evil.example.org:{port}/steal", timeout=20)
print("denied", r.status_code, r.headers.get("content-type"), json.dumps(r.json(), sort_keys=True))
"#;

#[test]
fn python_requests_through_the_proxy() {
    let test = "python_requests_through_the_proxy";
    if !network_available(test) {
        return;
    }
    let python = match python_with(&["requests"]) {
        Ok(p) => p,
        Err(why) => return skip(test, &why),
    };
    let up = Upstream::text("hello from upstream");
    let h = Home::new();
    let port = up.port.to_string();
    let resolve = format!("api.example.test:{port}:127.0.0.1");
    let o = h.run(&[
        "run",
        "-q",
        "--allow-domain",
        "api.example.test",
        "--resolve",
        &resolve,
        "--",
        python.to_str().unwrap(),
        "-c",
        REQUESTS_SCRIPT,
        &port,
    ]);
    assert_eq!(code(&o), 0, "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert_eq!(
        line(&out, "allowed "),
        "allowed 200 hello from upstream",
        "{out}"
    );
    assert_eq!(
        line(&out, "denied "),
        r#"denied 403 application/json {"error": "domain_not_allowed", "host": "evil.example.org"}"#,
        "{out}"
    );
    // Only the allowed request reached the upstream, with its query.
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path, "/v1/models?key=secret");

    // Records are written when an exchange ends: find them by host.
    let mut reqs = net_requests(&h);
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    reqs.sort_by_key(|r| r["host"] != "api.example.test");
    assert_eq!(reqs[0]["decision"], "allow");
    assert_eq!(reqs[0]["method"], "GET");
    assert_eq!(reqs[0]["host"], "api.example.test");
    assert_eq!(reqs[0]["path"], "/v1/models", "no query in the record");
    assert_eq!(reqs[0]["status"], 200);
    assert_eq!(reqs[0]["resolved"], format!("127.0.0.1:{port}"));
    assert_eq!(reqs[1]["decision"], "deny");
    assert_eq!(reqs[1]["host"], "evil.example.org");
    assert_eq!(reqs[1]["reason"], "domain_not_allowed");
    assert_eq!(reqs[1]["status"], 403);
    let s = h.session_json();
    assert_eq!(s["allowed_requests"], 1);
    assert_eq!(s["denied_requests"], 1);
    assert_eq!(s["total_requests"], 2);
}

const OPENAI_SCRIPT: &str = r#"
import sys
from openai import OpenAI
client = OpenAI(api_key="sk-vallignus-test", base_url=sys.argv[1], max_retries=0, timeout=20)
resp = client.chat.completions.create(
    model="gpt-test",
    messages=[{"role": "user", "content": "ping"}],
)
print("reply", resp.choices[0].message.content)
print("model", resp.model)
"#;

const FAKE_COMPLETION: &str = r#"{"id":"chatcmpl-vallignus","object":"chat.completion","created":1700000000,"model":"gpt-test","choices":[{"index":0,"message":{"role":"assistant","content":"pong from the fake server"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":5,"total_tokens":6}}"#;

#[test]
fn openai_sdk_against_a_local_fake_server() {
    let test = "openai_sdk_against_a_local_fake_server";
    if !network_available(test) {
        return;
    }
    let python = match python_with(&["openai"]) {
        Ok(p) => p,
        Err(why) => return skip(test, &why),
    };
    let up = Upstream::start(Arc::new(|req: &Seen| {
        if req.method == "POST" && req.path == "/v1/chat/completions" {
            (200, "application/json", FAKE_COMPLETION.to_owned())
        } else {
            (
                404,
                "application/json",
                r#"{"error":{"message":"not found"}}"#.to_owned(),
            )
        }
    }));
    let h = Home::new();
    let resolve = format!("api.openai.test:{}:127.0.0.1", up.port);
    let base_url = format!("http://api.openai.test:{}/v1", up.port);
    let o = h.run(&[
        "run",
        "-q",
        "--allow-domain",
        "api.openai.test",
        "--resolve",
        &resolve,
        "--",
        python.to_str().unwrap(),
        "-c",
        OPENAI_SCRIPT,
        &base_url,
    ]);
    assert_eq!(code(&o), 0, "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert_eq!(line(&out, "reply "), "reply pong from the fake server");
    assert_eq!(line(&out, "model "), "model gpt-test");

    // The SDK's request arrived intact through the proxy.
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(
        seen[0].headers.get("authorization").map(String::as_str),
        Some("Bearer sk-vallignus-test")
    );
    let body: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(body["model"], "gpt-test");
    assert_eq!(body["messages"][0]["content"], "ping");

    let reqs = net_requests(&h);
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0]["method"], "POST");
    assert_eq!(reqs[0]["host"], "api.openai.test");
    assert_eq!(reqs[0]["port"], up.port);
    assert_eq!(reqs[0]["path"], "/v1/chat/completions");
    assert_eq!(reqs[0]["decision"], "allow");
    assert_eq!(reqs[0]["rule"], "api.openai.test");
    assert_eq!(reqs[0]["status"], 200);
    assert!(reqs[0]["bytes_up"].as_u64().unwrap() >= seen[0].body.len() as u64);
    assert_eq!(
        reqs[0]["bytes_down"].as_u64().unwrap(),
        FAKE_COMPLETION.len() as u64
    );
    let s = h.session_json();
    assert_eq!(s["allowed_requests"], 1);
    assert_eq!(s["total_requests"], 1);
}

const NODE_SCRIPT: &str = r#"
const port = process.argv[1];
(async () => {
  for (const [name, url] of [["loopback", `http://127.0.0.1:${port}/`],
                             ["named", `http://api.example.test:${port}/`]]) {
    const t = Date.now();
    try {
      const r = await fetch(url, { signal: AbortSignal.timeout(15000) });
      console.log(name, "ESCAPED", r.status, Date.now() - t);
    } catch (e) {
      const why = (e.cause && (e.cause.code || e.cause.name)) || e.name;
      console.log(name, "failed", why, Date.now() - t);
    }
  }
})();
"#;

#[test]
fn node_fetch_ignores_the_proxy_and_fails_fast() {
    let test = "node_fetch_ignores_the_proxy_and_fails_fast";
    if !network_available(test) {
        return;
    }
    let Some(node) = which("node") else {
        return skip(test, "node is not installed");
    };
    if which("unshare").is_none() {
        return skip(test, "unshare (util-linux) is missing");
    }
    let up = Upstream::text("escaped");
    let h = Home::new();
    let port = up.port.to_string();
    // The name is allowed and resolvable by the proxy: only a client that
    // bypasses the proxy could fail to reach it. Node looks the name up
    // itself, so it runs under PRIVATE_RESOLVER (as `nobody`: see there).
    let resolve = format!("api.example.test:{port}:127.0.0.1");
    let t = Instant::now();
    let o = h.run(&[
        "run",
        "-q",
        "--user",
        "nobody",
        "--allow-domain",
        "api.example.test",
        "--resolve",
        &resolve,
        "--",
        "sh",
        "-c",
        PRIVATE_RESOLVER,
        "sh",
        "env",
        "-u",
        "NODE_USE_ENV_PROXY",
        node.to_str().unwrap(),
        "-e",
        NODE_SCRIPT,
        &port,
    ]);
    let took = t.elapsed();
    assert_eq!(code(&o), 0, "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    if out.trim() == "no-userns" {
        return skip(test, "the agent cannot make a user namespace here");
    }
    assert_eq!(line(&out, "resolvers "), "resolvers 2", "{out}");
    for name in ["loopback", "named"] {
        let l = line(&out, &format!("{name} "));
        let fields: Vec<&str> = l.split(' ').collect();
        assert_eq!(fields[1], "failed", "{l}");
        let ms: u64 = fields[3].parse().unwrap();
        assert!(ms < 5000, "{name} took {ms} ms to fail: {l}");
    }
    // In the namespace 127.0.0.1 is its own loopback (refused) and there is
    // no resolver for the name.
    assert!(line(&out, "loopback ").contains("ECONNREFUSED"), "{out}");
    let named = line(&out, "named ");
    assert!(
        named.contains("EAI_AGAIN") || named.contains("ENOTFOUND"),
        "{out}"
    );
    assert!(took < Duration::from_secs(15), "the run took {took:?}");
    assert_eq!(up.connections.load(Ordering::SeqCst), 0, "node escaped");
    assert!(net_requests(&h).is_empty(), "node never used the proxy");
    assert_eq!(h.session_json()["total_requests"], 0);
}

/// Connected UDP DNS queries (as the libc resolver sends them) to the
/// proxy's host address and to the namespace's loopback, port 53.
const UDP_DNS_SCRIPT: &str = r#"
import os, socket, struct, time, urllib.parse
proxy_host = urllib.parse.urlsplit(os.environ["HTTP_PROXY"]).hostname
query = struct.pack(">HHHHHH", 0x5a5a, 0x0100, 1, 0, 0, 0) + b"\x07example\x03com\x00" + struct.pack(">HH", 1, 1)
for name, addr in (("proxy_host", (proxy_host, 53)), ("loopback", ("127.0.0.1", 53))):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    t = time.monotonic()
    try:
        s.connect(addr)
        s.send(query)
        data = s.recv(512)
        print(name, "ANSWER", len(data), int((time.monotonic() - t) * 1000))
    except socket.timeout:
        print(name, "timeout", "-", int((time.monotonic() - t) * 1000))
    except OSError as e:
        print(name, "error", e.__class__.__name__, int((time.monotonic() - t) * 1000))
    finally:
        s.close()
print("proxy", proxy_host)
"#;

/// Runs "$@" (as `sh -c PRIVATE_RESOLVER sh CMD...`) with a resolv.conf that
/// names only 127.0.0.1 and the proxy's host address, bind-mounted in a user
/// and mount namespace of the agent's own (its network namespace stays the
/// run's). So a libc lookup inside never tries the host's configured
/// nameserver: no address but the run's own is ever a target. Prints
/// `no-userns` when the agent cannot make a user namespace.
const PRIVATE_RESOLVER: &str = r#"
P=${HTTP_PROXY#http://}; PH=${P%:*}
if ! unshare -Urm true 2>/dev/null; then echo "no-userns"; exit 0; fi
conf=$(mktemp) || exit 3
printf 'nameserver 127.0.0.1\nnameserver %s\n' "$PH" > "$conf"
chmod 644 "$conf"
unshare -Urm sh -c '
  conf=$1; shift
  mount --bind "$conf" /etc/resolv.conf || exit 4
  echo "resolvers $(grep -c "^nameserver" /etc/resolv.conf)"
  "$@"
' sh "$conf" "$@"
rc=$?
rm -f "$conf"
exit $rc
"#;

/// `getent hosts` for a name (DNS) and for localhost (files), timed.
const GETENT_SCRIPT: &str = r#"
getent hosts localhost >/dev/null && echo "files ok"
t0=$(date +%s%N); getent hosts example.com; rc=$?; t1=$(date +%s%N)
echo "getent $rc $(( (t1 - t0) / 1000000 ))"
"#;

#[test]
fn dns_from_inside_gets_no_answer_and_fails_fast() {
    let test = "dns_from_inside_gets_no_answer_and_fails_fast";
    if !network_available(test) {
        return;
    }
    let Some(python) = system_python() else {
        return skip(test, "no python3");
    };
    let h = Home::new();
    let o = h.run(&[
        "run",
        "-q",
        "--allow-domain",
        "api.example.test",
        "--",
        python.to_str().unwrap(),
        "-c",
        UDP_DNS_SCRIPT,
    ]);
    assert_eq!(code(&o), 0, "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    let proxy_host = line(&out, "proxy ").trim_start_matches("proxy ");
    assert_eq!(proxy_host, "127.0.0.1", "{out}");
    for name in ["proxy_host", "loopback"] {
        let l = line(&out, &format!("{name} "));
        let fields: Vec<&str> = l.split(' ').collect();
        // Fails fast: an error at once, neither an answer nor a timeout.
        assert_eq!(fields[1], "error", "{l}");
        let ms: u64 = fields[3].parse().unwrap();
        assert!(ms < 1000, "{l}");
    }
    assert_eq!(h.session_json()["total_requests"], 0);

    if which("unshare").is_none() {
        return skip(test, "unshare (util-linux) is missing: getent part skipped");
    }
    // As `nobody`, so the agent may make a user namespace (mapping uid 0
    // would need CAP_SETFCAP, which the agent does not have).
    let h = Home::new();
    let o = h.run(&[
        "run",
        "-q",
        "--user",
        "nobody",
        "--allow-domain",
        "api.example.test",
        "--",
        "sh",
        "-c",
        PRIVATE_RESOLVER,
        "sh",
        "sh",
        "-c",
        GETENT_SCRIPT,
    ]);
    assert_eq!(code(&o), 0, "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    if out.trim() == "no-userns" {
        return skip(
            test,
            "unprivileged user namespaces unavailable: getent part skipped",
        );
    }
    assert_eq!(line(&out, "resolvers "), "resolvers 2", "{out}");
    assert_eq!(line(&out, "files "), "files ok", "getent itself works");
    let l = line(&out, "getent ");
    let fields: Vec<&str> = l.split(' ').collect();
    assert_eq!(fields[1], "2", "getent must find nothing (rc 2): {out}");
    let ms: u64 = fields[2].parse().unwrap();
    assert!(ms < 3000, "getent took {ms} ms: a resolver timed out");
    assert_eq!(h.session_json()["total_requests"], 0);
}

/// A listener on 127.0.0.1:443 that keeps the first bytes of every
/// connection and closes it (no TLS: a client's handshake then fails).
struct Port443 {
    hellos: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Port443 {
    fn listen() -> std::io::Result<Self> {
        let l = TcpListener::bind("127.0.0.1:443")?;
        let hellos = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (h, st) = (Arc::clone(&hellos), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            for conn in l.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 16];
                let n = conn.read(&mut buf).unwrap_or(0);
                h.lock().unwrap().push(buf[..n].to_vec());
            }
        });
        Ok(Self {
            hellos,
            stop,
            thread: Some(thread),
        })
    }

    /// Closes the listener (wakes its accept, joins the thread) and returns
    /// what it got.
    fn stop(mut self) -> Vec<Vec<u8>> {
        self.close();
        self.hellos.lock().unwrap().clone()
    }

    fn close(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect_timeout(
                &"127.0.0.1:443".parse().unwrap(),
                Duration::from_secs(2),
            );
            let _ = t.join();
        }
    }
}

impl Drop for Port443 {
    fn drop(&mut self) {
        self.close();
    }
}

/// A raw CONNECT to a host that is not allowed; prints the status line and
/// the body.
const RAW_CONNECT_SCRIPT: &str = r#"
import os, socket, urllib.parse
u = urllib.parse.urlsplit(os.environ["HTTPS_PROXY"])
s = socket.create_connection((u.hostname, u.port), timeout=10)
s.sendall(b"CONNECT evil.test:443 HTTP/1.1\r\nHost: evil.test:443\r\n\r\n")
data = b""
while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
    if len(data) > 65536:
        break
head, _, body = data.partition(b"\r\n\r\n")
print("raw", head.split(b"\r\n")[0].decode(), body.decode())
"#;

const OPENSSL_SCRIPT: &str = r#"
P=${HTTPS_PROXY#http://}
try() {
  echo | timeout 15 openssl s_client -proxy "$P" -connect "$2:443" -servername "$3" > "$TMPF" 2>&1
  rc=$?
  if grep -q "alert access denied" "$TMPF"; then a=alert; else a=noalert; fi
  if grep -q "CONNECT failed" "$TMPF"; then c=refused; else c=accepted; fi
  echo "$1 $rc $a $c"
}
TMPF=$(mktemp) || exit 3
try mismatch api.example.test other.test
try match api.example.test api.example.test
try evil evil.test evil.test
rm -f "$TMPF"
"#;

#[test]
fn connect_checks_sni_and_allowlist() {
    let test = "connect_checks_sni_and_allowlist";
    if !network_available(test) {
        return;
    }
    if which("openssl").is_none() {
        return skip(test, "openssl is not installed");
    }
    let Some(python) = system_python() else {
        return skip(test, "no python3");
    };
    // CONNECT dials port 443 of the vetted address: if 127.0.0.1:443 is free,
    // listen there to see what the proxy forwards (only the matching SNI may
    // get through). Otherwise check the records alone. Test processes take
    // turns (a lock), so one never sees another's tunnels.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("vallignus-test-port443.lock"))
        .unwrap();
    let _turn = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap();
    let port443 = match Port443::listen() {
        Ok(l) => Some(l),
        Err(e) => {
            skip(
                test,
                &format!("127.0.0.1:443 busy ({e}): not checking what reaches the upstream"),
            );
            None
        }
    };
    let h = Home::new();
    let script = format!(
        "{OPENSSL_SCRIPT}\n{} -c '{}'",
        python.display(),
        RAW_CONNECT_SCRIPT.replace('\'', "'\\''")
    );
    let o = h.run(&[
        "run",
        "-q",
        "--allow-domain",
        "api.example.test",
        "--resolve",
        "api.example.test:443:127.0.0.1",
        // Spliced, not intercepted: what reaches the upstream is checked.
        "--tls-passthrough",
        "api.example.test",
        "--",
        "bash",
        "-c",
        &script,
    ]);
    assert_eq!(code(&o), 0, "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    // A different SNI: the tunnel is refused with a TLS access_denied alert.
    assert_eq!(
        line(&out, "mismatch "),
        "mismatch 1 alert accepted",
        "{out}"
    );
    // The matching SNI passes the check (and then finds no TLS server).
    assert!(line(&out, "match ").ends_with("noalert accepted"), "{out}");
    // A host that is not allowed: the CONNECT itself gets 403.
    assert_eq!(line(&out, "evil "), "evil 1 noalert refused", "{out}");
    assert_eq!(
        line(&out, "raw "),
        r#"raw HTTP/1.1 403 Forbidden {"error":"domain_not_allowed","host":"evil.test"}"#,
        "{out}"
    );

    let reqs = net_requests(&h);
    assert_eq!(reqs.len(), 4, "{reqs:#?}");
    let by_sni = |sni: &str| -> serde_json::Value {
        let found: Vec<_> = reqs.iter().filter(|r| r["sni"] == sni).collect();
        assert_eq!(found.len(), 1, "{sni}: {reqs:#?}");
        found[0].clone()
    };
    let mismatch = by_sni("other.test");
    assert_eq!(mismatch["method"], "CONNECT");
    assert_eq!(mismatch["host"], "api.example.test");
    assert_eq!(mismatch["port"], 443);
    assert_eq!(mismatch["decision"], "deny");
    assert_eq!(mismatch["reason"], "sni_mismatch");
    assert_eq!(mismatch["bytes_down"], 0);
    let matched = by_sni("api.example.test");
    assert_ne!(matched["reason"], "sni_mismatch");
    let evil: Vec<_> = reqs.iter().filter(|r| r["host"] == "evil.test").collect();
    assert_eq!(evil.len(), 2, "{reqs:#?}");
    for r in evil {
        assert_eq!(r["method"], "CONNECT");
        assert_eq!(r["decision"], "deny");
        assert_eq!(r["reason"], "domain_not_allowed");
        assert_eq!(r["status"], 403);
        assert!(r["resolved"].is_null(), "a denied host is not resolved");
    }
    if let Some(port443) = port443 {
        // Exactly one tunnel reached the upstream: the matching SNI's, and
        // what it got first was the client's TLS handshake record.
        let hellos = port443.stop();
        assert_eq!(hellos.len(), 1, "{hellos:?}");
        assert_eq!(hellos[0].first(), Some(&0x16), "{hellos:?}");
        assert_eq!(matched["decision"], "allow");
        assert!(matched["reason"].is_null(), "{matched}");
        assert_eq!(matched["tls"], "passthrough", "{matched}");
        let s = h.session_json();
        assert_eq!(s["allowed_requests"], 1);
        assert_eq!(s["denied_requests"], 3);
        assert_eq!(s["total_requests"], 4);
    }
}

/// Waits (bounded) until the other run's agent is up, then makes `own`
/// requests to its own host and one to the other run's host, then stays
/// until the other run is done with its requests too (so both proxies are up
/// and counting at the same time).
fn concurrent_script(me: &str, other: &str, own: usize, port_me: u16, port_other: u16) -> String {
    format!(
        "touch \"$SYNC/{me}\"; i=0; \
         while [ ! -e \"$SYNC/{other}\" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; \
         [ -e \"$SYNC/{other}\" ] && echo together; \
         echo \"netns $(readlink /proc/self/ns/net)\"; \
         for n in $(seq {own}); do curl -s -m 10 http://{me}.test:{port_me}/; echo; done; \
         curl -s -m 10 -o /dev/null -w 'other %{{http_code}}\\n' http://{other}.test:{port_other}/; \
         touch \"$SYNC/{me}.done\"; \
         i=0; while [ ! -e \"$SYNC/{other}.done\" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; \
         [ -e \"$SYNC/{other}.done\" ] && echo overlapped"
    )
}

#[test]
fn concurrent_runs_have_their_own_network_and_counters() {
    let test = "concurrent_runs_have_their_own_network_and_counters";
    if !network_available(test) {
        return;
    }
    if which("curl").is_none() {
        return skip(test, "curl is not installed");
    }
    let sync = tempfile::tempdir().unwrap();
    let ua = Arc::new(Upstream::text("from-alpha"));
    let ub = Arc::new(Upstream::text("from-beta"));
    let (pa, pb) = (ua.port, ub.port);
    // (name, other, requests to its own host, own port, other port)
    let plan = [("alpha", "beta", 3, pa, pb), ("beta", "alpha", 2, pb, pa)];
    let runs: Vec<_> = plan
        .iter()
        .map(|&(me, other, own, port_me, port_other)| {
            let sync = sync.path().to_owned();
            std::thread::spawn(move || {
                let h = Home::new();
                let resolve_me = format!("{me}.test:{port_me}:127.0.0.1");
                // The other run's host resolves too: only the allowlist stops it.
                let resolve_other = format!("{other}.test:{port_other}:127.0.0.1");
                let allow = format!("{me}.test");
                let script = concurrent_script(me, other, own, port_me, port_other);
                let o = output_with_timeout(
                    h.cmd().env("SYNC", &sync).args([
                        "run",
                        "-q",
                        "--allow-domain",
                        &allow,
                        "--resolve",
                        &resolve_me,
                        "--resolve",
                        &resolve_other,
                        "--",
                        "sh",
                        "-c",
                        &script,
                    ]),
                    Duration::from_secs(60),
                );
                (h, o)
            })
        })
        .collect();
    let results: Vec<(Home, std::process::Output)> =
        runs.into_iter().map(|t| t.join().unwrap()).collect();

    let mut namespaces = Vec::new();
    for ((h, o), &(me, other, own, port_me, _)) in results.iter().zip(plan.iter()) {
        assert_eq!(code(o), 0, "{me}: {}\n{}", stdout(o), stderr(o));
        let out = stdout(o);
        assert!(out.starts_with("together\n"), "{me} ran alone: {out}");
        assert_eq!(
            out.matches(&format!("from-{me}")).count(),
            own,
            "{me}: {out}"
        );
        assert!(!out.contains(&format!("from-{other}")), "{me}: {out}");
        assert_eq!(line(&out, "other "), "other 403", "{me}: {out}");
        assert!(out.ends_with("overlapped\n"), "{me}: {out}");

        let s = h.session_json();
        assert_eq!(s["allowed_requests"], own, "{me}");
        assert_eq!(s["denied_requests"], 1, "{me}");
        assert_eq!(s["total_requests"], own + 1, "{me}");
        namespaces.push(line(&out, "netns ").to_owned());
        let mut reqs = net_requests(h);
        assert_eq!(reqs.len(), own + 1, "{me}: {reqs:#?}");
        reqs.sort_by_key(|r| r["host"] != format!("{me}.test"));
        for r in &reqs[..own] {
            assert_eq!(r["host"], format!("{me}.test"));
            assert_eq!(r["port"], port_me);
            assert_eq!(r["decision"], "allow");
        }
        assert_eq!(reqs[own]["host"], format!("{other}.test"));
        assert_eq!(reqs[own]["reason"], "domain_not_allowed");
    }
    assert!(namespaces[0].starts_with("netns net:["), "{namespaces:?}");
    assert_ne!(
        namespaces[0], namespaces[1],
        "each run has its own network namespace"
    );
    // Each upstream was reached by its own run only, as often as it asked.
    assert_eq!(ua.seen().len(), 3);
    assert_eq!(ub.seen().len(), 2);
}
