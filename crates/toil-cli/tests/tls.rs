//! Production ingress: HTTPS over TCP next to HTTP/3 on one port, with
//! certificates from files chosen by SNI, against a test CA this file
//! makes (rcgen). curl speaks HTTP/1.1 and HTTP/2 over TLS; a Rust client
//! checks which certificate each name gets and speaks HTTP/3; certificate
//! files are replaced under an open connection; a bad replacement is
//! refused and the old pair serves on; cleartext is redirected.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::tls::{leaf, replace, tls_connect, TestCa};
use common::*;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::json;

/// A fresh test CA for the test `tag`.
fn test_ca(tag: &str) -> TestCa {
    TestCa::new(&repo_root().join(format!("target/e2e/{tag}-{}/ca", std::process::id())))
}

/// A node serving [`apps`] with `tls` as its `tls` config, and `extra`'s
/// other top-level keys.
fn serve(tag: &str, tls: serde_json::Value, extra: serde_json::Value) -> Server {
    let mut config = json!({"apps": apps(), "tls": tls});
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    start_server(tag, config)
}

/// The apps on host names of the test's own.
fn apps() -> serde_json::Value {
    let root = repo_root();
    json!([
        {"domain": "hello", "dir": root.join("examples/hello"), "hosts": ["hello.test"]},
        {"domain": "echo", "dir": root.join("examples/echo"), "hosts": ["echo.test", "api.echo.test"]},
    ])
}

/// curl over HTTPS with `ca` trusted, `name` resolved to the server:
/// (status line, headers and body as one text).
fn curl(s: &Server, ca: &Path, name: &str, path: &str, version: &str) -> String {
    let port = s.http.port();
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10", version, "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("{name}:{port}:127.0.0.1"), &format!("https://{name}:{port}{path}")])
        .output()
        .expect("curl (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    text
}

/// One HTTP/1.1 request on an open connection.
async fn get_on(send: &mut hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>, host: &str, path: &str) -> (u16, String) {
    let resp = send.send_request(get(host, path)).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn https_over_tcp_picks_certificates_by_name_and_points_at_http3() {
    let ca = test_ca("tls-sni");
    let (hello_cert, hello_key, hello_der) = ca.write("hello", &["hello.test"]);
    let (echo_cert, echo_key, echo_der) = ca.write("echo", &["echo.test", "*.echo.test"]);
    let s = serve(
        "tls-sni",
        json!({"certificates": [
            {"hosts": ["hello.test"], "cert": hello_cert, "key": hello_key},
            {"hosts": ["echo.test", "*.echo.test"], "cert": echo_cert, "key": echo_key},
        ], "selfSigned": false}),
        json!({}),
    );
    let port = s.http.port();

    // curl, HTTP/1.1 and HTTP/2 over TLS, trusting the test CA alone.
    let h1 = curl(&s, &ca.pem, "hello.test", "/", "--http1.1");
    assert!(h1.starts_with("HTTP/1.1 200"), "{h1}");
    assert!(h1.contains("Hello from Toil Edge!"), "{h1}");
    assert!(h1.to_ascii_lowercase().contains(&format!("alt-svc: h3=\":{port}\"; ma=86400")), "{h1}");
    let h2 = curl(&s, &ca.pem, "hello.test", "/", "--http2");
    assert!(h2.starts_with("HTTP/2 200"), "{h2}");
    assert!(h2.to_ascii_lowercase().contains(&format!("alt-svc: h3=\":{port}\"; ma=86400")), "{h2}");

    // Each name gets its own certificate; the wildcard covers one label.
    for (name, want) in [("hello.test", &hello_der), ("echo.test", &echo_der), ("api.echo.test", &echo_der)] {
        let stream = tls_connect(s.http, &ca.pem, name, &[b"http/1.1"]).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&leaf(&stream), want, "certificate for {name}");
    }
    // A name no certificate serves: the handshake fails with
    // unrecognized_name, the others go on.
    for name in ["other.test", "a.b.echo.test"] {
        let refused = tls_connect(s.http, &ca.pem, name, &[b"http/1.1"]).await;
        let e = refused.err().unwrap_or_else(|| panic!("{name}: a handshake with no certificate to serve"));
        // RFC 6066's alert for a name the server does not serve.
        assert!(e.to_string().contains("UnrecognisedName"), "{name}: {e}");
    }
    // Over QUIC too (rustls, under quinn, sends access_denied).
    let quic = h3_endpoint(&ca.pem).connect(s.http, "other.test").unwrap().await;
    assert!(quic.is_err(), "a QUIC handshake for a name no certificate serves");
    let after = curl(&s, &ca.pem, "echo.test", "/", "--http1.1");
    assert!(after.starts_with("HTTP/1.1 200"), "{after}");

    // HTTP/3 on the same port number, with the same certificate.
    let h3 = http3_as(s.http, &ca.pem, "hello.test", get("hello.test", "/")).await;
    assert_eq!((h3.status, h3.text()), (200, "Hello from Toil Edge!\n".to_string()));
    assert_eq!(h3.header("alt-svc"), Some(format!("h3=\":{port}\"; ma=86400").as_str()));

    // The days left, per host.
    let days = s.metric("toil_tls_certificate_days_left{host=\"*.echo.test\"}").await;
    assert!((88.0..=90.0).contains(&days), "days left: {days}");
}

