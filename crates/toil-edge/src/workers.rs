//! QUIC workers: N threads, each with its own single-threaded tokio runtime
//! and its own quinn `Endpoint`, all on one UDP port.
//!
//! Everything a connection runs — its HTTP/3 requests, its WebTransport
//! session driver and resident stream box — is spawned on the runtime of
//! the worker whose endpoint accepted it, so it never moves between
//! threads. Packets reach the right worker by connection ID
//! ([`crate::steering`]), in one of two ways ([`Steering`]):
//!
//! - **`Bpf`** (Linux): one `SO_REUSEPORT` socket per worker, bound in
//!   worker order, and a classic BPF program on the group that picks the
//!   socket from the packet's connection ID. The kernel steers; no copy.
//! - **`Userspace`** (portable): one socket read by a dispatcher thread that
//!   applies the same function and hands each datagram to its worker's
//!   endpoint through a bounded queue (full queue: the datagram is dropped,
//!   as the network may). Workers send on the shared socket directly.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use toil_abi::stream::close_code;
use tokio::sync::{mpsc, watch};

use crate::keys::NodeKeys;
use crate::serve::Edge;
use crate::steering::{reuseport_program, worker_of_packet, WorkerCids, MAX_WORKERS};

/// How packets are steered to workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Steering {
    /// `SO_REUSEPORT` + a classic BPF program (Linux).
    Bpf,
    /// One socket and a dispatcher thread (any OS).
    Userspace,
}

impl Steering {
    /// The platform's best mode.
    pub fn default_for_platform() -> Steering {
        if cfg!(target_os = "linux") {
            Steering::Bpf
        } else {
            Steering::Userspace
        }
    }
}

/// The UDP side of a node before its workers start.
pub enum UdpGroup {
    /// One socket per worker, in worker (join) order.
    Bpf(Vec<std::net::UdpSocket>),
    Userspace(std::net::UdpSocket, usize),
}

impl UdpGroup {
    /// Binds `addr` for `workers` workers.
    pub fn bind(addr: SocketAddr, workers: usize, steering: Steering) -> io::Result<UdpGroup> {
        if workers == 0 || workers > MAX_WORKERS {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{workers} QUIC workers: must be 1..={MAX_WORKERS}")));
        }
        match steering {
            Steering::Userspace => Ok(UdpGroup::Userspace(std::net::UdpSocket::bind(addr)?, workers)),
            Steering::Bpf => {
                let mut sockets = Vec::with_capacity(workers);
                let mut bound = addr;
                for _ in 0..workers {
                    let s = socket2::Socket::new(socket2::Domain::for_address(bound), socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
                    s.set_reuse_port(true)?;
                    s.bind(&bound.into())?;
                    let s: std::net::UdpSocket = s.into();
                    bound = s.local_addr()?; // a port-0 bind fixes the port for the rest
                    sockets.push(s);
                }
                attach_program(&sockets[0], workers)?;
                Ok(UdpGroup::Bpf(sockets))
            }
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            UdpGroup::Bpf(s) => s[0].local_addr(),
            UdpGroup::Userspace(s, _) => s.local_addr(),
        }
    }

    pub fn workers(&self) -> usize {
        match self {
            UdpGroup::Bpf(s) => s.len(),
            UdpGroup::Userspace(_, n) => *n,
        }
    }
}

#[cfg(target_os = "linux")]
fn attach_program(socket: &std::net::UdpSocket, workers: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut filter: Vec<libc::sock_filter> =
        reuseport_program(workers).iter().map(|i| libc::sock_filter { code: i.code, jt: i.jt, jf: i.jf, k: i.k }).collect();
    let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_mut_ptr() };
    // SAFETY: `prog` points at `filter`, which outlives the call; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            &prog as *const libc::sock_fprog as *const libc::c_void,
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn attach_program(_: &std::net::UdpSocket, _: usize) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "BPF steering needs Linux; use userspace steering"))
}

