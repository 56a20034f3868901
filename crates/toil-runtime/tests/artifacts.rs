//! Every class of bad artifact is refused before any guest code runs, with
//! an error naming the cause; and the runtime contains faulting guests.

use toil_abi::manifest::{encode_route, header_record, HEADER};
use toil_abi::{Tier, ABI_VERSION};
use toil_metrics::Registry;
use toil_runtime::artifact::inspect;
use toil_runtime::request::{GuestRequest, Outcome, RequestApp};
use toil_runtime::{GuestFault, Limits, LoadError, Runtime, RuntimeConfig};

mod support;

use support::manifest_section;

fn request_manifest() -> Vec<u8> {
    let mut m = header_record(Tier::Request).to_vec();
    encode_route(&mut m, "GET", "/");
    m
}

/// A request-tier module whose `handle` runs `body` (WAT instructions).
fn module(manifest: &[u8], extra: &str, body: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
            (import "toil" "output_write" (func $out (param i32 i32) (result i32)))
            {extra}
            (memory (export "memory") 1)
            ;; status 200, no headers, body "hi"
            (data (i32.const 0) "\c8\00\00\00\00\00\02\00\00\00hi")
            (func (export "handle") (param i32) (result i32) {body})
            {section})"#,
        section = manifest_section(manifest),
    ))
    .unwrap()
}

const REPLY: &str = "(drop (call $out (i32.const 0) (i32.const 12))) (i32.const 0)";

fn err(bytes: &[u8], tier: Tier) -> LoadError {
    inspect(bytes, tier, 1 << 20).expect_err("artifact must be refused")
}

#[test]
fn a_valid_module_passes() {
    let info = inspect(&module(&request_manifest(), "", REPLY), Tier::Request, 1 << 20).unwrap();
    assert_eq!(info.manifest.routes[0].pattern, "/");
}

#[test]
fn malformed_wasm() {
    let e = err(b"\0asm\x01\0\0\0\x99garbage", Tier::Request);
    assert!(matches!(e, LoadError::Malformed(_)), "{e}");
    assert!(e.to_string().starts_with("not a valid wasm module"), "{e}");
    assert!(matches!(err(b"hello world", Tier::Request), LoadError::Malformed(_)));
}

