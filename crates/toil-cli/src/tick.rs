//! `toil tick DOMAIN TASK`: asks a running `toil dev` or `toil node` (its
//! admin listener, `dev.admin` in the config) to fire a daemon task now.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

pub fn run(config: &Path, admin: Option<SocketAddr>, domain: &str, task: &str) -> anyhow::Result<()> {
    let admin = match admin {
        Some(a) => a,
        None => toil_config::Config::load(config)?.dev.admin,
    };
    let (status, text) = admin_request(admin, http::Method::POST, &format!("/daemon/tick?domain={domain}&task={task}"))?;
    anyhow::ensure!(status.is_success(), "{}", text.trim_end());
    print!("{text}");
    Ok(())
}

/// One request to a node's admin listener; the status and the body as text.
pub fn admin_request(admin: SocketAddr, method: http::Method, path_and_query: &str) -> anyhow::Result<(http::StatusCode, String)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(admin)
            .await
            .with_context(|| format!("connecting to the admin listener at {admin}: is `toil dev` or `toil node` running?"))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let req =
            http::Request::builder().method(method).uri(path_and_query).header(http::header::HOST, admin.to_string()).body(Empty::<Bytes>::new())?;
        let resp = send.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    })
}
