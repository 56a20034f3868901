//! `toil new NAME`: a new app crate anywhere on disk, which builds with
//! `toil build` and serves with `toil dev` as it is.
//!
//! **The SDK.** The crate depends on the guest SDK by path: by default the
//! SDK of the checkout this `toil` was built from (recorded at compile
//! time, so `cargo install --path crates/toil-cli` from a checkout makes a
//! `toil` whose apps use that checkout's SDK). `--sdk DIR` names another.
//! An app picks up a newer SDK at its next build after the checkout is
//! updated; `docs/getting-started.md` says so.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// The guest SDK of the checkout this binary was built from.
const CHECKOUT_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../guest-sdk/toil");

#[derive(clap::Args)]
pub struct NewArgs {
    /// The app's name: its crate, its directory and its domain
    /// (lower-case letters, digits and '-', starting with a letter).
    name: String,
    /// Where to create the crate (default: ./NAME). It must not exist, or be empty.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// A request handler (L1): `GET /`. With no tier flag, all three tiers.
    #[arg(long)]
    request: bool,
    /// A WebTransport stream (L2/L3) that echoes frames back.
    #[arg(long)]
    stream: bool,
    /// A daemon (L4) with a task every 10 seconds.
    #[arg(long)]
    daemon: bool,
    /// The guest SDK crate to depend on (default: the SDK of the checkout
    /// this toil was built from).
    #[arg(long)]
    sdk: Option<PathBuf>,
}

/// The tiers a new app has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tiers {
    request: bool,
    stream: bool,
    daemon: bool,
}

pub fn run(args: NewArgs) -> anyhow::Result<()> {
    check_name(&args.name)?;
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists() && (!dir.is_dir() || std::fs::read_dir(&dir)?.next().is_some()) {
        bail!("{} exists and is not an empty directory; choose another name or --dir", dir.display());
    }
    let sdk = args.sdk.clone().unwrap_or_else(|| PathBuf::from(CHECKOUT_SDK));
    let sdk = sdk.canonicalize().ok().filter(|s| s.join("Cargo.toml").is_file()).with_context(|| {
        format!(
            "the guest SDK is not at {} (was the checkout toil was built from moved?): pass --sdk PATH/guest-sdk/toil, or reinstall toil",
            sdk.display()
        )
    })?;
    let all = !(args.request || args.stream || args.daemon);
    let tiers = Tiers { request: args.request || all, stream: args.stream || all, daemon: args.daemon || all };

    std::fs::create_dir_all(dir.join("src")).with_context(|| format!("creating {}", dir.display()))?;
    let mut files = vec![
        ("Cargo.toml", cargo_toml(&args.name, &sdk)),
        ("src/lib.rs", lib_rs(&args.name, tiers)),
        ("toilconfig.json", "{\n  \"dev\": { \"listen\": \"127.0.0.1:8080\", \"admin\": \"127.0.0.1:9090\" }\n}\n".to_string()),
        (".gitignore", "/target\n/build\n".to_string()),
    ];
    if tiers.request && tiers.stream {
        files.push(("src/stream.html", PAGE.to_string()));
    }
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("created {} in {}", args.name, dir.display());
    println!("  cd {} && toil dev      # builds and serves http://{}.localhost:8080/", dir.display(), args.name);
    if tiers.request && tiers.stream {
        println!("  then open http://{}.localhost:8080/stream in Chromium to talk to the echo stream", args.name);
    }
    Ok(())
}

/// A name is a crate name, a directory and a DNS label at once.
fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid {
        bail!("{name:?} is not a usable app name: use 1 to 63 lower-case letters, digits and '-', starting with a letter and not ending with '-' (it is the crate name and the domain)");
    }
    // The crate depends on `toil`; Rust's own crates cannot be shadowed either.
    if matches!(name, "toil" | "toil-macros" | "std" | "core" | "alloc" | "test" | "proc-macro") {
        bail!("{name:?} is the name of a crate the app depends on; choose another");
    }
    Ok(())
}

fn cargo_toml(name: &str, sdk: &Path) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
# The guest SDK, from the toil checkout (see docs/getting-started.md).
toil = {{ path = "{sdk}" }}

[profile.release]
panic = "abort"
lto = true
codegen-units = 1
"#,
        sdk = sdk.display()
    )
}

fn lib_rs(name: &str, tiers: Tiers) -> String {
    let mut out =
        format!("//! {name}: a Toil Edge app. `toil dev` builds and serves it; `toil deploy` sends it to a cluster.\n\nuse toil::prelude::*;\n");
    let mut exported = Vec::new();
    if tiers.request {
        let page = if tiers.stream { PAGE_ROUTE } else { "" };
        out.push_str(&REQUEST.replace("{name}", name).replace("{page}", page));
        exported.push("request: [Api]");
    }
    if tiers.stream {
        out.push_str(STREAM);
        exported.push("stream: [Echo]");
    }
    if tiers.daemon {
        out.push_str(DAEMON);
        exported.push("daemon: Jobs");
    }
    out.push_str(&format!("\ntoil::export! {{ {} }}\n", exported.join(", ")));
    out
}

