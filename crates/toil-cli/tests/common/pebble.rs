//! A real ACME CA for the certificate tests: Debian's `pebble`, with
//! validation on, and `pebble-challtestsrv` as its DNS server (every name
//! resolves to 127.0.0.1). Each test starts its own, on free ports, with
//! its listener's certificate from a test CA of its own; the issuing root
//! is new at every start and read from pebble's management API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::cluster::free_port;
use super::tls::TestCa;

pub struct Pebble {
    /// The ACME directory URL.
    pub directory: String,
    /// Trust for pebble's own HTTPS (its listener certificate's CA), PEM.
    pub listener_ca: PathBuf,
    listen: SocketAddr,
    /// Pebble's management API (its roots, over HTTPS).
    pub management: SocketAddr,
    dir: PathBuf,
    children: Vec<Child>,
}

impl Pebble {
    /// The ports it will listen on are chosen now, so a node's config can
    /// name the directory before pebble starts.
    pub fn plan(dir: &Path) -> Pebble {
        std::fs::create_dir_all(dir).unwrap();
        let ca = TestCa::new(&dir.join("pebble-ca"));
        ca.write("listener", &["localhost", "127.0.0.1"]);
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let management: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Pebble {
            directory: format!("https://{listen}/dir"),
            listener_ca: ca.pem.clone(),
            listen,
            management,
            dir: dir.to_path_buf(),
            children: Vec::new(),
        }
    }

    /// Starts the DNS server and pebble, validating HTTP-01 on `http_port`
    /// and TLS-ALPN-01 on `tls_port` of 127.0.0.1.
    pub fn start(&mut self, http_port: u16, tls_port: u16) {
        let (dns, dns_management) = (free_port(), free_port());
        let log = |name: &str| std::fs::File::create(self.dir.join(name)).unwrap();
        let dns_server = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", "", "-http01", "", "-https01", "", "-tlsalpn01", ""])
            .arg("-dns01")
            .arg(format!("127.0.0.1:{dns}"))
            .arg("-management")
            .arg(format!("127.0.0.1:{dns_management}"))
            .stdout(log("challtestsrv.log"))
            .stderr(Stdio::from(log("challtestsrv.err")))
            .spawn()
            .expect("pebble-challtestsrv (apt-get install pebble; scripts/test.sh installs it)");
        self.children.push(dns_server);
        let config = self.dir.join("pebble.json");
        let ca_dir = self.dir.join("pebble-ca");
        let json = serde_json::json!({"pebble": {
            "listenAddress": self.listen.to_string(),
            "managementListenAddress": self.management.to_string(),
            "certificate": ca_dir.join("listener.pem"),
            "privateKey": ca_dir.join("listener.key"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        std::fs::write(&config, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config)
            .arg("-dnsserver")
            .arg(format!("127.0.0.1:{dns}"))
            // Validate at once, accept every nonce, and validate every order afresh.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log("pebble.log"))
            .stderr(Stdio::from(log("pebble.err")))
            .spawn()
            .expect("pebble (apt-get install pebble; scripts/test.sh installs it)");
        self.children.push(pebble);
        let started = Instant::now();
        while std::net::TcpStream::connect(self.listen).is_err() || std::net::TcpStream::connect(self.management).is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "pebble did not listen on {}: {}", self.listen, self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The root pebble issues under (new at every start), written to a PEM file.
    pub fn issuing_root(&self) -> PathBuf {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--cacert"])
            .arg(&self.listener_ca)
            .arg(format!("https://{}/roots/0", self.management))
            .output()
            .unwrap();
        assert!(out.status.success(), "pebble's root: {}", String::from_utf8_lossy(&out.stderr));
        let path = self.dir.join("issuing-root.pem");
        std::fs::write(&path, &out.stdout).unwrap();
        path
    }

    pub fn logs(&self) -> String {
        ["pebble.log", "pebble.err"].iter().filter_map(|f| std::fs::read_to_string(self.dir.join(f)).ok()).collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
