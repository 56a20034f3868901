//! A real browser against `toil dev`: Debian's headless Chromium, driven
//! through chromedriver (WebDriver), loads the echo example's dev page,
//! which opens the `/echo` WebTransport session trusting the dev
//! certificate by hash (`serverCertificateHashes`) and shows the replies;
//! the page's calls on streams of their own; streams a box opens, read by a
//! page; two Chromium windows chat through the chat example's page
//! (channels), one of them leaving and coming back to resume where it was;
//! and a page over HTTPS with a CA's certificate follows `Alt-Svc` to
//! HTTP/3 and opens WebTransport with no certificate hashes.
//!
//! Needs `chromium` and `chromium-driver` (the test command installs them).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use serde_json::{json, Value};

/// One chromedriver and the browsers it starts. Tests take turns: a
/// headless Chromium or two at a time is what a 2-core machine runs
/// without stalling, and a stalled browser fails a test for nothing.
struct Driver {
    addr: SocketAddr,
    log: std::path::PathBuf,
    _child: KillOnDrop,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One WebDriver command: its `value`, or what went wrong.
async fn webdriver(addr: SocketAddr, method: &str, path: &str, body: Value) -> Result<Value, String> {
    use http_body_util::BodyExt;
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let failed = |e: &dyn std::fmt::Display| format!("WebDriver {method} {path}: {e}");
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| failed(&e))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.map_err(|e| failed(&e))?;
    tokio::spawn(conn);
    let resp = send.send_request(req).await.map_err(|e| failed(&e))?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(|e| failed(&e))?.to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if status.as_u16() >= 300 {
        return Err(failed(&format!("{status} {v}")));
    }
    Ok(v["value"].clone())
}

/// The end of chromedriver's log, for a failure message.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!("chromedriver log ({}), last lines:\n{}", log.display(), lines[lines.len().saturating_sub(30)..].join("\n"))
}

impl Driver {
    async fn start() -> Driver {
        let turn = TURN.lock().await;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = repo_root().join(format!("target/e2e/chromedriver-{}-{port}.log", std::process::id()));
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (apt-get install chromium-driver)");
        let driver = Driver { addr: format!("127.0.0.1:{port}").parse().unwrap(), log, _child: KillOnDrop(child), _turn: turn };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(driver.addr).await.is_ok() {
                return driver;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not start");
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        webdriver(self.addr, method, path, body).await.unwrap_or_else(|e| panic!("{e}\n{}", log_tail(&self.log)))
    }

    /// A new headless Chromium (one WebDriver session) with its own
    /// profile, so its pages share no storage with another's.
    async fn open(&self, profile: &Path) -> Browser {
        self.open_with(profile, &[]).await
    }

    /// [`Driver::open`] with more command-line switches.
    async fn open_with(&self, profile: &Path, switches: &[String]) -> Browser {
        let mut args: Vec<String> = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"].map(String::from).to_vec();
        args.push(format!("--user-data-dir={}", profile.display()));
        args.extend_from_slice(switches);
        let session = self
            .call("POST", "/session", json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}}}}))
            .await;
        let id = session["sessionId"].as_str().expect("a WebDriver session").to_string();
        Browser { driver: self.addr, log: self.log.clone(), id }
    }
}

/// One WebDriver session. Dropping it ends the session, which quits its
/// Chromium, also when the test fails.
struct Browser {
    driver: SocketAddr,
    log: std::path::PathBuf,
    id: String,
}

