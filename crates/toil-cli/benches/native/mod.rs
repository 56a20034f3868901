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
/// [`cpu_time`] sums.
static THREADS: std::sync::Mutex<Vec<libc::pid_t>> = std::sync::Mutex::new(Vec::new());

fn note_thread() {
    // SAFETY: gettid has no preconditions.
    THREADS.lock().unwrap().push(unsafe { libc::gettid() });
}

/// CPU time the native servers' threads have used, to the nanosecond.
#[allow(dead_code)] // not every bench reads it
pub fn cpu_time() -> Duration {
    let threads = THREADS.lock().unwrap();
    threads.iter().map(|tid| thread_cpu_time(std::process::id() as libc::pid_t, *tid)).sum()
}

/// CPU time of every live thread of process `pid`, to the nanosecond
/// (`/proc/PID/stat` counts in clock ticks, 10 ms).
#[allow(dead_code)]
pub fn process_cpu_time(pid: u32) -> Duration {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the process's threads");
    tasks.filter_map(|t| t.ok()?.file_name().to_str()?.parse().ok()).map(|tid| thread_cpu_time(pid as libc::pid_t, tid)).sum()
}

/// A thread's time on a CPU: the first field of its `schedstat`, in ns
/// (zero once the thread is gone).
fn thread_cpu_time(pid: libc::pid_t, tid: libc::pid_t) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).unwrap_or_default();
    Duration::from_nanos(stat.split_whitespace().next().and_then(|ns| ns.parse().ok()).unwrap_or(0))
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