/// Running workers. Dropping this does not stop them; call [`QuicWorkers::shutdown`].
pub struct QuicWorkers {
    stop: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl QuicWorkers {
    /// Starts the workers. Every group (one per address family, say) has
    /// the same number of workers; worker `i` serves socket `i` of each.
    pub fn start(groups: Vec<UdpGroup>, server: quinn::ServerConfig, keys: &NodeKeys, edge: Arc<Edge>) -> anyhow::Result<QuicWorkers> {
        let workers = groups.first().map_or(0, UdpGroup::workers);
        anyhow::ensure!(workers > 0 && groups.iter().all(|g| g.workers() == workers), "UDP groups must have the same number of workers");
        let (stop, stopped) = watch::channel(false);
        let mut endpoint_config = quinn::EndpointConfig::new(keys.reset_key());
        let cid_key = keys.cid_key();
        let mut threads = Vec::with_capacity(workers + groups.len());
        let mut per_worker: Vec<Vec<WorkerSocket>> = (0..workers).map(|_| Vec::new()).collect();
        for group in groups {
            let sockets: Vec<WorkerSocket> = match group {
                UdpGroup::Bpf(sockets) => sockets.into_iter().map(WorkerSocket::Own).collect(),
                UdpGroup::Userspace(socket, n) => {
                    let (senders, receivers): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::channel(1024)).unzip();
                    let shared = socket.try_clone()?;
                    threads.push(spawn_dispatcher(socket, senders, stopped.clone())?);
                    receivers.into_iter().map(|rx| Ok(WorkerSocket::Steered(shared.try_clone()?, rx))).collect::<io::Result<_>>()?
                }
            };
            for (worker, socket) in sockets.into_iter().enumerate() {
                per_worker[worker].push(socket);
            }
        }
        for (worker, sockets) in per_worker.into_iter().enumerate() {
            let key = cid_key.clone();
            endpoint_config.cid_generator(move || Box::new(WorkerCids::new(worker, key.clone())));
            let (config, server, edge, stopped) = (endpoint_config.clone(), server.clone(), edge.clone(), stopped.clone());
            let thread = std::thread::Builder::new()
                .name(format!("toil-quic-{worker}"))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("worker runtime");
                    rt.block_on(run_worker(worker, sockets, config, server, edge, stopped));
                })
                .context("spawning a QUIC worker")?;
            threads.push(thread);
        }
        tracing::info!(workers, "QUIC workers started");
        Ok(QuicWorkers { stop, threads })
    }

    /// Closes every connection with `SHUTDOWN` and waits up to `grace` for
    /// the workers to finish. Set the edge's `shutdown` flag first, so open
    /// sessions close gracefully (their boxes get `close`).
    pub fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(true);
        let deadline = std::time::Instant::now() + grace;
        for t in self.threads {
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

enum WorkerSocket {
    Own(std::net::UdpSocket),
    Steered(std::net::UdpSocket, mpsc::Receiver<(Vec<u8>, SocketAddr)>),
}

async fn run_worker(
    worker: usize,
    sockets: Vec<WorkerSocket>,
    config: quinn::EndpointConfig,
    server: quinn::ServerConfig,
    edge: Arc<Edge>,
    mut stopped: watch::Receiver<bool>,
) {
    let runtime = Arc::new(quinn::TokioRuntime);
    let mut endpoints = Vec::new();
    for socket in sockets {
        let endpoint = match socket {
            WorkerSocket::Own(s) => quinn::Endpoint::new(config.clone(), Some(server.clone()), s, runtime.clone()),
            WorkerSocket::Steered(s, inbox) => SteeredSocket::new(s, inbox)
                .and_then(|s| quinn::Endpoint::new_with_abstract_socket(config.clone(), Some(server.clone()), Arc::new(s), runtime.clone())),
        };
        match endpoint {
            Ok(e) => endpoints.push(e),
            Err(e) => return tracing::error!(worker, "QUIC worker could not start: {e}"),
        }
    }
    // A current-thread runtime: these tasks, and all they spawn, stay on this thread.
    let serving: Vec<_> = endpoints.iter().map(|e| tokio::spawn(crate::quic::serve(e.clone(), edge.clone(), Some(worker)))).collect();
    let _ = stopped.wait_for(|s| *s).await;
    // Sessions close themselves with SHUTDOWN when the edge's shutdown flag
    // is set; give their capsules a moment before the connections go.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while edge.sessions.open() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for e in &endpoints {
        e.close(close_code::SHUTDOWN.into(), b"node shutting down");
    }
    // Let the session drivers run their boxes' close hooks.
    for e in &endpoints {
        let _ = tokio::time::timeout(Duration::from_secs(2), e.wait_idle()).await;
    }
    serving.iter().for_each(|t| t.abort());
}

