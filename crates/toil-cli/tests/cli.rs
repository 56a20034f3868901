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

#[test]
fn build_refuses_a_directory_without_a_crate() {
    let dir = tempfile::tempdir().unwrap();
    let out = toil().arg("build").arg(dir.path()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no Cargo.toml"), "{err}");
}
