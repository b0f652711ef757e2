//! Starting and stopping a real daemon.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use signer_client::{Client, ClientOptions, ClientOptionsBuilder};

pub struct Daemon {
    pub dir: PathBuf,
    pub port: u16,
    /// Admin HTTP port (metrics, health).
    pub admin_port: u16,
    child: Option<Child>,
}

fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

fn free_tcp_port() -> u16 {
    let s = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

impl Daemon {
    /// `signerd init --dev` in a fresh directory, then `signerd serve`; waits until it answers.
    pub async fn start(name: &str) -> Daemon {
        Daemon::start_with(name, "").await
    }

    /// Like `start`, with extra lines for the `[server]` table.
    pub async fn start_with(name: &str, server_lines: &str) -> Daemon {
        Daemon::start_with_files(name, server_lines, &[]).await
    }

    /// Like `start_with`, also writing `files` (path relative to the directory, contents) after
    /// `init --dev` and before `serve` (e.g. a policy file the `[server]` lines name).
    pub async fn start_with_files(
        name: &str,
        server_lines: &str,
        files: &[(&str, &str)],
    ) -> Daemon {
        Daemon::start_custom(name, server_lines, files, "").await
    }

    /// Like `start_with_files`, also appending `tail` (whole tables, e.g. `[batch]`) to the
    /// config.
    pub async fn start_custom(
        name: &str,
        server_lines: &str,
        files: &[(&str, &str)],
        tail: &str,
    ) -> Daemon {
        Daemon::start_init(name, &[], server_lines, files, tail).await
    }

    /// `signerd init --dev` on kryoptic tokens (the module `scripts/kryoptic` builds, named by
    /// `SIGNERD_KRYOPTIC_MODULE`; `./scripts/test` sets it), then `serve`.
    pub async fn start_kryoptic(name: &str) -> Daemon {
        let module = std::env::var("SIGNERD_KRYOPTIC_MODULE").expect(
            "SIGNERD_KRYOPTIC_MODULE names the kryoptic module: run the tests with ./scripts/test, \
             or build it with scripts/kryoptic and export its path",
        );
        Daemon::start_init(name, &["--kryoptic", &module], "", &[], "").await
    }

    async fn start_init(
        name: &str,
        init_args: &[&str],
        server_lines: &str,
        files: &[(&str, &str)],
        tail: &str,
    ) -> Daemon {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("daemon-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let port = free_udp_port();
        let admin_port = free_tcp_port();
        let out = Command::new(env!("CARGO_BIN_EXE_signerd"))
            .args(["init", "--dev"])
            .arg(&dir)
            .args(["--partitions", "2", "--port", &port.to_string()])
            .args(["--admin-port", &admin_port.to_string()])
            .args(init_args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cfg = dir.join("signerd.toml");
        let text = std::fs::read_to_string(&cfg).unwrap();
        let text = text.replacen("[server]\n", &format!("[server]\n{server_lines}\n"), 1);
        // Tests count every request as signed (or UNAVAILABLE on shutdown): no admission
        // shedding here; the engine tests cover admission.
        let default_wait = format!(
            "max_queue_wait = \"{}\"",
            signerd::config::duration::format(signerd::config::DEFAULT_MAX_QUEUE_WAIT)
        );
        assert!(
            text.contains(&default_wait),
            "init --dev wrote {default_wait}"
        );
        let text = text.replace(&default_wait, "max_queue_wait = \"10m\"");
        let text = format!("{text}\n{tail}\n");
        std::fs::write(&cfg, text).unwrap();
        for (file, contents) in files {
            std::fs::write(dir.join(file), contents).unwrap();
        }
        let mut daemon = Daemon {
            dir,
            port,
            admin_port,
            child: None,
        };
        daemon.spawn_serve().await;
        daemon
    }

    /// Starts `signerd serve` on this directory (again) and waits until it answers.
    pub async fn spawn_serve(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("signerd.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_signerd"))
            .args(["serve", "--config"])
            .arg(self.dir.join("signerd.toml"))
            .env("SIGNERD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_ready().await;
    }

    async fn wait_ready(&self) {
        let started = Instant::now();
        loop {
            let ok = match Client::connect(self.options("client-app.toml")).await {
                Ok(c) => {
                    // Any answer from the daemon means it is serving. (A public-key read of no
                    // key: unlike list_keys, it costs nothing from a quota a test sets.)
                    let r = matches!(
                        c.public_key("readiness-probe", None).await,
                        Ok(_) | Err(signer_client::ClientError::Status { .. })
                    );
                    c.close();
                    r
                }
                Err(_) => false,
            };
            if ok {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "daemon did not come up; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The daemon's QUIC address.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A raw quinn client endpoint on loopback presenting `cert`/`key` (PEM files) and trusting
    /// the dev CA: the client library's TLS config (`tls::client_config`) without its protocol
    /// layer, for tests that speak to the daemon below the client library.
    pub fn raw_endpoint(&self, cert: &Path, key: &Path) -> quinn::Endpoint {
        let tls = signerd::tls::client_config(&self.path("tls/ca.pem"), cert, key).unwrap();
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
        ep
    }

    /// A raw QUIC connection with the app identity (keep the endpoint alive with it).
    pub async fn raw_connect(&self) -> (quinn::Endpoint, quinn::Connection) {
        let ep = self.raw_endpoint(
            &self.path("tls/client-app.pem"),
            &self.path("tls/client-app.key"),
        );
        let conn = ep.connect(self.addr(), "localhost").unwrap().await.unwrap();
        (ep, conn)
    }

    pub fn options(&self, file: &str) -> ClientOptions {
        ClientOptions::from_file(&self.dir.join(file)).unwrap()
    }

    /// The options of a client file, to change before they are built.
    pub fn builder(&self, file: &str) -> ClientOptionsBuilder {
        ClientOptionsBuilder::from_file(&self.dir.join(file)).unwrap()
    }

    /// The admin identity. Key generation (RSA-4096, with replication) takes seconds on a busy
    /// machine: a generous timeout, so that a slow host does not fail unrelated tests.
    /// Whether the daemon refuses a client with this certificate and key: the handshake or its
    /// first request fails (the TLS alert may only arrive with the first stream).
    pub async fn refuses(&self, cert: PathBuf, key: PathBuf) -> bool {
        let opts = self
            .builder("client-app.toml")
            .identity_files(cert, key)
            .max_retries(0)
            .build()
            .unwrap();
        match Client::connect(opts).await {
            Ok(c) => c.list_keys().await.is_err(),
            Err(_) => true,
        }
    }

    pub async fn admin(&self) -> Client {
        let opts = self.options("client.toml");
        let timeout = opts.timeout().max(std::time::Duration::from_secs(60));
        let opts = self
            .builder("client.toml")
            .timeout(timeout)
            .build()
            .unwrap();
        Client::connect(opts).await.unwrap()
    }

    pub async fn app(&self) -> Client {
        Client::connect(self.options("client-app.toml"))
            .await
            .unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("signerd.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.pid();
        let st = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let mut child = self.child.take().unwrap();
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "daemon did not exit"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGHUP (the daemon reloads its policy).
    #[allow(dead_code)]
    pub fn hangup(&self) {
        let st = Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Waits until the log has `n` lines containing `needle` (at most 20 s).
    #[allow(dead_code)]
    pub async fn wait_log(&self, needle: &str, n: usize) {
        let started = Instant::now();
        while self.log().matches(needle).count() < n {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no {needle:?} (x{n}) in the log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    #[allow(dead_code)]
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A unique key name for this test process.
/// Creates an ECDSA P-256 key named `prefix` plus a unique suffix (placed by the daemon's
/// defaults) and returns its name.
pub async fn ec_key(admin: &Client, prefix: &str) -> String {
    let name = unique(prefix);
    admin
        .create_key(&name, signerd::KeyType::EcP256, vec![])
        .await
        .unwrap();
    name
}

pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed))
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    (0..n).map(|_| rand::random::<u8>()).collect()
}

/// A counter's or gauge's value from `/metrics` (0 when absent).
pub fn metric(d: &Daemon, name: &str, labels: &[(&str, &str)]) -> f64 {
    let body = ureq::get(&format!("http://127.0.0.1:{}/metrics", d.admin_port))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap();
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map_or(0.0, |s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
}

/// `signerd audit verify` on the daemon's log (stopped or live); panics with the report unless it
/// verifies. Returns the report.
#[allow(dead_code)]
pub fn audit_verify(d: &Daemon) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_signerd"))
        .args(["audit", "verify"])
        .arg(d.path("audit/audit.log"))
        .output()
        .unwrap();
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && report.starts_with("OK"),
        "audit verify failed: {report}"
    );
    report
}

/// Tests that load the machine on purpose (floods, memory attacks) take this for their whole run,
/// so they never run beside each other and measure each other's load. (A tokio mutex: held
/// across awaits, and a failed test's guard is simply dropped.)
#[allow(dead_code)]
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}
