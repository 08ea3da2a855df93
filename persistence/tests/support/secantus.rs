//! SecantusDB, a third-party MongoDB-wire server on MongoDB's WiredTiger engine, run as a
//! separate service for the MongoDB sink's tests (it is GPL: run, never vendored or linked).
//! `scripts/install-python-deps.sh` installs it into `.venv` (or `$SOKDO_PY_VENV`); a test
//! that needs it fails, naming that script, when it is missing.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long SecantusDB may take to accept connections (it is slow to start: WiredTiger).
const START_WAIT: Duration = Duration::from_secs(60);

/// One `secantusd-py` on a free loopback port with its own storage; killed on drop.
pub struct Secantus {
    child: Option<Child>,
    port: u16,
    /// Its WiredTiger home, removed on drop.
    storage: PathBuf,
}

fn secantusd() -> PathBuf {
    let venv = std::env::var_os("SOKDO_PY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv"));
    let bin = venv.join("bin/secantusd-py");
    assert!(
        bin.exists(),
        "{} is missing: run scripts/install-python-deps.sh (it installs SecantusDB into the \
         project's venv; SOKDO_PY_VENV overrides where)",
        bin.display()
    );
    bin
}

impl Secantus {
    pub fn start_new() -> Secantus {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let storage =
            std::env::temp_dir().join(format!("sokdo-secantus-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&storage).expect("a storage directory");
        let mut s = Secantus {
            child: None,
            port,
            storage,
        };
        s.start();
        s
    }

    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }

    /// Starts it (again) on the same port and storage, and waits until it accepts.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new(secantusd())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--storage-path")
            .arg(&self.storage)
            .args(["--log-level", "WARNING"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start secantusd-py");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        // Polled (connect attempts, bounded), not slept: the engine's and persistence's test
        // crates both include this file, so it brings its own wait.
        let deadline = Instant::now() + START_WAIT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!("secantusd-py exited before accepting connections: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "SecantusDB did not accept connections within {START_WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills it and waits for it to exit; its storage stays for `start`.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Secantus {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.storage);
    }
}
