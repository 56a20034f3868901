//! `toil status`: a node's view of its cluster (members, leader, daemon
//! owners, tick counters), read from its admin listener.

use toil_raft::ClusterStatus;

use crate::admin_client::{AdminArgs, AdminClient};

pub fn run(admin: &AdminArgs, json: bool) -> anyhow::Result<()> {
    let (status, body) = AdminClient::new(admin)?.request_blocking(http::Method::GET, "/cluster/status", Vec::new())?;
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
    let _ = writeln!(out, "\ndomains:\n  {:<12} {:<8} {:<20} {:<24} history", "domain", "version", "deployed", "served by");
    for (domain, history) in &s.releases {
        let Some(active) = history.active() else { continue };
        let deployed = format!("{} ({})", age(active.spec.deployed_at_ms), active.spec.source);
        let served_by: Vec<String> = s
            .members
            .iter()
            .map(|m| match s.served.get(&m.id).and_then(|d| d.get(domain)) {
                Some(v) if *v == active.version => format!("{}", m.id),
                Some(v) => format!("{}:v{v}", m.id),
                None => format!("{}:-", m.id),
            })
            .collect();
        let versions: Vec<String> = history.releases.iter().rev().take(5).map(|r| format!("v{}", r.version)).collect();
        let _ = writeln!(
            out,
            "  {:<12} {:<8} {:<20} {:<24} {}",
            domain,
            format!("v{}", active.version),
            deployed,
            served_by.join(" "),
            versions.join(" ")
        );
    }
    let _ = writeln!(out, "\ndaemons:\n  {:<12} {:<8} {:<8}", "domain", "owner", "fencing");
    for (domain, owner) in &s.owners {
        let _ = writeln!(out, "  {:<12} {:<8} {:<8}", domain, format!("node {}", owner.node), owner.fencing);
    }
    let _ = writeln!(
        out,
        "\nticks (claimed: allowed to run; ran, failed, dropped: as reported after):\n  {:<12} {:<12} {:>8} {:>8} {:>8} {:>8} {:>8}  last claimed (Unix ms)",
        "domain", "task", "claimed", "ran", "failed", "dropped", "skipped"
    );
    for t in &s.tasks {
        let name = &t.name;
        let last = t.record.last_claimed.map_or("-".to_string(), |l| l.to_string());
        let r = &t.record;
        let _ =
            writeln!(out, "  {:<12} {:<12} {:>8} {:>8} {:>8} {:>8} {:>8}  {last}", t.domain, name, r.claimed, r.ran, r.failed, r.dropped, r.skipped);
    }
    out
}

/// "12 s ago" for a Unix-ms time.
fn age(unix_ms: i64) -> String {
    let ms = (toil_cluster::now_ms() - unix_ms).max(0);
    match ms / 1000 {
        s if s < 120 => format!("{s} s ago"),
        s if s < 7200 => format!("{} min ago", s / 60),
        s if s < 172_800 => format!("{} h ago", s / 3600),
        s => format!("{} days ago", s / 86400),
    }
}
