//! `toil dev` hot reload: an edit of a guest's source is rebuilt and
//! swapped in through the deploy path; open stream sessions close with
//! RELOADED; a broken edit keeps the old version serving and shows the
//! compiler's error. Also: the admin API speaks TLS off loopback.

mod common;

use std::time::{Duration, Instant};

use common::{get_blocking, repo_root, set_label, start_server, toil, versioned_copy, wt_endpoint_for, Frames};

const HOST: &str = "versioned.localhost";

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn dev_reloads_an_edited_app_and_keeps_serving_through_a_broken_edit() {
    let dir = repo_root().join("target/e2e").join(format!("reload-{}", std::process::id()));
    let app = versioned_copy(&dir.join("src"), "app", "A");
    // The admin listener on all interfaces: it must speak TLS.
    let s = start_server(
        "reload",
        serde_json::json!({
            "apps": [{"domain": "versioned", "dir": app}],
            "defaultDomain": "versioned",
            // Default limits: the session must outlive a rebuild without traffic.
            "limits": {},
            "dev": {"listen": "127.0.0.1:0", "admin": "0.0.0.0:0", "certDir": dir.join("cert")},
        }),
    );
    let version = || get_blocking(s.http, HOST, "/version").map(|(_, body)| body);
    assert_eq!(version().as_deref(), Some("A"));

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (conn, mut frames) = rt.block_on(async {
        let conn = wt_endpoint_for(&s, s.http).connect(format!("https://{HOST}:{}/count", s.http.port())).await.unwrap();
        let mut frames = Frames::open(&conn).await;
        frames.send(b"x").await;
        assert_eq!(frames.recv_text().await, "A:1");
        (conn, frames)
    });

    // An edit is rebuilt and served; the open session is closed with RELOADED.
    set_label(&app, "B");
    wait_until("version B to serve", Duration::from_secs(180), || version().as_deref() == Some("B"));
    rt.block_on(async {
        let (code, reason) = common::closed(&conn).await.expect("closed by the reload");
        assert_eq!(code, toil_abi::stream::close_code::RELOADED as u64);
        assert_eq!(reason, "versioned was reloaded (version 2)");
        assert!(frames.recv().await.is_none());
    });
    let log = s.log();
    let line = log.lines().find(|l| l.contains("reload: versioned version 2 serving")).expect("the reload is reported");
    eprintln!("{line}");

    // A broken edit: the compiler's error is shown and B keeps serving.
    let src = app.join("src/lib.rs");
    let good = std::fs::read_to_string(&src).unwrap();
    std::fs::write(&src, good.replace("const LABEL: &str = \"B\";", "const LABEL: &str = \"C\"\nfn broken() {}")).unwrap();
    wait_until("the failed build to be reported", Duration::from_secs(180), || {
        s.log().contains("reload: versioned did not build; the previous version keeps serving")
    });
    let log = s.log();
    assert!(log.contains("error: expected `;`"), "the compiler's error is in the dev log:\n{log}");
    assert_eq!(version().as_deref(), Some("B"));

    // Fixed: C serves.
    set_label(&app, "C");
    wait_until("version C to serve", Duration::from_secs(180), || version().as_deref() == Some("C"));

    // The admin API off loopback: TLS with the node's certificate, pinned by hash.
    let port = s.admin.port().to_string();
    let status = |scheme: &str| {
        toil()
            .args(["status", "--admin", &format!("{scheme}://127.0.0.1:{port}"), "--cert-sha256", &s.cert_sha256, "--token-file"])
            .arg(&s.token_file)
            .output()
            .unwrap()
    };
    let out = status("https");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("versioned    v3"), "{text}");
    assert!(!status("http").status.success(), "plain HTTP is refused off loopback");
    let wrong_pin = toil()
        .args(["status", "--admin", &format!("https://127.0.0.1:{port}"), "--cert-sha256", &"0".repeat(64), "--token-file"])
        .arg(&s.token_file)
        .output()
        .unwrap();
    assert!(!wrong_pin.status.success(), "a certificate other than the pinned one is refused");
}