impl Browser {
    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        self.try_call(method, path, body).await.unwrap_or_else(|e| panic!("{e}\n{}", log_tail(&self.log)))
    }

    async fn try_call(&self, method: &str, path: &str, body: Value) -> Result<Value, String> {
        webdriver(self.driver, method, &format!("/session/{}{path}", self.id), body).await
    }

    /// Loads `url`, returning once the page has loaded.
    async fn goto(&self, url: &str) {
        self.call("POST", "/url", json!({"url": url})).await;
    }

    /// Runs `script` (a function body) in the page: what it returns.
    async fn run(&self, script: &str) -> Value {
        self.call("POST", "/execute/sync", json!({"script": script, "args": []})).await
    }

    /// Runs `script` (a function body whose last argument is a callback it
    /// calls with its result) with `args` before it: what it passed back.
    async fn run_async(&self, script: &str, args: Value) -> Value {
        self.call("POST", "/execute/async", json!({"script": script, "args": args})).await
    }

    /// [`Browser::run`] that may fail (the page is between documents).
    async fn try_run(&self, script: &str) -> Result<Value, String> {
        self.try_call("POST", "/execute/sync", json!({"script": script, "args": []})).await
    }

    /// The WebDriver reference of the element `css` selects.
    async fn element(&self, css: &str) -> String {
        let e = self.call("POST", "/element", json!({"using": "css selector", "value": css})).await;
        e["element-6066-11e4-a52e-4f735466cecf"].as_str().unwrap_or_else(|| panic!("element {css}: {e}")).to_string()
    }

    /// Types `text` into the element `css` selects, key by key.
    async fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css).await;
        self.call("POST", &format!("/element/{e}/value"), json!({"text": text})).await;
    }

    async fn click(&self, css: &str) {
        let e = self.element(css).await;
        self.call("POST", &format!("/element/{e}/click"), json!({})).await;
    }
}

impl Drop for Browser {
    /// A blocking `DELETE /session/ID` (a drop cannot await), which
    /// returns once chromedriver has answered, that is, Chromium has quit.
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect_timeout(&self.driver, Duration::from_secs(1)) else { return };
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        let request = format!("DELETE /session/{} HTTP/1.1\r\nhost: {}\r\ncontent-length: 0\r\n\r\n", self.id, self.driver);
        if s.write_all(request.as_bytes()).is_err() {
            return;
        }
        // chromedriver keeps the connection open: read the head and the
        // body its content-length announces, not to the end.
        let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
        while let Ok(n @ 1..) = s.read(&mut chunk) {
            buf.extend_from_slice(&chunk[..n]);
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head.lines().find_map(|l| l.strip_prefix("content-length:")?.trim().parse().ok()).unwrap_or(0);
            if buf.len() >= end + 4 + len {
                break;
            }
        }
    }
}