#[test]
fn missing_manifest() {
    let m = wat::parse_str(r#"(module (memory (export "memory") 1) (func (export "handle") (param i32) (result i32) i32.const 0))"#).unwrap();
    assert!(matches!(err(&m, Tier::Request), LoadError::MissingManifest));
}

#[test]
fn abi_version_mismatch() {
    let mut m = request_manifest();
    m[5..9].copy_from_slice(&(ABI_VERSION + 1).to_le_bytes());
    let e = err(&module(&m, "", REPLY), Tier::Request);
    assert!(matches!(e, LoadError::AbiVersion { found } if found == ABI_VERSION + 1), "{e}");
    assert!(e.to_string().contains("ABI v2"), "{e}");
}

#[test]
fn wrong_tier_and_foreign_exports() {
    // Declared as a stream artifact, loaded as request.
    let mut m = header_record(Tier::Stream).to_vec();
    toil_abi::manifest::encode_stream(&mut m, "echo");
    let e = err(&module(&m, "", REPLY), Tier::Request);
    assert!(matches!(e, LoadError::WrongTier { found: Tier::Stream, expected: Tier::Request }), "{e}");
    // A request artifact that also exports another tier's entry point.
    let extra = r#"(func (export "stream_dispatch") (param i32 i32) (result i32) i32.const 0)"#;
    let e = err(&module(&request_manifest(), extra, REPLY), Tier::Request);
    assert!(matches!(&e, LoadError::ForeignExport { export, .. } if export == "stream_dispatch"), "{e}");
}

#[test]
fn missing_or_mistyped_exports() {
    let m = wat::parse_str(format!(r#"(module (memory (export "memory") 1) {})"#, manifest_section(&request_manifest()))).unwrap();
    let e = err(&m, Tier::Request);
    assert!(matches!(e, LoadError::MissingExport { export: "handle", .. }), "{e}");
    let m = wat::parse_str(format!(
        r#"(module (memory (export "memory") 1) (func (export "handle") (result i32) i32.const 0) {})"#,
        manifest_section(&request_manifest())
    ))
    .unwrap();
    assert!(matches!(err(&m, Tier::Request), LoadError::ExportSignature { export: "handle", .. }));
    let m = wat::parse_str(format!(
        r#"(module (func (export "handle") (param i32) (result i32) i32.const 0) {})"#,
        manifest_section(&request_manifest())
    ))
    .unwrap();
    assert!(matches!(err(&m, Tier::Request), LoadError::MissingExport { export: "memory", .. }));
}

#[test]
fn disallowed_imports() {
    let extra = r#"(import "env" "socket" (func (param i32) (result i32)))"#;
    let e = err(&module(&request_manifest(), extra, REPLY), Tier::Request);
    assert!(matches!(&e, LoadError::DisallowedImport { module, name, .. } if module == "env" && name == "socket"), "{e}");
    // Stream-tier host functions are not provided to the request tier.
    let extra = r#"(import "toil" "stream_send" (func (param i32 i32 i32) (result i32)))"#;
    assert!(matches!(err(&module(&request_manifest(), extra, REPLY), Tier::Request), LoadError::DisallowedImport { .. }));
}

#[test]
fn invalid_declarations() {
    let mut m = header_record(Tier::Request).to_vec();
    encode_route(&mut m, "GET", "no-slash");
    let e = err(&module(&m, "", REPLY), Tier::Request);
    assert!(matches!(e, LoadError::InvalidRoute { .. }), "{e}");
    let e = err(&module(&header_record(Tier::Request), "", REPLY), Tier::Request);
    assert!(matches!(e, LoadError::EmptyManifest { what: "route" }), "{e}");
    let mut dup = request_manifest();
    dup.extend_from_slice(&[HEADER, 5, 0, 0, 0, 1, 0, 0, 0, 1]);
    assert!(matches!(err(&module(&dup, "", REPLY), Tier::Request), LoadError::Manifest(_)));
    assert!(matches!(inspect(&module(&request_manifest(), "", REPLY), Tier::Request, 10), Err(LoadError::TooLarge { .. })));
}

/// A daemon-tier module declaring one task with `schedule`.
fn daemon(schedule: &str) -> Vec<u8> {
    let mut m = header_record(Tier::Daemon).to_vec();
    toil_abi::manifest::encode_task(&mut m, 0, "cleanup", schedule);
    wat::parse_str(format!(
        r#"(module
            (memory (export "memory") 1)
            (func (export "daemon_start") (param i32) (result i32) (i32.const 0))
            (func (export "scheduled_tick") (param i32 i64) (result i32) (i32.const 0))
            {})"#,
        manifest_section(&m)
    ))
    .unwrap()
}

#[test]
fn invalid_schedules_name_the_task_and_expression() {
    for ok in ["5s", "1h", "0 * * * *", "0 0 * * * *", "0 0 0 1 1 * 2099"] {
        inspect(&daemon(ok), Tier::Daemon, 1 << 20).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for bad in ["every now and then", "100ms", "61 * * * *", "0 9 * * 9"] {
        let e = err(&daemon(bad), Tier::Daemon);
        assert!(matches!(&e, LoadError::InvalidSchedule { task, expr, .. } if task == "cleanup" && expr == bad), "{bad}: {e}");
        assert!(e.to_string().contains(&format!("task \"cleanup\" with an invalid schedule {bad:?}")), "{e}");
    }
}

fn app(body: &str, limits: Limits) -> RequestApp {
    let rt = Runtime::new(support::config(limits, 8)).unwrap();
    RequestApp::load(&rt, &Registry::new(), "t", &module(&request_manifest(), "", body)).unwrap()
}

fn get() -> GuestRequest<'static> {
    GuestRequest { method: "GET", path: "/", query: "", headers: vec![], body: b"" }
}

#[tokio::test]
async fn faults_are_classified_and_contained() {
    let limits = Limits { memory_bytes: 2 << 16, ..support::limits(20) };
    match app(REPLY, limits.clone()).handle(&get()).await {
        Outcome::Response(r) => assert_eq!((r.status(), &r.body()[..]), (200, &b"hi"[..])),
        other => panic!("{other:?}"),
    }
    let cases = [
        ("unreachable", "trap"),
        ("(loop (br 0)) (i32.const 0)", "deadline"),
        ("(drop (memory.grow (i32.const 10))) (i32.const 0)", "memory"),
        ("(i32.const 7)", "abi"),
    ];
    for (body, kind) in cases {
        let a = app(body, limits.clone());
        for _ in 0..2 {
            match a.handle(&get()).await {
                Outcome::Fault(f) => assert_eq!(f.kind(), kind, "{body}: {f}"),
                other => panic!("{body}: expected a {kind} fault, got {other:?}"),
            }
        }
    }
    let a = app("(drop (memory.grow (i32.const 10))) (i32.const 0)", limits);
    assert!(matches!(a.handle(&get()).await, Outcome::Fault(GuestFault::Memory { limit }) if limit == 2 << 16));
}

/// The epoch ticker sleeps while no guest call runs: a runaway guest that
/// starts after a quiet spell must still wake it and end at its deadline.
#[test]
fn a_runaway_guest_after_a_quiet_spell_ends_at_the_deadline() {
    let a = std::sync::Arc::new(app("(loop (br 0)) (i32.const 0)", support::limits(20)));
    for _ in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(50)); // the ticker parks
                                                                  // Not interrupted, the guest would hold its thread forever (and a
                                                                  // tokio timer on a runtime it shares would never fire): the call
                                                                  // runs on a thread of its own, watched from this one.
        let (done, outcome) = std::sync::mpsc::channel();
        let a = a.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let _ = done.send(rt.block_on(a.handle(&get())));
        });
        match outcome.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(Outcome::Fault(f)) => assert_eq!(f.kind(), "deadline", "{f}"),
            Ok(other) => panic!("expected a deadline fault, got {other:?}"),
            Err(_) => panic!("the runaway guest was never interrupted"),
        }
    }
}

