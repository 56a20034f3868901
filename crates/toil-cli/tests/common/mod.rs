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

/// A `toil` command aimed at the admin API at `admin`, with the token in `token_file`.
pub fn toil_admin(admin: SocketAddr, token_file: &Path, args: &[&str]) -> std::process::Output {
    toil().args(args).arg("--admin").arg(admin.to_string()).arg("--token-file").arg(token_file).output().unwrap()
}

/// `bytes` as a WAT string literal's contents (a custom section's data).
pub fn wat_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:02x}")).collect()
}

pub fn toil() -> Command {
    Command::new(env!("CARGO_BIN_EXE_toil"))
}

/// The `listening …` line a starting `toil dev` or `toil node` prints (its
/// stdout piped), as a field lookup (`http`, `admin`, `cert`,
/// `cert-sha256`); the rest of its stdout is drained so it never blocks on
/// a full pipe. Panics naming `log` if it exits first.
pub fn wait_listening(child: &mut Child, log: &Path) -> impl Fn(&str) -> String {
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = loop {
        match lines.next() {
            Some(Ok(l)) if l.starts_with("listening ") => break l,
            Some(Ok(_)) => continue,
            _ => panic!("toil exited before listening; see {}", log.display()),
        }
    };
    std::thread::spawn(move || for _ in lines {});
    move |k: &str| listening.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{k}="))).unwrap().to_string()
}

/// A running `toil dev`. It exits when this process does (its stdin closes).
pub struct Server {
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub cert: PathBuf,
    /// Hex SHA-256 of the dev certificate (what browsers pin).
    pub cert_sha256: String,
    pub dir: PathBuf,
    /// The admin token file `toil dev` made (admin requests but /metrics need it).
    pub token_file: PathBuf,
    pub pid: u32,
    child: Child,
}

/// Limits the bad-input tests rely on.
pub const DEADLINE_MS: u64 = 50;
pub const MEMORY_MB: u64 = 16;
pub const MAX_REQUEST_BODY: usize = 65536;
pub const MAX_RESPONSE_BODY: usize = 1 << 20;
pub const MAX_FRAME_BYTES: usize = 65536;
pub const SEND_STALL_MS: u64 = 1000;
pub const IDLE_TIMEOUT_MS: u64 = 2000;

/// The shared `toil dev` of this test binary, on the default settings.
pub fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| start_server("dev", serde_json::json!({})))
}

/// Starts a `toil dev` whose config is the tests' standard one with the
/// top-level keys of `extra` replacing it.
pub fn start_server(tag: &str, extra: serde_json::Value) -> Server {
    start_server_with_fd_limit(tag, extra, None)
}

