//! `toil tick DOMAIN TASK`: asks a running `toil dev` (its admin listener,
//! `dev.admin` in the config) to fire a daemon task now.

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
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (status, text) = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(admin)
            .await
            .with_context(|| format!("connecting to the admin listener at {admin}: is `toil dev` running?"))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let req = http::Request::post(format!("/daemon/tick?domain={domain}&task={task}"))
            .header(http::header::HOST, admin.to_string())
            .body(Empty::<Bytes>::new())?;
        let resp = send.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    })?;
    anyhow::ensure!(status.is_success(), "{}", text.trim_end());
    print!("{text}");
    Ok(())
}