#[tokio::test]
async fn chromium_opens_the_echo_stream_from_the_dev_page() {
    let s = server();
    let driver = Driver::start().await;
    let browser = driver.open(&s.dir.join("chromium-profile")).await;
    let page = format!("http://echo.localhost:{}/", s.http.port());
    browser.goto(&page).await;

    let script = "return [document.getElementById('status').textContent, document.getElementById('log').textContent]";
    let mut seen = Value::Null;
    for _ in 0..100 {
        seen = browser.run(script).await;
        if seen[1].as_str().is_some_and(|log| log.contains("← 1:hello")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Send one more frame through the page's form: the same box counts on.
    browser.run("document.getElementById('msg').value = 'again'; document.querySelector('#form button').click(); return true").await;
    for _ in 0..50 {
        seen = browser.run(script).await;
        if seen[1].as_str().is_some_and(|log| log.contains("← 2:again")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(seen[0], "connected", "page status; page log:\n{}", seen[1].as_str().unwrap_or(""));
    let log = seen[1].as_str().unwrap();
    assert!(log.contains("← 1:hello") && log.contains("← 2:again"), "page log:\n{log}");

    // Closing from the page runs the box's close hook with the page's code and reason.
    browser.run("document.getElementById('close').click(); return true").await;
    let closed = log_contains("echo closed after 2 frames (code 0, \"closed from the page\")").await;
    drop(browser);
    let echo_lines: Vec<String> = s.log().lines().filter(|l| l.contains("echo closed") || l.contains("echo lost")).map(String::from).collect();
    assert!(closed, "close hook; server log:\n{}", echo_lines.join("\n"));
}

/// A page over HTTPS on TCP with a certificate from a CA (the test's own,
/// which Chromium is told to trust by the leaf's key): the node's
/// `Alt-Svc` moves the page's next requests to HTTP/3, and the page opens
/// a WebTransport session with no `serverCertificateHashes`, as a page
/// of a real site would. A root that is not one of Chromium's own is
/// refused for QUIC unless its host is listed: `--origin-to-force-quic-on`
/// with a port nothing uses lists the host without forcing QUIC on the
/// page's origin (a certificate from a public CA needs none of this).
#[tokio::test]
async fn chromium_follows_alt_svc_to_http3_and_opens_webtransport_with_a_ca_certificate() {
    let dir = repo_root().join(format!("target/e2e/browser-https-{}", std::process::id()));
    let ca = common::tls::TestCa::new(&dir.join("ca"));
    let (cert, key, _) = ca.write("echo", &["echo.test"]);
    let pin = common::tls::spki_pin(&std::fs::read_to_string(&key).unwrap());
    let s = start_server(
        "browser-https",
        json!({
            "apps": [{"domain": "echo", "dir": repo_root().join("examples/echo"), "hosts": ["echo.test"]}],
            "defaultDomain": "echo",
            "tls": {"certificates": [{"hosts": ["echo.test"], "cert": cert, "key": key}], "selfSigned": false},
            "limits": {},
        }),
    );
    let driver = Driver::start().await;
    let switches = [
        "--host-resolver-rules=MAP echo.test 127.0.0.1".to_string(),
        format!("--ignore-certificate-errors-spki-list={pin}"),
        "--origin-to-force-quic-on=echo.test:1".to_string(),
    ];
    let browser = driver.open_with(&s.dir.join("chromium-profile-https"), &switches).await;
    browser.goto(&format!("https://echo.test:{}/no-such-page", s.http.port())).await;
    let got = browser.run_async(OVER_HTTPS_THEN_HTTP3, json!([])).await;
    let log = format!("server log: {}", s.dir.join("dev.log").display());
    assert!(matches!(got["page"].as_str(), Some("http/1.1" | "h2")), "the page comes over TCP: {got}\n{log}");
    assert_eq!(got["next"], "h3", "Alt-Svc moves the next requests to HTTP/3: {got}\n{log}");
    assert_eq!(got["echo"], "1:hello", "a WebTransport session without certificate hashes: {got}\n{log}");
}

/// Run in a page loaded over HTTPS: the protocol the page came over, the
/// one its later requests use, and an echo through a WebTransport session
/// opened the way a public site's page opens one.
const OVER_HTTPS_THEN_HTTP3: &str = r#"
const done = arguments[arguments.length - 1];
const enc = new TextEncoder(), dec = new TextDecoder();
(async () => {
  const page = performance.getEntriesByType('navigation')[0].nextHopProtocol;
  let next = '';
  for (let i = 0; i < 60 && next !== 'h3'; i++) {
    const url = `/no-such-page?n=${i}`;
    // The timing entry is made once the body is read.
    await (await fetch(url, { cache: 'no-store' })).text();
    await new Promise((r) => setTimeout(r, 0));
    const seen = performance.getEntriesByType('resource').filter((e) => e.name.endsWith(url));
    next = seen.length ? seen[seen.length - 1].nextHopProtocol : '';
    if (next !== 'h3') await new Promise((r) => setTimeout(r, 100));
  }
  const wt = new WebTransport(`https://${location.host}/echo`);
  await wt.ready;
  const stream = await wt.createBidirectionalStream();
  const bytes = enc.encode('hello'), frame = new Uint8Array(4 + bytes.length);
  new DataView(frame.buffer).setUint32(0, bytes.length);
  frame.set(bytes, 4);
  const writer = stream.writable.getWriter();
  await writer.write(frame);
  const reader = stream.readable.getReader();
  let buf = new Uint8Array(0);
  while (buf.length < 4 || buf.length < 4 + new DataView(buf.buffer).getUint32(0)) {
    const { value, done: end } = await reader.read();
    if (end) break;
    const joined = new Uint8Array(buf.length + value.length);
    joined.set(buf); joined.set(value, buf.length);
    buf = joined;
  }
  const echo = buf.length >= 4 ? dec.decode(buf.slice(4, 4 + new DataView(buf.buffer).getUint32(0))) : '';
  wt.close();
  done({ page, next, echo });
})().catch((e) => done({ error: String(e) }));
"#;

/// Ten calls at once from the echo page, each on a stream of its own:
/// each answer comes on its call's stream, which the box then finishes.
#[tokio::test]
async fn chromium_calls_on_streams_of_their_own() {
    let s = server();
    let driver = Driver::start().await;
    let browser = driver.open(&s.dir.join("chromium-profile-calls")).await;
    browser.goto(&format!("http://echo.localhost:{}/", s.http.port())).await;
    let log = "return document.getElementById('log').textContent";
    let mut seen = Value::Null;
    for _ in 0..100 {
        seen = browser.run(log).await;
        if seen.as_str().is_some_and(|l| l.contains("← 1:hello")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    browser
        .run(
            "for (let i = 0; i < 10; i++) { document.getElementById('msg').value = 'rpc' + i; document.getElementById('call').click(); } return true",
        )
        .await;
    let answered = |log: &str| {
        (0..10)
            .filter(|i| log.lines().any(|l| l.starts_with(&format!("← call \"rpc{i}\": ")) && l.ends_with(&format!(":rpc{i} (stream finished)"))))
            .count()
    };
    for _ in 0..100 {
        seen = browser.run(log).await;
        if answered(seen.as_str().unwrap_or("")) == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let page = seen.as_str().unwrap_or("");
    assert_eq!(answered(page), 10, "page log:\n{page}");
}

/// A page asks the chaos box for two pushed streams and a bidirectional
/// stream of the box's own, and writes back on the latter.
const STREAMS_FROM_THE_BOX: &str = r#"
const [h3Port, hashHex, done] = arguments;
const enc = new TextEncoder(), dec = new TextDecoder();
const frame = (text) => {
  const bytes = enc.encode(text), out = new Uint8Array(4 + bytes.length);
  new DataView(out.buffer).setUint32(0, bytes.length);
  out.set(bytes, 4);
  return out;
};
async function* frames(readable) {
  const reader = readable.getReader();
  let buf = new Uint8Array(0);
  for (;;) {
    while (buf.length >= 4) {
      const len = new DataView(buf.buffer, buf.byteOffset).getUint32(0);
      if (buf.length < 4 + len) break;
      yield dec.decode(buf.slice(4, 4 + len));
      buf = buf.slice(4 + len);
    }
    const { value, done } = await reader.read();
    if (done) return;
    const joined = new Uint8Array(buf.length + value.length);
    joined.set(buf); joined.set(value, buf.length);
    buf = joined;
  }
}
(async () => {
  const hash = Uint8Array.from(hashHex.match(/../g).map((h) => parseInt(h, 16)));
  const wt = new WebTransport(`https://misbehave.localhost:${h3Port}/chaos`,
                              { serverCertificateHashes: [{ algorithm: 'sha-256', value: hash }] });
  await wt.ready;
  const primary = await wt.createBidirectionalStream();
  const write = primary.writable.getWriter();
  const read = frames(primary.readable);
  await read.next();
  await write.write(frame('push 2 news'));
  const answer = (await read.next()).value;
  const unis = wt.incomingUnidirectionalStreams.getReader();
  const pushed = [];
  for (let i = 0; i < 2; i++) {
    const { value } = await unis.read();
    for await (const f of frames(value)) pushed.push(f);
  }
  await write.write(frame('open-bidi'));
  const opened = (await read.next()).value;
  const { value: theirs } = await wt.incomingBidirectionalStreams.getReader().read();
  const theirFrames = frames(theirs.readable);
  const hello = (await theirFrames.next()).value;
  await theirs.writable.getWriter().write(frame('back'));
  const back = (await theirFrames.next()).value;
  wt.close({ closeCode: 0, reason: 'done' });
  return { answer, pushed: pushed.sort(), opened, hello, back };
})().then(done, (e) => done({ error: String(e) }));
"#;

#[tokio::test]
async fn chromium_reads_streams_the_box_opens() {
    let s = server();
    let driver = Driver::start().await;
    let browser = driver.open(&s.dir.join("chromium-profile-pushed")).await;
    browser.goto(&format!("http://echo.localhost:{}/", s.http.port())).await;
    let got = browser.run_async(STREAMS_FROM_THE_BOX, json!([s.http.port(), s.cert_sha256])).await;
    let id = got["opened"].as_str().and_then(|o| o.strip_prefix("opened ")).unwrap_or_else(|| panic!("{got}"));
    assert!(got["answer"].as_str().is_some_and(|a| a.starts_with("pushed ")), "{got}");
    assert_eq!(got["pushed"], json!(["news 0", "news 1"]), "{got}");
    assert_eq!(got["hello"], format!("hello {id}"), "{got}");
    assert_eq!(got["back"], "3:back", "the answer on the box's own stream: {got}");
}

// ------------------------------------------------------------------ chat

/// What a chat page shows (examples/chat/src/page.html).
const CHAT_PAGE: &str = r#"
const text = (id) => { const e = document.getElementById(id); return e ? e.textContent : null; };
return {
  url: location.href,
  status: text('status'), position: text('position'), tick: text('tick'), notice: text('notice'),
  messages: Array.from(document.querySelectorAll('#messages li')).map((li) => {
    const from = li.querySelector('.from');
    return { offset: Number(li.dataset.offset), from: from ? from.textContent : null, text: li.textContent };
  }),
  page: document.body ? document.body.innerText : '',
};"#;

/// One message as a chat page lists it.
#[derive(Debug, Clone, PartialEq)]
struct Line {
    offset: u64,
    from: String,
    /// The `<li>`'s text: `#OFFSETFROM: TEXT`.
    text: String,
}

#[derive(Debug, Default)]
struct ChatPage {
    status: String,
    tick: String,
    messages: Vec<Line>,
    /// The whole page as text, or why it could not be read.
    dump: String,
}

impl ChatPage {
    async fn read(b: &Browser) -> ChatPage {
        let v = match b.try_run(CHAT_PAGE).await {
            Ok(v) => v,
            Err(e) => return ChatPage { dump: e, ..ChatPage::default() },
        };
        let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
        let messages = v["messages"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .map(|m| Line {
                        offset: m["offset"].as_u64().unwrap_or(u64::MAX),
                        from: m["from"].as_str().unwrap_or("").to_string(),
                        text: m["text"].as_str().unwrap_or("").to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let dump = format!(
            "{}\nstatus={:?} position={:?} tick={:?} notice={:?}\n{}",
            s("url"),
            s("status"),
            s("position"),
            s("tick"),
            s("notice"),
            s("page")
        );
        ChatPage { status: s("status"), tick: s("tick"), messages, dump }
    }

    /// The messages whose text is `text`.
    fn find(&self, text: &str) -> Vec<&Line> {
        self.messages.iter().filter(|m| m.text.ends_with(&format!(": {text}"))).collect()
    }

    /// The one message whose text is `text`.
    fn one(&self, text: &str) -> Option<&Line> {
        match self.find(text)[..] {
            [m] => Some(m),
            _ => None,
        }
    }
}

/// Polls `b`'s page every 100 ms until `ok` holds, for at most `within`;
/// panics with the page and the server log's path if it never does.
async fn wait_page(s: &Server, b: &Browser, what: &str, within: Duration, ok: impl Fn(&ChatPage) -> bool) -> ChatPage {
    let start = Instant::now();
    loop {
        let page = ChatPage::read(b).await;
        if ok(&page) {
            return page;
        }
        if start.elapsed() > within {
            panic!("{what}: not within {within:?}; the page:\n{}\n(server log: {})", page.dump, s.dir.join("dev.log").display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the server's log has a line containing one of `needles`.
async fn wait_log(s: &Server, what: &str, needles: &[&str]) {
    let start = Instant::now();
    while !s.log().lines().any(|l| needles.iter().any(|n| l.contains(n))) {
        assert!(start.elapsed() < STEP, "{what}: none of {needles:?} in the server log {}", s.dir.join("dev.log").display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long one step of a browser scenario may take.
const STEP: Duration = Duration::from_secs(20);

#[tokio::test]
async fn two_chromium_pages_chat_and_one_resumes_after_leaving() {
    // `toil dev`'s own limits, not the bad-input tests' (whose 2 s idle
    // timeout drops a quiet browser session every second or two).
    let s = start_server(
        "chat-browser",
        json!({
            "apps": [{"domain": "chat", "dir": repo_root().join("examples/chat")}],
            "defaultDomain": "chat",
            "limits": {},
        }),
    );
    let log = format!("server log: {}", s.dir.join("dev.log").display());
    // How long each step took, shown when the test fails.
    let t0 = Instant::now();
    let mark = |what: &str| eprintln!("{:>6.2} s  {what}", t0.elapsed().as_secs_f64());
    let driver = Driver::start().await;
    // Two Chromiums, each with its own profile: two pages, two WebTransport
    // sessions, and each page's position in its own localStorage.
    let a = driver.open(&s.dir.join("profile-ann")).await;
    let b = driver.open(&s.dir.join("profile-bob")).await;
    let url = |name: &str| format!("http://chat.localhost:{}/?room=e2e&name={name}", s.http.port());
    a.goto(&url("ann")).await;
    b.goto(&url("bob")).await;
    mark("pages loaded");
    wait_page(&s, &a, "ann's page opens its session", STEP, |p| p.status == "open").await;
    wait_page(&s, &b, "bob's page opens its session", STEP, |p| p.status == "open").await;

    mark("both open");
    // Ann types a message: both pages show it, at the same offset.
    a.type_into("#text", "hello from ann").await;
    a.click("#send").await;
    let shown = |text: &'static str| move |p: &ChatPage| p.one(text).is_some();
    let on_a = wait_page(&s, &a, "ann's message on ann's page", STEP, shown("hello from ann")).await;
    let on_b = wait_page(&s, &b, "ann's message on bob's page", STEP, shown("hello from ann")).await;
    let first = on_a.one("hello from ann").unwrap().clone();
    assert_eq!(first.from, "ann", "ann's page:\n{}\n{log}", on_a.dump);
    assert_eq!(Some(&first), on_b.one("hello from ann"), "the same message at the same offset; bob's page:\n{}\n{log}", on_b.dump);

    mark("ann's message on both");
    // Bob answers: the next offset, on both pages.
    b.type_into("#text", "hi ann").await;
    b.click("#send").await;
    let on_b = wait_page(&s, &b, "bob's message on bob's page", STEP, shown("hi ann")).await;
    let on_a = wait_page(&s, &a, "bob's message on ann's page", STEP, shown("hi ann")).await;
    let second = on_a.one("hi ann").unwrap().clone();
    assert_eq!((second.offset, second.from.as_str()), (first.offset + 1, "bob"), "ann's page:\n{}\n{log}", on_a.dump);
    assert_eq!(Some(&second), on_b.one("hi ann"), "bob's page:\n{}\n{log}", on_b.dump);

    mark("bob's message on both");
    // Bob's page goes away (its session ends with it) and a message is
    // posted over HTTP while it is gone; then the page loads again.
    b.goto("about:blank").await;
    wait_log(&s, "bob's box ends when his page goes away", &["bob left room/e2e", "bob lost from room/e2e"]).await;
    let resp = http1(s.http, request("POST", "chat.localhost", "/rooms/e2e", "sent while away")).await;
    assert_eq!(resp.status, 200, "POST /rooms/e2e: {}\n{log}", resp.text());
    let posted: Value = serde_json::from_slice(&resp.body).unwrap_or_else(|_| panic!("POST /rooms/e2e: {}", resp.text()));
    assert_eq!(posted["offset"], first.offset + 2, "POST /rooms/e2e: {}", resp.text());
    let on_a = wait_page(&s, &a, "the posted message on ann's page", STEP, shown("sent while away")).await;
    let third = on_a.one("sent while away").unwrap().clone();
    assert_eq!((third.offset, third.from.as_str()), (first.offset + 2, "http"), "ann's page:\n{}\n{log}", on_a.dump);

    mark("posted while bob was away");
    b.goto(&url("bob")).await;
    wait_page(&s, &b, "bob's page back, with the message sent while away", STEP, |p| p.status == "open" && p.one("sent while away").is_some()).await;
    // Give a duplicate time to show before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let on_b = ChatPage::read(&b).await;
    assert_eq!(
        on_b.messages,
        [first.clone(), second.clone(), third.clone()],
        "each message once, in offset order; bob's page:\n{}\n{log}",
        on_b.dump
    );
    assert_eq!(on_b.status, "open", "bob's page:\n{}\n{log}", on_b.dump);
    let on_a = ChatPage::read(&a).await;
    assert_eq!(on_a.messages, [first, second, third], "ann's page:\n{}\n{log}", on_a.dump);

    mark("bob's page resumed");
    // The daemon's ticks reach the pages through the `ticks` topic.
    let start = Instant::now();
    loop {
        let (pa, pb) = (ChatPage::read(&a).await, ChatPage::read(&b).await);
        if pa.tick.parse::<u64>().is_ok() || pb.tick.parse::<u64>().is_ok() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no tick on either page within 10 s; ann's page:\n{}\nbob's page:\n{}\n{log}",
            pa.dump,
            pb.dump
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    mark("a tick");
}