/// [`start_server`] with `RLIMIT_NOFILE` (soft and hard) set to `nofile`.
pub fn start_server_with_fd_limit(tag: &str, extra: serde_json::Value, nofile: Option<u64>) -> Server {
    {
        let root = repo_root();
        let dir = root.join("target/e2e").join(format!("{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = serde_json::json!({
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
                "maxRequestBodyBytes": MAX_REQUEST_BODY, "maxResponseBodyBytes": MAX_RESPONSE_BODY,
                "maxFrameBytes": MAX_FRAME_BYTES, "sendStallTimeoutMs": SEND_STALL_MS, "idleTimeoutMs": IDLE_TIMEOUT_MS
            },
            "build": {"targetDir": root.join("target/guest")},
        });
        for (k, v) in extra.as_object().unwrap() {
            config[k] = v.clone();
        }
        let file = dir.join("toilconfig.json");
        std::fs::write(&file, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let mut command = toil();
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    let lim = libc::rlimit { rlim_cur: n as libc::rlim_t, rlim_max: n as libc::rlim_t };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = command
            .args(["dev", "--stop-on-stdin-eof", "--config"])
            .arg(&file)
            .env("TOIL_LOG", "info,wasmtime_wasi=warn,wiggle=warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("dev.log")).unwrap())
            .spawn()
            .expect("spawn toil dev");
        let field = wait_listening(&mut child, &dir.join("dev.log"));
        Server {
            http: field("http").parse().unwrap(),
            admin: field("admin").parse().unwrap(),
            cert: field("cert").into(),
            cert_sha256: field("cert-sha256"),
            token_file: dir.join("cert/admin-token"),
            dir,
            pid: child.id(),
            child,
        }
    }
}

impl Server {
    /// Shuts the server down the way a supervisor does (its stdin closes)
    /// and waits for it to exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        drop(self.child.stdin.take());
        self.child.wait().unwrap()
    }

    /// The server's metrics text (Prometheus format).
    pub async fn metrics(&self) -> String {
        http1(self.admin, request("GET", "admin", "/metrics", Bytes::new())).await.text()
    }

    /// One metric sample (`name{labels}`), 0 if absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self.metrics().await;
        text.lines().find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
    }

    /// The server process's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").trim().parse().unwrap()
    }

    /// CPU time the server process has used (user + system).
    pub fn cpu_time(&self) -> std::time::Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap();
        // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<u64> = rest.split_whitespace().skip(11).take(2).map(|v| v.parse().unwrap()).collect();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        std::time::Duration::from_millis((f[0] + f[1]) * 1000 / hz)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dev.log")).unwrap_or_default()
    }

    /// The admin token.
    pub fn token(&self) -> String {
        std::fs::read_to_string(&self.token_file).unwrap().trim().to_string()
    }

    /// A `toil` command aimed at this server's admin API, with the token.
    pub fn toil_admin(&self, args: &[&str]) -> std::process::Output {
        toil_admin(self.admin, &self.token_file, args)
    }

    /// One admin request carrying the token.
    pub async fn admin(&self, method: &str, path: &str, body: impl Into<Bytes>) -> Resp {
        let mut req = request(method, "admin", path, body);
        req.headers_mut().insert("authorization", format!("Bearer {}", self.token()).parse().unwrap());
        http1(self.admin, req).await
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
    http::Request::builder().method(method).uri(path).header("host", host).body(Full::new(body.into())).unwrap()
}

/// A GET of `path` on `host`, with no body.
pub fn get(host: &str, path: &str) -> http::Request<Full<Bytes>> {
    request("GET", host, path, Bytes::new())
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
    h3_endpoint_with(cert, None)
}

/// [`h3_endpoint`] whose connections send a PING every `interval`.
pub fn h3_endpoint_keeping_alive(cert: &Path, interval: std::time::Duration) -> quinn::Endpoint {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(interval));
    h3_endpoint_with(cert, Some(transport))
}

/// [`h3_endpoint`] whose connections grant the server at most `window`
/// bytes of credit per stream until the client reads.
pub fn h3_endpoint_with_window(cert: &Path, window: u32) -> quinn::Endpoint {
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(window.into());
    h3_endpoint_with(cert, Some(transport))
}

fn h3_endpoint_with(cert: &Path, transport: Option<quinn::TransportConfig>) -> quinn::Endpoint {
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
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    if let Some(transport) = transport {
        client.transport_config(Arc::new(transport));
    }
    ep.set_default_client_config(client);
    ep
}

/// One request over a fresh HTTP/3 connection.
pub async fn http3(addr: SocketAddr, cert: &Path, req: http::Request<Full<Bytes>>) -> Resp {
    http3_as(addr, cert, "localhost", req).await
}