const REQUEST: &str = r#"
/// The request tier (L1): a fresh instance per HTTP request.
struct Api;

#[toil::request]
impl Api {
    #[get("/")]
    fn index() -> Response {
        Response::text("Hello from {name}!\n")
    }

    #[get("/hello/:name")]
    fn hello(req: &Request) -> String {
        format!("Hello, {}!\n", req.param("name").unwrap_or("stranger"))
    }
{page}}
"#;

/// With the stream tier: a page that opens the stream from a browser.
const PAGE_ROUTE: &str = r#"
    /// Open this in Chromium to talk to the `echo` stream.
    #[get("/stream")]
    fn stream_page() -> Response {
        Response::html(include_str!("stream.html"))
    }
"#;

/// The page behind `GET /stream`: dev mode publishes its certificate hash
/// and HTTP/3 port at `/.well-known/toil/dev.json`, which WebTransport needs
/// for a self-signed certificate. Frames on a stream are a 4-byte
/// big-endian length, then the bytes.
const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8">
<title>echo</title>
<form id="form"><input id="msg" value="hello" autofocus> <button>send</button></form>
<pre id="log"></pre>
<script type="module">
const log = (line) => { document.getElementById('log').textContent += line + '\n'; };
const dev = await (await fetch('/.well-known/toil/dev.json')).json();
const hash = Uint8Array.from(dev.certificateSha256.match(/../g).map((h) => parseInt(h, 16)));
const wt = new WebTransport(`https://${location.hostname}:${dev.h3Port}/echo`,
  { serverCertificateHashes: [{ algorithm: 'sha-256', value: hash }] });
await wt.ready;
log('session open');
const stream = await wt.createBidirectionalStream();
const writer = stream.writable.getWriter();
const send = (text) => {
  const bytes = new TextEncoder().encode(text);
  const frame = new Uint8Array(4 + bytes.length);
  new DataView(frame.buffer).setUint32(0, bytes.length);
  frame.set(bytes, 4);
  log('→ ' + text);
  return writer.write(frame);
};
(async () => {
  const reader = stream.readable.getReader();
  let buf = new Uint8Array(0);
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return log('stream ended');
    buf = Uint8Array.from([...buf, ...value]);
    while (buf.length >= 4) {
      const len = new DataView(buf.buffer).getUint32(0);
      if (buf.length < 4 + len) break;
      log('← ' + new TextDecoder().decode(buf.slice(4, 4 + len)));
      buf = buf.slice(4 + len);
    }
  }
})();
document.getElementById('form').onsubmit = (e) => { e.preventDefault(); send(document.getElementById('msg').value); };
await send('hello');
</script>
"#;

const STREAM: &str = r#"
/// The stream tier (L2/L3): one resident box per WebTransport session at
/// `/echo`, so `frames` lasts as long as the session.
#[derive(Default)]
struct Echo {
    frames: u64,
}

#[toil::stream("echo")]
impl Echo {
    #[connect]
    fn connect(&mut self, cx: &mut Session) {
        println!("session opened: {}", cx.path());
    }

    #[message]
    fn message(&mut self, cx: &mut Session, frame: Frame<'_>) -> Result<(), SendError> {
        self.frames += 1;
        cx.reply(&frame, frame.bytes())
    }

    #[close]
    fn close(&mut self, code: u32, reason: &str) {
        println!("session closed after {} frames (code {code}, {reason:?})", self.frames);
    }

    #[disconnect]
    fn disconnect(&mut self, reason: &str) {
        println!("session lost after {} frames: {reason}", self.frames);
    }
}
"#;

const DAEMON: &str = r#"
/// The daemon tier (L4): one elected box per domain, ticked on schedule.
#[derive(Default)]
struct Jobs {
    ticks: u64,
}

#[toil::daemon]
impl Jobs {
    #[start]
    fn start(&mut self, info: &StartInfo) {
        println!("daemon started on node {} (fencing {})", info.node, info.fencing);
    }

    #[scheduled("10s")]
    fn every_ten_seconds(&mut self, tick: &Tick) {
        self.ticks += 1;
        println!("tick {} of {} at {}", self.ticks, tick.task, tick.fire_time_ms);
    }
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_crate_names_and_dns_labels() {
        for good in ["app", "my-app", "a1", &"a".repeat(63)] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "App", "1app", "-app", "app-", "my_app", "my.app", "toil", &"a".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_source_has_one_handler_per_chosen_tier() {
        let only_stream = lib_rs("x", Tiers { request: false, stream: true, daemon: false });
        assert!(only_stream.contains("#[toil::stream(\"echo\")]") && !only_stream.contains("#[toil::request]"));
        assert!(only_stream.ends_with("toil::export! { stream: [Echo] }\n"));
        let all = lib_rs("x", Tiers { request: true, stream: true, daemon: true });
        assert!(all.ends_with("toil::export! { request: [Api], stream: [Echo], daemon: Jobs }\n"));
    }
}
