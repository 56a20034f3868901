//! Shared harness of the end-to-end tests: one real `toil dev` per test
//! binary, serving the examples and the misbehaving test guest, built once
//! with the real guest toolchain; and real HTTP/1.1, HTTP/2 and HTTP/3 clients.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

pub fn toil() -> Command {
    Command::new(env!("CARGO_BIN_EXE_toil"))
}

/// A running `toil dev`. It exits when this process does (its stdin closes).
pub struct Server {
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub cert: PathBuf,
    pub dir: PathBuf,
    _child: Child,
}

/// Limits the bad-input tests rely on.
pub const DEADLINE_MS: u64 = 50;
pub const MEMORY_MB: u64 = 16;
pub const MAX_REQUEST_BODY: usize = 65536;
pub const MAX_RESPONSE_BODY: usize = 1 << 20;

pub fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let root = repo_root();
        let dir = root.join("target/e2e").join(format!("dev-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = serde_json::json!({
            "apps": [
                {"domain": "hello", "dir": root.join("examples/hello")},
                {"domain": "echo", "dir": root.join("examples/echo")},
                {"domain": "jobs", "dir": root.join("examples/jobs")},
                {"domain": "misbehave", "dir": root.join("crates/toil-cli/tests/guests/misbehave")},
            ],
            "defaultDomain": "hello",
            "dev": {"listen": "127.0.0.1:0", "admin": "127.0.0.1:0", "certDir": dir.join("cert")},
            "limits": {
                "deadlineMs": DEADLINE_MS, "memoryMb": MEMORY_MB,
                "maxRequestBodyBytes": MAX_REQUEST_BODY, "maxResponseBodyBytes": MAX_RESPONSE_BODY
            },
            "build": {"targetDir": root.join("target/guest")},
        });
        let file = dir.join("toilconfig.json");
        std::fs::write(&file, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let mut child = toil()
            .args(["dev", "--stop-on-stdin-eof", "--config"])
            .arg(&file)
            .env("TOIL_LOG", "info,wasmtime_wasi=warn,wiggle=warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("dev.log")).unwrap())
            .spawn()
            .expect("spawn toil dev");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let listening = loop {
            match lines.next() {
                Some(Ok(l)) if l.starts_with("listening ") => break l,
                Some(Ok(_)) => continue,
                _ => panic!("toil dev exited before listening; see {}", dir.join("dev.log").display()),
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let field = |k: &str| {
            listening.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{k}="))).unwrap().to_string()
        };
        Server {
            http: field("http").parse().unwrap(),
            admin: field("admin").parse().unwrap(),
            cert: field("cert").into(),
            dir,
            _child: child,
        }
    })
}

impl Server {
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dev.log")).unwrap_or_default()
    }
}

/// A response as the tests look at it.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub fn request(method: &str, host: &str, path: &str, body: impl Into<Bytes>) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .body(Full::new(body.into()))
        .unwrap()
}

/// One request over a fresh HTTP/1.1 connection.
pub async fn http1(addr: SocketAddr, req: http::Request<Full<Bytes>>) -> Resp {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    collect(send.send_request(req).await.unwrap()).await
}

/// One request over a fresh HTTP/2 (prior knowledge) connection.
pub async fn http2(addr: SocketAddr, req: http::Request<Full<Bytes>>) -> Resp {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let (mut parts, body) = req.into_parts();
    let host = parts.headers.remove("host").unwrap();
    parts.uri = format!("http://{}{}", host.to_str().unwrap(), parts.uri).parse().unwrap();
    collect(send.send_request(http::Request::from_parts(parts, body)).await.unwrap()).await
}

async fn collect(resp: http::Response<hyper::body::Incoming>) -> Resp {
    let (parts, body) = resp.into_parts();
    Resp { status: parts.status.as_u16(), headers: parts.headers, body: body.collect().await.unwrap().to_bytes() }
}

/// An HTTP/3 client trusting the dev certificate.
pub fn h3_endpoint(cert: &Path) -> quinn::Endpoint {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(cert).unwrap();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    ep
}

/// One request over a fresh HTTP/3 connection.
pub async fn http3(addr: SocketAddr, cert: &Path, req: http::Request<Full<Bytes>>) -> Resp {
    let ep = h3_endpoint(cert);
    let (parts, body) = req.into_parts();
    let host = parts.headers.get("host").unwrap().to_str().unwrap().to_string();
    let conn = ep.connect(addr, "localhost").unwrap().await.unwrap();
    let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(conn)).await.unwrap();
    tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
    let uri: http::Uri = format!("https://{host}{}", parts.uri).parse().unwrap();
    let mut head = http::Request::builder().method(parts.method).uri(uri);
    for (n, v) in &parts.headers {
        if n != "host" {
            head = head.header(n, v);
        }
    }
    let mut stream = send.send_request(head.body(()).unwrap()).await.unwrap();
    let body = body.collect().await.unwrap().to_bytes();
    if !body.is_empty() {
        // The server may answer (413) before taking the whole body.
        let _ = stream.send_data(body).await;
    }
    let _ = stream.finish().await;
    let resp = stream.recv_response().await.unwrap();
    let mut out = Vec::new();
    while let Some(mut chunk) = stream.recv_data().await.unwrap() {
        while chunk.has_remaining() {
            let c = chunk.chunk();
            out.extend_from_slice(c);
            let n = c.len();
            chunk.advance(n);
        }
    }
    Resp { status: resp.status().as_u16(), headers: resp.headers().clone(), body: out.into() }
}

/// GETs a path of the admin listener.
pub async fn admin_get(path: &str) -> Resp {
    let s = server();
    http1(s.admin, request("GET", "admin", path, Bytes::new())).await
}