/// [`http3`] asking for the server name `name` (SNI), trusting the
/// certificates in the PEM file `cert`.
pub async fn http3_as(addr: SocketAddr, cert: &Path, name: &str, req: http::Request<Full<Bytes>>) -> Resp {
    let ep = h3_endpoint(cert);
    let (parts, body) = req.into_parts();
    let host = parts.headers.get("host").unwrap().to_str().unwrap().to_string();
    let conn = ep.connect(addr, name).unwrap().await.unwrap();
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

/// GETs a path of the shared server's admin listener, with its token.
pub async fn admin_get(path: &str) -> Resp {
    server().admin("GET", path, Bytes::new()).await
}

// ------------------------------------------------------------ WebTransport

/// Resolves every host name to the dev server, so clients can use the
/// per-domain host names (`echo.localhost`) without touching DNS.
#[derive(Debug)]
struct ToDevServer(SocketAddr);

impl wtransport::config::DnsResolver for ToDevServer {
    fn resolve(&self, _host: &str) -> std::pin::Pin<Box<dyn wtransport::config::DnsLookupFuture>> {
        let addr = self.0;
        Box::pin(async move { Ok(Some(addr)) })
    }
}

/// A wtransport client endpoint that trusts the dev certificate the way a
/// browser does (`serverCertificateHashes`) and reaches `to` for any host.
pub fn wt_endpoint(to: SocketAddr) -> wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client> {
    wt_endpoint_for(server(), to)
}

/// [`wt_endpoint`] for a server other than the shared one.
pub fn wt_endpoint_for(s: &Server, to: SocketAddr) -> wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client> {
    wt_endpoint_pinned(&s.cert_sha256, to)
}

/// [`wt_endpoint`] for any node, trusting the certificate with SHA-256 `cert_sha256` (hex).
pub fn wt_endpoint_pinned(cert_sha256: &str, to: SocketAddr) -> wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client> {
    wt_endpoint_with_window(cert_sha256, to, None)
}

/// [`wt_endpoint_pinned`] whose connections grant the server at most
/// `window` bytes of flow-control credit (per stream and in all) until
/// the client reads: a client that stops reading then starves the server
/// of credit on every stream, the session's CONNECT stream included.
pub fn wt_endpoint_with_window(
    cert_sha256: &str,
    to: SocketAddr,
    window: Option<u32>,
) -> wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client> {
    wt_endpoint_with(cert_sha256, to, window, None)
}

/// [`wt_endpoint_for`] whose connections send a PING every `interval`,
/// so sessions held idle longer than the client's idle timeout (30 s)
/// stay open. The pings reach no box.
pub fn wt_endpoint_keeping_alive(
    s: &Server,
    to: SocketAddr,
    interval: std::time::Duration,
) -> wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client> {
    wt_endpoint_with(&s.cert_sha256, to, None, Some(interval))
}

fn wt_endpoint_with(
    cert_sha256: &str,
    to: SocketAddr,
    window: Option<u32>,
    keep_alive: Option<std::time::Duration>,
) -> wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client> {
    let hash: [u8; 32] = (0..32).map(|i| u8::from_str_radix(&cert_sha256[2 * i..2 * i + 2], 16).unwrap()).collect::<Vec<_>>().try_into().unwrap();
    let mut config = wtransport::ClientConfig::builder()
        .with_bind_default()
        .with_server_certificate_hashes([wtransport::tls::Sha256Digest::new(hash)])
        .keep_alive_interval(keep_alive)
        .build();
    config.set_dns_resolver(ToDevServer(to));
    if let Some(window) = window {
        let mut transport = wtransport::quinn::TransportConfig::default();
        transport.receive_window(window.into()).stream_receive_window(window.into());
        config.quic_config_mut().transport_config(Arc::new(transport));
    }
    wtransport::Endpoint::client(config).unwrap()
}

/// Opens a WebTransport session to `https://{host}{path}` on the dev server.
pub async fn wt_connect(host: &str, path: &str) -> Result<wtransport::Connection, wtransport::error::ConnectingError> {
    let s = server();
    wt_endpoint(s.http).connect(format!("https://{host}:{}{path}", s.http.port())).await
}

/// A client's length-delimited frame stream on one bidirectional stream.
pub struct Frames {
    pub send: wtransport::SendStream,
    pub reader: FrameReader,
}

impl Frames {
    pub async fn open(conn: &wtransport::Connection) -> Frames {
        let (send, recv) = conn.open_bi().await.unwrap().await.unwrap();
        Frames { send, reader: FrameReader::new(recv) }
    }

    /// A bidirectional stream the server opened.
    pub async fn accept(conn: &wtransport::Connection) -> Frames {
        let (send, recv) = conn.accept_bi().await.unwrap();
        Frames { send, reader: FrameReader::new(recv) }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        write_frame(&mut self.send, bytes).await;
    }

    /// The next frame, or `None` when the stream or connection ended.
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        self.reader.recv().await
    }

    pub async fn recv_text(&mut self) -> String {
        self.reader.recv_text().await
    }
}

