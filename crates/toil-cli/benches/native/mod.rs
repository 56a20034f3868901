//! What the benches' native baselines share: a WebTransport server on the
//! same stack as `toil` (quinn, h3, `toil_edge::webtransport::protocol`),
//! with the dev certificate, whose sessions a Rust handler serves instead
//! of a wasm box.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use toil_edge::webtransport::protocol::{self as wt, ConnectStream};

/// Starts the native server on its own runtime of `threads` threads, with
/// the dev certificate kept in `dir` (the test server's, so clients trust
/// both alike); every
/// WebTransport session it accepts goes to `serve`: its connection (one
/// session each), whose streams it accepts, and its CONNECT stream, which
/// must live as long as the session.
pub fn start<F, Fut>(dir: &Path, threads: usize, serve: F) -> SocketAddr
where
    F: Fn(Arc<wt::Connection>, ConnectStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let cert = toil_edge::tls::DevCert::load_or_create(&dir.join("cert")).unwrap();
    let keys = toil_edge::keys::NodeKeys::load_or_create(&dir.join("native-keys")).unwrap();
    let config = toil_edge::quic::server_config(
        Arc::new(rustls::sign::SingleCertAndKey::from(cert.certified_key().unwrap())),
        &keys,
        &toil_edge::quic::ConnectionLimits { idle_timeout: Duration::from_secs(300), ..toil_config::LimitsConfig::default().quic_connection() },
    )
    .unwrap();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let serve = Arc::new(serve);
    std::thread::spawn(move || {
        note_thread();
        let rt = match threads {
            1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
            n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).on_thread_start(note_thread).enable_all().build(),
        }
        .unwrap();
        rt.block_on(async move {
            let endpoint = quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(config), socket, Arc::new(quinn::TokioRuntime)).unwrap();
            while let Some(incoming) = endpoint.accept().await {
                let serve = serve.clone();
                tokio::spawn(async move {
                    if let Some((conn, connect)) = accept(incoming).await {
                        serve(conn, connect).await;
                    }
                });
            }
        });
    });
    addr
}

/// The threads of this process's native servers, whose CPU time
/// [`CpuTimes::of_native`] reads.
static THREADS: std::sync::Mutex<Vec<libc::pid_t>> = std::sync::Mutex::new(Vec::new());

fn note_thread() {
    // SAFETY: gettid has no preconditions.
    THREADS.lock().unwrap().push(unsafe { libc::gettid() });
}

/// Each thread's CPU time at one moment, to the nanosecond (the first
/// field of its `schedstat`; `/proc/PID/stat` counts in 10 ms ticks).
#[allow(dead_code)] // not every bench reads it
pub struct CpuTimes(std::collections::HashMap<libc::pid_t, Duration>);

#[allow(dead_code)]
impl CpuTimes {
    /// Every live thread of process `pid`.
    pub fn of_process(pid: u32) -> CpuTimes {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the process's threads");
        CpuTimes::of(pid, tasks.filter_map(|t| t.ok()?.file_name().to_str()?.parse().ok()))
    }

    /// The threads of this process's native servers.
    pub fn of_native() -> CpuTimes {
        CpuTimes::of(std::process::id(), THREADS.lock().unwrap().iter().copied())
    }

    fn of(pid: u32, threads: impl Iterator<Item = libc::pid_t>) -> CpuTimes {
        let read = |tid| std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).ok()?.split_whitespace().next()?.parse().ok();
        CpuTimes(threads.filter_map(|tid| Some((tid, Duration::from_nanos(read(tid)?)))).collect())
    }

    /// CPU time used since `earlier` by the threads alive at both moments.
    pub fn since(&self, earlier: &CpuTimes) -> Duration {
        self.0.iter().filter_map(|(tid, now)| Some(now.saturating_sub(*earlier.0.get(tid)?))).sum()
    }
}

/// The connection's first request, if it is a WebTransport CONNECT.
async fn accept(incoming: quinn::Incoming) -> Option<(Arc<wt::Connection>, ConnectStream)> {
    let quic = incoming.await.ok()?;
    let mut h3 = toil_edge::quic::h3_builder(1).build(toil_edge::h3_conn::QuicConn::new(quic.clone())).await.ok()?;
    let (req, stream) = h3.accept().await.ok()??.resolve_request().await.ok()?;
    if !wt::is_connect(&req) {
        return None;
    }
    let conn = Arc::new(wt::Connection::new(Box::new(h3), quic));
    let (_session, connect) = wt::accept(stream, &conn).await.ok()?;
    Some((conn, connect))
}
