//! End to end, as a new user: `toil new` in a directory outside the
//! repository, for every combination of tiers; `toil build`; `toil dev` from
//! inside the new directory with no edits; then the scaffolded route
//! answers, the stream echoes over WebTransport, and the task fires with
//! `toil tick`. And what `toil new` refuses, writing nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use common::*;

/// A scratch directory outside the repository.
fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("toil-new-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    assert!(!dir.starts_with(repo_root()), "{} is inside the repository", dir.display());
    dir
}

/// `toil dev` serving the app in `dir`, as a user starts it there.
struct Dev {
    child: Child,
    http: std::net::SocketAddr,
    admin: String,
    cert_sha256: String,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dev(dir: &Path) -> Dev {
    let mut child = toil()
        .args(["dev", "--no-build", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--stop-on-stdin-eof"])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("dev.log")).unwrap())
        .spawn()
        .unwrap();
    let field = wait_listening(&mut child, &dir.join("dev.log"));
    Dev { http: field("http").parse().unwrap(), admin: field("admin"), cert_sha256: field("cert-sha256"), child }
}

#[tokio::test]
async fn every_tier_combination_builds_serves_and_answers() {
    let root = scratch("apps");
    let target = repo_root().join("target/guest");
    let combinations: [&[&str]; 7] =
        [&["--request"], &["--stream"], &["--daemon"], &["--request", "--stream"], &["--request", "--daemon"], &["--stream", "--daemon"], &[]];
    for flags in combinations {
        let (request, stream, daemon) = (
            flags.is_empty() || flags.contains(&"--request"),
            flags.is_empty() || flags.contains(&"--stream"),
            flags.is_empty() || flags.contains(&"--daemon"),
        );
        let name = format!("app{}{}{}", if request { "-r" } else { "" }, if stream { "-s" } else { "" }, if daemon { "-d" } else { "" });
        let what = format!("toil new {name} {}", flags.join(" "));
        let out = toil().arg("new").arg(&name).args(flags).current_dir(&root).output().unwrap();
        assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
        let dir = root.join(&name);
        for file in ["Cargo.toml", "src/lib.rs", "toilconfig.json", ".gitignore"] {
            assert!(dir.join(file).is_file(), "{what}: no {file}");
        }
        let out = toil().arg("build").arg("--target-dir").arg(&target).current_dir(&dir).output().unwrap();
        assert!(out.status.success(), "{what}: toil build failed: {}", String::from_utf8_lossy(&out.stderr));

        let d = dev(&dir);
        let host = format!("{name}.localhost");
        let r = http1(d.http, get(&host, "/")).await;
        if request {
            assert_eq!((r.status, r.text()), (200, format!("Hello from {name}!\n")), "{what}");
            let page = http1(d.http, get(&host, "/stream")).await;
            assert_eq!(
                page.status == 200 && page.text().contains("new WebTransport("),
                stream,
                "{what}: the stream page is there with the stream tier only"
            );
        } else {
            assert_eq!(r.status, 404, "{what}: a route without the request tier");
        }

        let session = wt_endpoint_pinned(&d.cert_sha256, d.http).connect(format!("https://{host}:{}/echo", d.http.port())).await;
        match (stream, session) {
            (true, Ok(conn)) => {
                let mut frames = Frames::open(&conn).await;
                for text in ["ping", "pong"] {
                    frames.send(text.as_bytes()).await;
                    assert_eq!(frames.recv_text().await, text, "{what}: the echo");
                }
            }
            (true, Err(e)) => panic!("{what}: the stream did not open: {e}"),
            (false, session) => assert!(session.is_err(), "{what}: a stream without the stream tier"),
        }

        let out = toil().args(["tick", &name, "every_ten_seconds", "--admin", &d.admin]).current_dir(&dir).output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        if daemon {
            assert!(out.status.success() && said.contains(&format!("fired {name} every_ten_seconds")), "{what}: toil tick: {said}");
        } else {
            assert!(!out.status.success(), "{what}: a tick without the daemon tier: {said}");
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn refusals_name_the_cause_and_write_nothing() {
    let root = scratch("refusals");
    let new = |args: &[&str]| {
        let out = toil().arg("new").args(args).current_dir(&root).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let entries = || std::fs::read_dir(&root).unwrap().count();

    std::fs::create_dir(root.join("taken")).unwrap();
    std::fs::write(root.join("taken/notes.txt"), "mine").unwrap();
    let (ok, err) = new(&["taken"]);
    assert!(!ok && err.contains("is not an empty directory"), "{err}");
    assert_eq!(std::fs::read_dir(root.join("taken")).unwrap().count(), 1, "nothing written into it");

    for bad in ["My_App", "1app", "app.example", "app-", "toil"] {
        let (ok, err) = new(&[bad]);
        assert!(!ok && (err.contains("not a usable app name") || err.contains("a crate the app depends on")), "{bad}: {err}");
    }
    let (ok, err) = new(&["fine", "--websocket"]);
    assert!(!ok && err.contains("--websocket"), "{err}");
    let (ok, err) = new(&["fine", "--sdk", "/nowhere"]);
    assert!(!ok && err.contains("the guest SDK is not at /nowhere"), "{err}");
    assert_eq!(entries(), 1, "only the directory made by the test");

    // An empty directory is fine.
    std::fs::create_dir(root.join("empty")).unwrap();
    let (ok, err) = new(&["empty", "--request"]);
    assert!(ok, "{err}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn version_names_the_guest_abi() {
    let out = toil().arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim(), format!("toil {} (guest ABI v{})", env!("CARGO_PKG_VERSION"), toil_abi::ABI_VERSION));
}