/// Writes one length-delimited frame.
pub async fn write_frame(send: &mut wtransport::SendStream, bytes: &[u8]) {
    send.write_all(&toil_abi::stream::framing::header(bytes.len() as u32)).await.unwrap();
    send.write_all(bytes).await.unwrap();
}

/// Reads length-delimited frames from one stream (either direction's kind).
pub struct FrameReader {
    pub recv: wtransport::RecvStream,
    decoder: toil_abi::stream::framing::FrameDecoder,
    buf: Vec<u8>,
    at: usize,
    /// The stream ended cleanly on a frame boundary.
    pub finished: bool,
}

impl FrameReader {
    pub fn new(recv: wtransport::RecvStream) -> FrameReader {
        FrameReader { recv, decoder: toil_abi::stream::framing::FrameDecoder::new(16 << 20), buf: vec![0; 64 << 10], at: 0, finished: false }
    }

    /// Every frame until the stream ends cleanly; `Err` if it was reset or the connection went.
    pub async fn read_to_end(&mut self) -> Result<Vec<String>, String> {
        let mut frames = Vec::new();
        loop {
            if let Some(frame) = self.recv().await {
                frames.push(String::from_utf8(frame).unwrap());
                continue;
            }
            return if self.finished { Ok(frames) } else { Err(format!("stream did not finish cleanly after {frames:?}")) };
        }
    }

    /// The next frame, or `None` when the stream or connection ended.
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        loop {
            if self.at > 0 {
                let mut input = &self.buf[..self.at];
                let before = input.len();
                let frame = self.decoder.decode(&mut input).unwrap();
                let used = before - input.len();
                self.buf.copy_within(used..self.at, 0);
                self.at -= used;
                if frame.is_some() {
                    return frame;
                }
            }
            match self.recv.read(&mut self.buf[self.at..]).await {
                Ok(Some(n)) => self.at += n,
                Ok(None) => {
                    self.finished = self.at == 0;
                    return None;
                }
                Err(_) => return None,
            }
        }
    }

    pub async fn recv_text(&mut self) -> String {
        String::from_utf8(self.recv().await.expect("a frame")).unwrap()
    }
}

/// How the server closed the session, as the client saw it: `(code,
/// reason)` from the session's close (the `CLOSE_WEBTRANSPORT_SESSION`
/// capsule, which wtransport reports from its session calls), or the
/// error's text otherwise.
pub async fn closed(conn: &wtransport::Connection) -> Result<(u64, String), String> {
    let wait = async {
        loop {
            match conn.receive_datagram().await {
                Ok(_) => continue, // a datagram sent before the close
                Err(e) => return e,
            }
        }
    };
    match tokio::time::timeout(std::time::Duration::from_secs(15), wait).await {
        Ok(wtransport::error::ConnectionError::ApplicationClosed(c)) => Ok((c.code().into_inner(), String::from_utf8_lossy(c.reason()).into_owned())),
        Ok(other) => Err(other.to_string()),
        Err(_) => Err("not closed within 15 s".into()),
    }
}