fn spawn_dispatcher(
    socket: std::net::UdpSocket,
    workers: Vec<mpsc::Sender<(Vec<u8>, SocketAddr)>>,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    socket.set_nonblocking(true)?;
    let thread = std::thread::Builder::new().name("toil-quic-dispatch".into()).spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("dispatcher runtime");
        rt.block_on(async move {
            let socket = tokio::net::UdpSocket::from_std(socket).expect("register dispatcher socket");
            let mut buf = vec![0u8; 65536];
            loop {
                tokio::select! {
                    r = socket.recv_from(&mut buf) => match r {
                        Ok((n, from)) => {
                            let w = worker_of_packet(&buf[..n], workers.len());
                            // A full queue drops the datagram, as a congested network would.
                            let _ = workers[w].try_send((buf[..n].to_vec(), from));
                        }
                        Err(e) => tracing::debug!("dispatcher receive failed: {e}"),
                    },
                    _ = stopped.wait_for(|s| *s) => return,
                }
            }
        });
    })?;
    Ok(thread)
}

/// A worker's view of the shared socket in userspace mode: datagrams come
/// from the dispatcher; sends go straight out on the socket.
struct SteeredSocket {
    io: tokio::net::UdpSocket,
    inbox: Mutex<mpsc::Receiver<(Vec<u8>, SocketAddr)>>,
}

impl SteeredSocket {
    fn new(socket: std::net::UdpSocket, inbox: mpsc::Receiver<(Vec<u8>, SocketAddr)>) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        Ok(SteeredSocket { io: tokio::net::UdpSocket::from_std(socket)?, inbox: Mutex::new(inbox) })
    }
}

impl fmt::Debug for SteeredSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SteeredSocket").field("local", &self.io.local_addr().ok()).finish()
    }
}

impl AsyncUdpSocket for SteeredSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(SendReady(self))
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        // One datagram per transmit: max_transmit_segments is 1.
        self.io.try_send_to(transmit.contents, transmit.destination).map(|_| ())
    }

    fn poll_recv(&self, cx: &mut Context, bufs: &mut [io::IoSliceMut<'_>], meta: &mut [RecvMeta]) -> Poll<io::Result<usize>> {
        let mut inbox = self.inbox.lock().expect("worker inbox");
        let mut filled = 0;
        while filled < bufs.len().min(meta.len()) {
            let next = if filled == 0 {
                match inbox.poll_recv(cx) {
                    Poll::Ready(Some(d)) => d,
                    Poll::Ready(None) => return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "dispatcher stopped"))),
                    Poll::Pending => return Poll::Pending,
                }
            } else {
                match inbox.try_recv() {
                    Ok(d) => d,
                    Err(_) => break,
                }
            };
            let (data, from) = next;
            let len = data.len().min(bufs[filled].len());
            bufs[filled][..len].copy_from_slice(&data[..len]);
            meta[filled] = RecvMeta { addr: from, len, stride: len, ecn: None, dst_ip: None };
            filled += 1;
        }
        Poll::Ready(Ok(filled))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }
}

#[derive(Debug)]
struct SendReady(Arc<SteeredSocket>);

impl UdpPoller for SendReady {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        self.0.io.poll_send_ready(cx)
    }
}
