//! A real browser against `toil dev`: Debian's headless Chromium, driven
//! through chromedriver (WebDriver), loads the echo example's dev page,
//! which opens the `/echo` WebTransport session trusting the dev
//! certificate by hash (`serverCertificateHashes`) and shows the replies.
//!
//! Needs `chromium` and `chromium-driver` (the test command installs them).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use serde_json::{json, Value};

struct Driver {
    addr: std::net::SocketAddr,
    _child: KillOnDrop,
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Driver {
    async fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (apt-get install chromium-driver)");
        let driver = Driver { addr: format!("127.0.0.1:{port}").parse().unwrap(), _child: KillOnDrop(child) };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(driver.addr).await.is_ok() {
                return driver;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not start");
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string())
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let resp = http1(self.addr, req).await;
        let v: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
        assert!(resp.status < 300, "WebDriver {method} {path}: {} {v}", resp.status);
        v["value"].clone()
    }
}

#[tokio::test]
async fn chromium_opens_the_echo_stream_from_the_dev_page() {
    let s = server();
    let driver = Driver::start().await;
    let profile = s.dir.join("chromium-profile");
    let session = driver
        .call(
            "POST",
            "/session",
            json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         format!("--user-data-dir={}", profile.display())]
            }}}}),
        )
        .await;
    let id = session["sessionId"].as_str().expect("a WebDriver session").to_string();
    let page = format!("http://echo.localhost:{}/", s.http.port());
    driver.call("POST", &format!("/session/{id}/url"), json!({"url": page})).await;

    let script = json!({"script": "return [document.getElementById('status').textContent, document.getElementById('log').textContent]", "args": []});
    let mut seen = Value::Null;
    for _ in 0..100 {
        seen = driver.call("POST", &format!("/session/{id}/execute/sync"), script.clone()).await;
        if seen[1].as_str().is_some_and(|log| log.contains("← 1:hello")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Send one more frame through the page's form: the same box counts on.
    let click =
        json!({"script": "document.getElementById('msg').value = 'again'; document.querySelector('#form button').click(); return true", "args": []});
    driver.call("POST", &format!("/session/{id}/execute/sync"), click).await;
    for _ in 0..50 {
        seen = driver.call("POST", &format!("/session/{id}/execute/sync"), script.clone()).await;
        if seen[1].as_str().is_some_and(|log| log.contains("← 2:again")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(seen[0], "connected", "page status; page log:\n{}", seen[1].as_str().unwrap_or(""));
    let log = seen[1].as_str().unwrap();
    assert!(log.contains("← 1:hello") && log.contains("← 2:again"), "page log:\n{log}");

    // Closing from the page runs the box's close hook with the page's code and reason.
    let close = json!({"script": "document.getElementById('close').click(); return true", "args": []});
    driver.call("POST", &format!("/session/{id}/execute/sync"), close).await;
    let closed = log_contains("echo closed after 2 frames (code 0, \"closed from the page\")").await;
    driver.call("DELETE", &format!("/session/{id}"), json!({})).await;
    let echo_lines: Vec<String> = s.log().lines().filter(|l| l.contains("echo closed") || l.contains("echo lost")).map(String::from).collect();
    assert!(closed, "close hook; server log:\n{}", echo_lines.join("\n"));
}