#[test]
fn invalid_stream_names() {
    let stream = |names: &[&str]| {
        let mut m = header_record(Tier::Stream).to_vec();
        names.iter().for_each(|n| toil_abi::manifest::encode_stream(&mut m, n));
        wat::parse_str(format!(
            r#"(module
                (memory (export "memory") 1)
                (func (export "stream_dispatch") (param i32 i32) (result i32) (i32.const 0))
                {})"#,
            manifest_section(&m)
        ))
        .unwrap()
    };
    inspect(&stream(&["echo", "chat-v2", "a.b_c~d"]), Tier::Stream, 1 << 20).unwrap();
    for (names, bad, why) in [
        (&["ok", ""][..], "", "1 to 64"),
        (&["a/b"], "a/b", "'/'"),
        (&[".."], "..", "relative"),
        (&["chat", "chat"], "chat", "twice"),
        (&["caf\u{e9}"], "caf\u{e9}", "one path segment"),
    ] {
        let e = err(&stream(names), Tier::Stream);
        assert!(matches!(&e, LoadError::InvalidStream { name, .. } if name == bad), "{names:?}: {e}");
        assert!(e.to_string().contains(why), "{names:?}: {e}");
    }
}

/// `handle` blocks in WASI `poll_oneoff` on a 5 s monotonic clock: the
/// guest runs no wasm while it waits, so only the call's timer can end it.
const SLEEP_5S: &str = r#"
    (i64.store (i32.const 1024) (i64.const 0))
    (i32.store8 (i32.const 1032) (i32.const 0))
    (i32.store (i32.const 1040) (i32.const 1))
    (i64.store (i32.const 1048) (i64.const 5000000000))
    (i64.store (i32.const 1056) (i64.const 0))
    (i32.store16 (i32.const 1064) (i32.const 0))
    (drop (call $poll (i32.const 1024) (i32.const 1104) (i32.const 1) (i32.const 1200)))
    (drop (call $out (i32.const 0) (i32.const 12))) (i32.const 0)"#;
const POLL_IMPORT: &str = r#"(import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))"#;

fn sleeper(config: RuntimeConfig) -> RequestApp {
    sleeper_on(&Runtime::new(config).unwrap())
}

