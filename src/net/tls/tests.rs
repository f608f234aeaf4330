#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use std::io::Write as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn name(n: &str) -> Host {
    Host::Name(n.to_string())
}

/// A client that trusts only `ca_pem`.
fn client_trusting(ca_pem: &str) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Handshake `client` against `server` over loopback, for `sni`; echo one
/// message. Err is the client's handshake error.
async fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    sni: ServerName<'static>,
) -> Result<Vec<u8>, std::io::Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let srv = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        if let Ok(mut tls) = acceptor.accept(tcp).await {
            let mut buf = [0u8; 5];
            if tls.read_exact(&mut buf).await.is_ok() {
                let _ = tls.write_all(&buf).await;
                let _ = tls.shutdown().await;
            }
        }
    });
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client);
    let result = async {
        let mut tls = connector.connect(sni, tcp).await?;
        tls.write_all(b"hello").await?;
        let mut out = Vec::new();
        tls.read_to_end(&mut out).await?;
        Ok(out)
    }
    .await;
    let _ = srv.await;
    result
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_client_trusting_the_run_ca_accepts_its_leaves() {
    let ic = Interceptor::new("t1", &[]).unwrap();
    let server = ic.server_config(&name("api.example.test")).unwrap();
    let client = client_trusting(ic.ca_pem());
    let out = runtime()
        .block_on(handshake(
            server,
            client,
            server_name(&name("api.example.test")),
        ))
        .unwrap();
    assert_eq!(out, b"hello");
}

#[test]
fn ip_hosts_get_an_ip_leaf() {
    let ic = Interceptor::new("t2", &[]).unwrap();
    let host = Host::Ip("127.0.0.1".parse().unwrap());
    let server = ic.server_config(&host).unwrap();
    let out = runtime()
        .block_on(handshake(
            server,
            client_trusting(ic.ca_pem()),
            server_name(&host),
        ))
        .unwrap();
    assert_eq!(out, b"hello");
}

#[test]
fn a_leaf_is_only_good_for_its_host() {
    let ic = Interceptor::new("t3", &[]).unwrap();
    let server = ic.server_config(&name("a.example.test")).unwrap();
    let err = runtime()
        .block_on(handshake(
            server,
            client_trusting(ic.ca_pem()),
            server_name(&name("b.example.test")),
        ))
        .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[test]
fn another_runs_ca_is_not_trusted() {
    let ic = Interceptor::new("t4", &[]).unwrap();
    let other = Interceptor::new("t4-other", &[]).unwrap();
    assert_ne!(ic.ca_pem(), other.ca_pem());
    let server = ic.server_config(&name("x.example.test")).unwrap();
    let err = runtime()
        .block_on(handshake(
            server,
            client_trusting(other.ca_pem()),
            server_name(&name("x.example.test")),
        ))
        .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[test]
fn leaves_are_cached_per_host() {
    let ic = Interceptor::new("t5", &[]).unwrap();
    let a1 = ic.server_config(&name("a.example.test")).unwrap();
    let a2 = ic.server_config(&name("a.example.test")).unwrap();
    let b = ic.server_config(&name("b.example.test")).unwrap();
    assert!(Arc::ptr_eq(&a1, &a2));
    assert!(!Arc::ptr_eq(&a1, &b));
    assert_eq!(a1.alpn_protocols, vec![b"http/1.1".to_vec()]);
}

#[test]
fn upstream_ca_files_extend_the_client_roots() {
    // An "upstream" whose certificates come from a CA that only the
    // --upstream-ca file names.
    let upstream = Interceptor::new("upstream", &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, upstream.ca_pem()).unwrap();
    let ic = Interceptor::new("t6", std::slice::from_ref(&ca)).unwrap();
    let host = name("api.upstream.test");
    let out = runtime()
        .block_on(handshake(
            upstream.server_config(&host).unwrap(),
            ic.client_config().unwrap(),
            server_name(&host),
        ))
        .unwrap();
    assert_eq!(out, b"hello");

    // Without the file, the same upstream is refused.
    let plain = Interceptor::new("t6b", &[]).unwrap();
    if let Ok(client) = plain.client_config() {
        let err = runtime()
            .block_on(handshake(
                upstream.server_config(&host).unwrap(),
                client,
                server_name(&host),
            ))
            .unwrap_err();
        assert!(err.to_string().contains("certificate"), "{err}");
    }
}

#[test]
fn bad_upstream_ca_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "just text\n").unwrap();
    let garbage = dir.path().join("garbage.pem");
    let mut f = std::fs::File::create(&garbage).unwrap();
    writeln!(
        f,
        "-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----"
    )
    .unwrap();
    for (path, want) in [
        (&missing, "No such file"),
        (&empty, "no PEM certificate"),
        (&garbage, "garbage.pem"),
    ] {
        let err = Interceptor::new("t7", std::slice::from_ref(path)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(want), "{msg}");
    }
}

#[test]
fn the_agent_bundle_ends_with_the_run_ca_and_has_no_key() {
    let ic = Interceptor::new("t8", &[]).unwrap();
    let bundle = ic.agent_bundle();
    assert!(bundle.ends_with(ic.ca_pem()));
    assert!(!bundle.contains("PRIVATE KEY"));
}