#[tokio::test]
async fn a_replaced_certificate_serves_new_connections_and_a_bad_one_is_refused() {
    let ca = test_ca("tls-rotate");
    let (cert, key, first) = ca.write("hello", &["hello.test"]);
    let s = serve("tls-rotate", json!({"certificates": [{"hosts": ["hello.test"], "cert": cert, "key": key}], "watchIntervalMs": 100}), json!({}));

    // A connection opened on the first certificate.
    let stream = tls_connect(s.http, &ca.pem, "hello.test", &[b"http/1.1"]).await.unwrap();
    assert_eq!(leaf(&stream), first);
    let (mut open, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    assert_eq!(get_on(&mut open, "hello.test", "/").await.0, 200);

    // The files are replaced: new handshakes get the new pair.
    let (second_cert, second_key, _) = ca.issue(&["hello.test"]);
    replace(&key, second_key.as_bytes());
    replace(&cert, second_cert.as_bytes());
    let second = CertificateDer::from_pem_slice(second_cert.as_bytes()).unwrap();
    let mut seen = first.clone();
    for _ in 0..100 {
        seen = leaf(&tls_connect(s.http, &ca.pem, "hello.test", &[b"http/1.1"]).await.unwrap());
        if seen == second {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, second, "the new certificate is served");
    // The connection opened before goes on, on its own session.
    assert_eq!(get_on(&mut open, "hello.test", "/").await, (200, "Hello from Toil Edge!\n".to_string()));

    // A bad replacement (a key that is not the certificate's) is refused
    // with the hosts and the cause named; the last good pair serves on.
    let needle = "TLS certificate refused, the previous one serves on";
    let earlier = s.log().matches(needle).count();
    let (_, stranger_key, _) = ca.issue(&["hello.test"]);
    replace(&key, stranger_key.as_bytes());
    let refused = nth_log_line(&s, needle, earlier).await;
    assert!(refused.contains("hello.test") && refused.contains("does not belong to the certificate"), "{refused}");
    assert_eq!(leaf(&tls_connect(s.http, &ca.pem, "hello.test", &[b"http/1.1"]).await.unwrap()), second);
    let ok = curl(&s, &ca.pem, "hello.test", "/", "--http2");
    assert!(ok.starts_with("HTTP/2 200"), "{ok}");
}

#[tokio::test]
async fn cleartext_is_redirected_to_https_but_acme_challenges_are_not() {
    let ca = test_ca("tls-redirect");
    let (cert, key, _) = ca.write("hello", &["hello.test"]);
    let s = serve("tls-redirect", json!({"certificates": [{"hosts": ["hello.test"], "cert": cert, "key": key}], "cleartext": "redirect"}), json!({}));
    let port = s.http.port();
    let resp = http1(s.http, request("POST", &format!("hello.test:{port}"), "/hello/you?greeting=Hi", "body")).await;
    assert_eq!(resp.status, 308);
    assert_eq!(resp.header("location"), Some(format!("https://hello.test:{port}/hello/you?greeting=Hi").as_str()));
    let challenge = http1(s.http, get("hello.test", "/.well-known/acme-challenge/token")).await;
    assert_ne!(challenge.status, 308, "an ACME challenge is answered in the clear");
    // HTTPS on the same port is served.
    let ok = curl(&s, &ca.pem, "hello.test", "/", "--http1.1");
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}

/// Waits for the line after the first `earlier` lines of the server's log
/// containing `needle`; returns it.
async fn nth_log_line(s: &Server, needle: &str, earlier: usize) -> String {
    for _ in 0..100 {
        if let Some(line) = s.log().lines().filter(|l| l.contains(needle)).nth(earlier) {
            return line.to_string();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no log line with {needle:?}; log:\n{}", s.log());
}

/// A client that starts a TLS handshake and never finishes it, and one
/// that connects and sends nothing, are dropped at the header timeout; a
/// malformed ClientHello gets an alert; the port goes on serving.
#[tokio::test]
async fn a_handshake_that_never_finishes_is_dropped_at_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = test_ca("tls-stall");
    let (cert, key, _) = ca.write("hello", &["hello.test"]);
    let tls = json!({"certificates": [{"hosts": ["hello.test"], "cert": cert, "key": key}]});
    let s = serve("tls-stall", tls, json!({"limits": {"headerTimeoutMs": 1000}}));
    // A TLS record header promising a 256-byte ClientHello, and one byte of it.
    for opening in [&[0x16u8, 0x03, 0x01, 0x01, 0x00, 0x01][..], &[][..]] {
        let mut tcp = tokio::net::TcpStream::connect(s.http).await.unwrap();
        tcp.write_all(opening).await.unwrap();
        let started = std::time::Instant::now();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await.expect("the node closes a stalled handshake");
        assert!(matches!(read, Ok(0) | Err(_)), "closed without an answer: {read:?}");
        assert!(started.elapsed() >= Duration::from_millis(900), "not before the header timeout: {:?}", started.elapsed());
    }
    // A whole ClientHello of one byte, which cannot be one: an alert, then the end.
    let mut tcp = tokio::net::TcpStream::connect(s.http).await.unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0xff]).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await.expect("the node ends a malformed handshake");
    assert_eq!(answer.first(), Some(&0x15), "a TLS alert record: {answer:?}");
    let ok = curl(&s, &ca.pem, "hello.test", "/", "--http1.1");
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}