/// Waits until the dev server's log contains `needle`.
pub async fn log_contains(needle: &str) -> bool {
    for _ in 0..100 {
        if server().log().contains(needle) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

/// Reads one metric sample (`name{labels}`) of the shared server.
pub async fn metric(sample: &str) -> f64 {
    server().metric(sample).await
}

/// A UDP relay between one client and a server, standing for the client's
/// NAT. It can change the port the server sees (as `Endpoint::rebind` or a
/// NAT rebinding does) and it can be cut, so a client "vanishes" without
/// closing anything (as a phone losing signal).
pub struct UdpRelay {
    pub addr: SocketAddr,
    back: Arc<std::sync::Mutex<Arc<tokio::net::UdpSocket>>>,
    front: Arc<tokio::net::UdpSocket>,
    client: Arc<std::sync::Mutex<Option<SocketAddr>>>,
    cut: Arc<std::sync::atomic::AtomicBool>,
}

impl UdpRelay {
    pub async fn start(to: SocketAddr) -> UdpRelay {
        use std::sync::atomic::Ordering;
        let front = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let relay = UdpRelay {
            addr: front.local_addr().unwrap(),
            back: Arc::new(std::sync::Mutex::new(Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap()))),
            front: front.clone(),
            client: Arc::new(std::sync::Mutex::new(None)),
            cut: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        let (back, c, k) = (relay.back.clone(), relay.client.clone(), relay.cut.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                *c.lock().unwrap() = Some(from);
                let out = back.lock().unwrap().clone();
                if !k.load(Ordering::Relaxed) {
                    let _ = out.send_to(&buf[..n], to).await;
                }
            }
        });
        let first = relay.back.lock().unwrap().clone();
        relay.relay_replies(first);
        relay
    }

    fn relay_replies(&self, back: Arc<tokio::net::UdpSocket>) {
        use std::sync::atomic::Ordering;
        let (f, c, k) = (self.front.clone(), self.client.clone(), self.cut.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = back.recv(&mut buf).await {
                let to = *c.lock().unwrap();
                if let (Some(to), false) = (to, k.load(Ordering::Relaxed)) {
                    let _ = f.send_to(&buf[..n], to).await;
                }
            }
        });
    }

    /// From now on the server sees the client on a new UDP port.
    pub async fn rebind(&self) -> SocketAddr {
        let socket = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = socket.local_addr().unwrap();
        *self.back.lock().unwrap() = socket.clone();
        self.relay_replies(socket);
        addr
    }

    /// The address the server currently sees the client at.
    pub fn client_side(&self) -> SocketAddr {
        self.back.lock().unwrap().local_addr().unwrap()
    }

    /// Drops every packet from now on, both ways.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
pub mod cluster;
pub mod nats;
pub mod pebble;
pub mod pooled;
pub mod relay;
pub mod tls;

// ------------------------------------------------------------ Deploys

/// A copy of the `versioned` test guest in `parent/name` whose `LABEL` is
/// `label` (a developer's edit of the source); not built.
pub fn versioned_copy(parent: &Path, name: &str, label: &str) -> PathBuf {
    let from = repo_root().join("crates/toil-cli/tests/guests/versioned");
    let dir = parent.join(name);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let sdk = repo_root().join("guest-sdk/toil");
    let manifest = std::fs::read_to_string(from.join("Cargo.toml")).unwrap().replace("../../../../../guest-sdk/toil", sdk.to_str().unwrap());
    std::fs::write(dir.join("Cargo.toml"), manifest).unwrap();
    std::fs::copy(from.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    std::fs::copy(from.join("src/lib.rs"), dir.join("src/lib.rs")).unwrap();
    set_label(&dir, label);
    dir
}

/// Rewrites the `LABEL` of a [`versioned_copy`].
pub fn set_label(dir: &Path, label: &str) {
    let path = dir.join("src/lib.rs");
    let src = std::fs::read_to_string(&path).unwrap();
    let line = src.lines().find(|l| l.starts_with("const LABEL")).unwrap().to_string();
    std::fs::write(&path, src.replace(&line, &format!("const LABEL: &str = {label:?};"))).unwrap();
}

/// Builds a guest crate with `toil build` into its `build/server`.
pub fn build_guest(dir: &Path) -> PathBuf {
    let out = toil().arg("build").arg(dir).arg("--target-dir").arg(repo_root().join("target/guest")).output().unwrap();
    assert!(out.status.success(), "building {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    dir.join("build/server")
}

/// GET `path` on `addr` for `host` over HTTP/1.1: the status and body, or `None` if the connection failed.
pub fn get_blocking(addr: SocketAddr, host: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// The `p` quantile (0 to 1) of samples sorted ascending; NaN when there are none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The median of `samples`, which it sorts.
pub fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    percentile(samples, 0.5)
}
