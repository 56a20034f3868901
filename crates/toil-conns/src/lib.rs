//! TCP connection admission: how many connections a node and one client
//! address may hold, accept loops that survive running out of file
//! descriptors, and the timers that close connections that do nothing.
//!
//! Every TCP connection costs a file descriptor, and a process has a fixed
//! number of them (`RLIMIT_NOFILE`, often 1,024 soft). A client that opens
//! connections and never closes them would take them all: new requests,
//! the admin port and health checks would then fail to accept. So:
//!
//! - [`raise_fd_limit`] lifts the soft limit to the hard one at start;
//! - a [`ConnTable`] caps connections per node and per client address, and
//!   the node's cap leaves [`FD_RESERVE`] descriptors for everything else
//!   (the admin listener, QUIC sockets, artifact and log files);
//! - [`accept_loop`] backs off when `accept` fails (`EMFILE`, `ENFILE`)
//!   instead of spinning on a listener that stays readable;
//! - [`Activity`] records when a connection last had a request in flight,
//!   so a connection that serves nothing is closed.
//!
//! The edge's public and admin listeners use all of it; the cluster port
//! (`toil-raft`) caps its TLS handshakes with a table of its own. The
//! public table's [`FD_RESERVE`] leaves room for both of those tables.
//! A [`Throttle`] keeps a flood of refusals from flooding the log too.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

/// How long a connection may go without progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnTimeouts {
    /// Until a request head is complete: HTTP/1.1 counted from the
    /// connection's start or the previous response, HTTP/3 from the
    /// stream's start.
    pub header: Duration,
    /// A TCP or QUIC connection with no request in flight (a WebTransport
    /// session is one, for its life).
    pub idle: Duration,
}

/// File descriptors kept free of client connections: room for the admin
/// listener's and the cluster port's tables (128 each), QUIC sockets,
/// artifact, store and log files.
pub const FD_RESERVE: u64 = 512;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft
/// limit in force afterwards.
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not everywhere
pub fn raise_fd_limit() -> std::io::Result<u64> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: `lim` is a valid rlimit for the kernel to fill and read.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            // SAFETY: as above.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                lim = raised;
            }
        }
        Ok(lim.rlim_cur as u64)
    }
    #[cfg(not(unix))]
    Ok(u64::MAX)
}

/// Connection caps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    pub max_total: usize,
    pub max_per_ip: usize,
}

impl ConnLimits {
    /// `wanted`, lowered so that client connections leave [`FD_RESERVE`]
    /// of `fd_limit` descriptors free.
    pub fn within_fd_limit(wanted: ConnLimits, fd_limit: u64) -> ConnLimits {
        let room = fd_limit.saturating_sub(FD_RESERVE).max(1);
        let max_total = wanted.max_total.min(usize::try_from(room).unwrap_or(usize::MAX));
        ConnLimits { max_total, max_per_ip: wanted.max_per_ip.min(max_total) }
    }
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    NodeFull,
    AddressFull,
}

impl Refused {
    pub fn kind(self) -> &'static str {
        match self {
            Refused::NodeFull => "node_full",
            Refused::AddressFull => "address_full",
        }
    }
}

/// Open connections, in all and per client address.
#[derive(Debug)]
pub struct ConnTable {
    limits: ConnLimits,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; frees its place when dropped.
#[derive(Debug)]
pub struct ConnGuard {
    table: Arc<ConnTable>,
    ip: IpAddr,
}

impl ConnTable {
    pub fn new(limits: ConnLimits) -> Arc<Self> {
        Arc::new(ConnTable { limits, total: AtomicUsize::new(0), per_ip: Mutex::default() })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Admits a connection from `ip` if both caps allow it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnGuard, Refused> {
        let ip = client_key(ip);
        let mut per_ip = self.per_ip.lock().expect("connection table");
        if self.total.load(Ordering::Acquire) >= self.limits.max_total {
            return Err(Refused::NodeFull);
        }
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= self.limits.max_per_ip {
            return Err(Refused::AddressFull);
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::AcqRel);
        Ok(ConnGuard { table: self.clone(), ip })
    }
}

/// The address a client's connections are counted under: an IPv4 client
/// reaching a dual-stack socket is one client either way, and an IPv6
/// client is its /64, which one subscriber or host usually holds whole
/// (counting single addresses would give it 2^64 quotas).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        v4 => v4,
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut per_ip = self.table.per_ip.lock().expect("connection table");
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        self.table.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Accepts connections on `listener` forever, calling `serve` for each one
/// `table` admits (a refused connection is closed at once). When `accept`
/// fails (out of descriptors, say) it waits, doubling from 10 ms to 1 s:
/// the listener stays readable while the error lasts, so retrying at once
/// would spin.
pub async fn accept_loop<F, Fut>(listener: TcpListener, table: Arc<ConnTable>, name: &'static str, mut serve: F)
where
    F: FnMut(TcpStream, SocketAddr, ConnGuard) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut backoff = Duration::from_millis(10);
    let (failures, refusals) = (Throttle::new(WARN_EVERY), Throttle::new(WARN_EVERY));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff = Duration::from_millis(10);
                accepted
            }
            Err(e) => {
                if let Some(n) = failures.count() {
                    tracing::warn!(listener = name, "accept failed {n} times since the last warning: {e}; backing off {backoff:?}");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        match table.admit(peer.ip()) {
            Ok(guard) => {
                tokio::spawn(serve(stream, peer, guard));
            }
            Err(why) => {
                tracing::debug!(listener = name, %peer, reason = why.kind(), "connection refused: over the connection cap");
                if let Some(n) = refusals.count() {
                    let l = table.limits;
                    tracing::warn!(
                        listener = name,
                        %peer,
                        reason = why.kind(),
                        "refused {n} connections over the cap ({} in all, {} per address) since the last warning",
                        l.max_total,
                        l.max_per_ip
                    );
                }
                drop(stream);
            }
        }
    }
}

/// How often a repeated warning may be logged.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// Counts events of one kind and says when to warn about them: at most
/// once per period, with how many there were since the last warning (so a
/// flood's tail is reported with the next event after a quiet period).
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    /// When the last warning was due, and events counted since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub const fn new(every: Duration) -> Self {
        Throttle { every, state: Mutex::new((None, 0)) }
    }

