//! The `toil` command's handling of bad input that never reaches a guest.

mod common;

use common::toil;

fn dev_with_config(json: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("toilconfig.json");
    std::fs::write(&file, json).unwrap();
    let out = toil().args(["dev", "--no-build", "--config"]).arg(&file).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_config_names_the_key_and_exits_nonzero() {
    let (ok, err) = dev_with_config(r#"{"apps": [], "limits": {"deadlineMs": "soon"}}"#);
    assert!(!ok);
    assert!(err.contains("`apps`: lists no app"), "{err}");

    let hello = common::repo_root().join("examples/hello");
    let cfg = format!(r#"{{"apps": [{{"domain": "hello", "dir": {hello:?}}}], "limits": {{"deadlineMs": "soon"}}}}"#);
    let (ok, err) = dev_with_config(&cfg);
    assert!(!ok);
    assert!(err.contains("`limits.deadlineMs`: expected a positive integer, found \"soon\""), "{err}");

    let cfg = format!(r#"{{"apps": [{{"domain": "hello", "dir": {hello:?}}}], "dev": {{"listen": "localhost"}}}}"#);
    let (ok, err) = dev_with_config(&cfg);
    assert!(!ok);
    assert!(err.contains("`dev.listen`"), "{err}");

    let (ok, err) = dev_with_config("{ not json");
    assert!(!ok);
    assert!(err.contains("not valid JSON"), "{err}");
}

/// Values that overflow or cannot be honoured are refused naming the key,
/// before anything is built or reserved; causes are said once.
#[test]
fn config_edges_are_refused_with_the_key() {
    let hello = common::repo_root().join("examples/hello");
    let with_limits = |limits: &str| format!(r#"{{"apps": [{{"domain": "hello", "dir": {hello:?}}}], "limits": {limits}}}"#);
    for (limits, key, says) in [
        (r#"{"idleTimeoutMs": 4611686018427387904}"#, "limits.idleTimeoutMs", "ceiling"),
        (r#"{"maxInstances": 40000}"#, "limits.maxInstances", "at most 16131"),
        (r#"{"maxResponseHeaders": 40000}"#, "limits.maxResponseHeaders", "ceiling"),
        (r#"{"deadlineMs": 5, "deadlineMs": 6}"#, "deadlineMs", "appears twice"),
    ] {
        let (ok, err) = dev_with_config(&with_limits(limits));
        assert!(!ok, "{limits}");
        assert!(err.contains(key) && err.contains(says), "{limits}: {err}");
    }
    let (ok, err) = dev_with_config(r#"{"apps": [],}"#);
    assert!(!ok);
    assert_eq!(err.matches("trailing comma").count(), 1, "the cause is said once: {err}");

    // A certificate directory that cannot be made names its path.
    common::build_guest(&hello);
    let cfg = format!(r#"{{"apps": [{{"domain": "hello", "dir": {hello:?}}}], "dev": {{"certDir": "/proc/toil-cannot-be-here/cert"}}}}"#);
    let (ok, err) = dev_with_config(&cfg);
    assert!(!ok);
    assert!(err.contains("/proc/toil-cannot-be-here/"), "{err}");
}

#[test]
fn build_refuses_a_directory_without_a_crate() {
    let dir = tempfile::tempdir().unwrap();
    let out = toil().arg("build").arg(dir.path()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no Cargo.toml"), "{err}");
}
