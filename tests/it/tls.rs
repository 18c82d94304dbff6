//! The public listener over TLS: rustls with ALPN, `https` forwarded-proto, and
//! `__Host-` cookies with `Secure`.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use sessiongate::config::{Duration as CfgDuration, SessionMode, TlsConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::common::{header_of, status_of, Fixture};

/// A self-signed certificate for `localhost`, written to a temp dir.
fn certificate() -> (tempfile::TempDir, TlsConfig, CertificateDer<'static>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsConfig {
        cert: dir.path().join("cert.pem"),
        key: dir.path().join("key.pem"),
    };
    std::fs::write(&tls.cert, cert.cert.pem()).unwrap();
    std::fs::write(&tls.key, cert.signing_key.serialize_pem()).unwrap();
    (dir, tls, cert.cert.der().clone())
}

fn connector(root: CertificateDer<'static>, alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn serves_https_with_secure_host_cookies() {
    let (_dir, tls, root) = certificate();
    let fx = Fixture::start(SessionMode::Browser, |c| c.listen.tls = Some(tls)).await;
    let tcp = TcpStream::connect(fx.gateway.public_addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut stream = connector(root.clone(), &[b"http/1.1"])
        .connect(name.clone(), tcp)
        .await
        .unwrap();
    stream
        .write_all(b"GET /secure HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(status_of(&answer), 200, "{answer}");
    let cookie = header_of(&answer, "set-cookie").unwrap();
    assert!(cookie.starts_with("__Host-sg_"), "{cookie}");
    assert!(cookie.contains("Secure"), "{cookie}");
    let seen = fx.upstream.wait_for(1).await;
    assert_eq!(
        seen[0].header("x-forwarded-proto").as_deref(),
        Some("https")
    );
    assert!(seen[0].header("x-session").is_some());

    // ALPN offers h2.
    let tcp = TcpStream::connect(fx.gateway.public_addr).await.unwrap();
    let h2 = connector(root, &[b"h2", b"http/1.1"])
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
}

#[tokio::test]
async fn a_stalled_tls_handshake_is_cut_off() {
    let (_dir, tls, _root) = certificate();
    let fx = Fixture::start(SessionMode::Tab, |c| {
        c.listen.tls = Some(tls);
        c.listen.header_timeout = CfgDuration::from_millis(300);
    })
    .await;
    let mut tcp = TcpStream::connect(fx.gateway.public_addr).await.unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01]).await.unwrap(); // the start of a ClientHello
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), tcp.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "handshake still pending after 3 s");
}