    /// Counts one event; `Some(n)` when a warning is due, `n` counting this
    /// event and those not warned about since the last warning.
    pub fn count(&self) -> Option<u64> {
        let mut state = self.state.lock().expect("throttle");
        state.1 += 1;
        if state.0.is_some_and(|at| at.elapsed() < self.every) {
            return None;
        }
        state.0 = Some(Instant::now());
        Some(std::mem::take(&mut state.1))
    }
}

/// When a connection last started or finished a request, and how many it
/// has in flight. Bytes do not count: an HTTP/2 or QUIC client could keep a
/// connection that serves nothing alive with PINGs alone.
#[derive(Debug)]
pub struct Activity {
    born: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity { born: Instant::now(), last_ms: AtomicU64::new(0), in_flight: AtomicUsize::new(0) })
    }

    fn touch(&self) {
        self.last_ms.store(self.born.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Marks a request in flight until the guard drops.
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// How long the connection has been idle (zero while a request is in flight).
    pub fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        self.born.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }

    /// Resolves once the connection has been idle for `timeout`.
    pub async fn idle_timeout(&self, timeout: Duration) {
        loop {
            let idle = self.idle_for();
            if idle >= timeout {
                return;
            }
            tokio::time::sleep(timeout - idle).await;
        }
    }
}

/// A request in flight on a connection.
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_node_and_per_address() {
        let table = ConnTable::new(ConnLimits { max_total: 3, max_per_ip: 2 });
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap());
        let a1 = table.admit(a).unwrap();
        let _a2 = table.admit(a).unwrap();
        assert_eq!(table.admit(a).unwrap_err(), Refused::AddressFull);
        // The same client over a dual-stack socket is the same address.
        assert_eq!(table.admit("::ffff:10.0.0.1".parse().unwrap()).unwrap_err(), Refused::AddressFull);
        // An IPv6 client is its /64.
        let v6 = ConnTable::new(ConnLimits { max_total: 10, max_per_ip: 2 });
        let _x = v6.admit("2001:db8:1:2::1".parse().unwrap()).unwrap();
        let _y = v6.admit("2001:db8:1:2:ffff::9".parse().unwrap()).unwrap();
        assert_eq!(v6.admit("2001:db8:1:2::3".parse().unwrap()).unwrap_err(), Refused::AddressFull);
        assert!(v6.admit("2001:db8:1:3::1".parse().unwrap()).is_ok(), "another /64 is another client");
        let _b1 = table.admit(b).unwrap();
        assert_eq!(table.admit(c).unwrap_err(), Refused::NodeFull);
        drop(a1);
        assert_eq!(table.open(), 2);
        let _c1 = table.admit(c).unwrap();
        assert_eq!(table.per_ip.lock().unwrap().len(), 3);
    }

    #[test]
    fn the_node_cap_leaves_a_reserve_of_descriptors() {
        let wanted = ConnLimits { max_total: 10_000, max_per_ip: 5_000 };
        assert_eq!(ConnLimits::within_fd_limit(wanted, 1024), ConnLimits { max_total: 512, max_per_ip: 512 });
        assert_eq!(ConnLimits::within_fd_limit(wanted, 1 << 20), wanted);
        assert_eq!(ConnLimits::within_fd_limit(wanted, 10).max_total, 1);
    }

    #[test]
    fn a_throttle_warns_once_per_period_with_the_count() {
        let t = Throttle::new(Duration::from_millis(200));
        assert_eq!(t.count(), Some(1));
        assert_eq!((t.count(), t.count()), (None, None));
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(t.count(), Some(3));
    }

    #[test]
    fn a_connection_with_a_request_in_flight_is_not_idle() {
        let activity = Activity::new();
        let req = activity.request();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(activity.idle_for(), Duration::ZERO);
        drop(req);
        assert!(activity.idle_for() < Duration::from_millis(5), "the request's end counts as activity");
    }
}