fn sleeper_on(rt: &Runtime) -> RequestApp {
    RequestApp::load(rt, &Registry::new(), "t", &module(&request_manifest(), POLL_IMPORT, SLEEP_5S)).unwrap()
}

/// `n` requests to `app` at once, each on a task of its own.
async fn at_once(app: &std::sync::Arc<RequestApp>, n: usize) -> Vec<Outcome> {
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..n {
        let app = app.clone();
        calls.spawn(async move { app.handle(&get()).await });
    }
    calls.join_all().await
}

/// Requests may use every instance no open session holds (the node's
/// budget, which sessions share), and no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_use_every_instance_sessions_leave() {
    use toil_runtime::admission::{AdmissionLimits, Busy};
    let admission = AdmissionLimits { max_running: 10, max_waiting: 0, max_wait: std::time::Duration::from_millis(10) };
    let rt = Runtime::new(RuntimeConfig { admission, ..support::config(support::limits(1000), 4) }).unwrap();
    let app = std::sync::Arc::new(sleeper_on(&rt));
    let count = |outcomes: &[Outcome], busy: bool| {
        let matching =
            |o: &&Outcome| if busy { matches!(o, Outcome::Busy(Busy::NodeFull)) } else { matches!(o, Outcome::Fault(GuestFault::Deadline(_))) };
        outcomes.iter().filter(matching).count()
    };
    let outcomes = at_once(&app, 5).await;
    assert_eq!((count(&outcomes, false), count(&outcomes, true)), (4, 1), "four ran to their deadline, one found no instance: {outcomes:?}");
    // Two open sessions hold two of the four instances: requests get the other two.
    let sessions = [rt.instance_budget().take().unwrap(), rt.instance_budget().take().unwrap()];
    let outcomes = at_once(&app, 3).await;
    assert_eq!((count(&outcomes, false), count(&outcomes, true)), (2, 1), "{outcomes:?}");
    drop(sessions);
    assert_eq!(rt.instance_budget().held(), 0, "every request gave its share back");
}

#[tokio::test]
async fn a_guest_blocked_in_a_host_call_ends_at_the_deadline() {
    let a = sleeper(support::config(support::limits(50), 8));
    let started = std::time::Instant::now();
    match a.handle(&get()).await {
        Outcome::Fault(GuestFault::Deadline(d)) => assert_eq!(d, std::time::Duration::from_millis(50)),
        other => panic!("expected a deadline fault, got {other:?}"),
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
}

#[tokio::test]
async fn no_free_instance_is_busy_not_a_trap() {
    use toil_runtime::admission::{AdmissionLimits, Busy};
    let limits = support::limits(400);
    let admission = AdmissionLimits { max_running: 10, max_waiting: 0, max_wait: std::time::Duration::from_millis(10) };
    // The node has two instances; two sleepers hold them.
    let a = sleeper(RuntimeConfig { admission, ..support::config(limits.clone(), 2) });
    let req = get();
    let third = async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        a.handle(&req).await
    };
    let (_, _, third) = tokio::join!(a.handle(&req), a.handle(&req), third);
    assert!(matches!(third, Outcome::Busy(Busy::NodeFull)), "{third:?}");
    // A pool with fewer slots than the budget (its address space ran short):
    // the request past them is refused alike, and gives its share back.
    let a = sleeper(RuntimeConfig { admission, request_slots: 1, ..support::config(limits.clone(), 2) });
    let second = async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        a.handle(&req).await
    };
    let (_, second) = tokio::join!(a.handle(&req), second);
    assert!(matches!(second, Outcome::Busy(Busy::NodeFull)), "{second:?}");
    // The domain's own cap: one running, none waiting.
    let admission = AdmissionLimits { max_running: 1, max_waiting: 0, max_wait: std::time::Duration::from_millis(10) };
    let a = sleeper(RuntimeConfig { admission, ..support::config(limits, 8) });
    let second = async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        a.handle(&req).await
    };
    let (_, second) = tokio::join!(a.handle(&req), second);
    assert!(matches!(second, Outcome::Busy(Busy::QueueFull { running: 1, waiting: 0 })), "{second:?}");
}
