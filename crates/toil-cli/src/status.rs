//! `toil status`: a node's view of its cluster (members, leader, daemon
//! owners, tick counters), read from its admin listener.

use std::net::SocketAddr;
use std::path::Path;

use toil_raft::ClusterStatus;

use crate::tick::admin_request;

pub fn run(config: &Path, admin: Option<SocketAddr>, json: bool) -> anyhow::Result<()> {
    let admin = match admin {
        Some(a) => a,
        None => toil_config::Config::load(config)?.dev.admin,
    };
    let (status, body) = admin_request(admin, http::Method::GET, "/cluster/status")?;
    anyhow::ensure!(status.is_success(), "{}", body.trim_end());
    if json {
        println!("{}", body.trim_end());
        return Ok(());
    }
    let s: ClusterStatus = serde_json::from_str(&body)?;
    print!("{}", render(&s));
    Ok(())
}

fn render(s: &ClusterStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let leader = s.leader.map_or("none known".to_string(), |l| format!("node {l}"));
    let _ = writeln!(out, "node {} ({}, term {}), leader: {leader}", s.node, s.role.to_lowercase(), s.term);
    let _ = writeln!(out, "\nmembers:\n  {:<4} {:<24} {:<7} last heard", "id", "address", "role");
    for m in &s.members {
        let heard = match (m.id == s.node, m.heard_ms_ago) {
            (true, _) => "this node".to_string(),
            (false, Some(ms)) => format!("{ms} ms ago"),
            (false, None) => "never".to_string(),
        };
        let _ = writeln!(out, "  {:<4} {:<24} {:<7} {heard}", m.id, m.addr, if m.voter { "voter" } else { "learner" });
    }
    let _ = writeln!(out, "\ndaemons:\n  {:<12} {:<8} {:<8}", "domain", "owner", "fencing");
    for (domain, owner) in &s.owners {
        let _ = writeln!(out, "  {:<12} {:<8} {:<8}", domain, format!("node {}", owner.node), owner.fencing);
    }
    let _ = writeln!(out, "\nticks:\n  {:<12} {:<12} {:>8} {:>8}  last claimed (Unix ms)", "domain", "task", "fired", "skipped");
    for t in &s.tasks {
        let name = t.name.clone().unwrap_or_else(|| format!("#{}", t.task));
        let last = t.record.last_claimed.map_or("-".to_string(), |l| l.to_string());
        let _ = writeln!(out, "  {:<12} {:<12} {:>8} {:>8}  {last}", t.domain, name, t.record.fired, t.record.skipped);
    }
    out
}
