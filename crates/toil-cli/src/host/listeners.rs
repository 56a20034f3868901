//! Binding a node's public port: TCP, and the QUIC workers' UDP sockets.

use std::net::SocketAddr;

use anyhow::Context;
use toil_config::QuicConfig;
use toil_edge::workers::{Steering, UdpGroup};

/// TCP listeners and QUIC worker sockets, all on one port.
pub struct Listeners {
    pub tcp: Vec<std::net::TcpListener>,
    pub udp: Vec<UdpGroup>,
    pub steering: Steering,
}

/// Binds TCP and the QUIC workers' UDP sockets on the same port (when the
/// port is 0, on the same free port). A 127.0.0.1 address also binds [::1]
/// when it can, as `localhost` means both: browsers try `*.localhost` over
/// IPv6 first, and WebTransport does not fall back to IPv4.
pub fn bind(addr: SocketAddr, quic: &QuicConfig) -> anyhow::Result<Listeners> {
    let steering = match quic.steering.as_deref() {
        Some("userspace") => Steering::Userspace,
        Some(_) => Steering::Bpf,
        None => Steering::default_for_platform(),
    };
    let bind_one = |addr: SocketAddr| -> anyhow::Result<(std::net::TcpListener, UdpGroup)> {
        let tcp = std::net::TcpListener::bind(addr).with_context(|| format!("binding TCP {addr}"))?;
        let group = UdpGroup::bind(tcp.local_addr()?, quic.workers, steering)
            .with_context(|| format!("binding UDP {} ({steering:?} steering)", tcp.local_addr().unwrap_or(addr)))?;
        tcp.set_nonblocking(true)?;
        Ok((tcp, group))
    };
    for attempt in 0.. {
        let (tcp, udp) = match bind_one(addr) {
            Ok(pair) => pair,
            Err(_) if addr.port() == 0 && attempt < 20 => continue,
            Err(e) => return Err(e),
        };
        let mut listeners = Listeners { tcp: vec![tcp], udp: vec![udp], steering };
        if addr.ip() == std::net::Ipv4Addr::LOCALHOST {
            let port = listeners.tcp[0].local_addr()?.port();
            match bind_one(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))) {
                Ok((tcp, udp)) => {
                    listeners.tcp.push(tcp);
                    listeners.udp.push(udp);
                }
                Err(e) if addr.port() == 0 && attempt < 20 => {
                    tracing::debug!("port {port} is taken on [::1] ({e:#}); trying another");
                    continue;
                }
                Err(e) => tracing::warn!("serving IPv4 loopback only: {e:#}"),
            }
        }
        return Ok(listeners);
    }
    unreachable!()
}
