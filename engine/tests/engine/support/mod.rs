//! Test harness: the real `sokdo` binary on a free loopback port, and a real WebSocket
//! client (tokio-tungstenite). Every wait is bounded; nothing sleeps to synchronise.
#![allow(dead_code)]

pub mod cluster;
pub mod haproxy;
pub mod netns;

use std::collections::{HashSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Longest any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// Every line the server wrote to stderr (also echoed to the test's stderr).
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    log_reader: Option<std::thread::JoinHandle<()>>,
    /// Set by a test that makes the server panic on purpose.
    panic_expected: bool,
    /// The server's `--jwt-secret`, when it has one: clients connect with a token then
    /// (development mode's `?user=` works only on loopback).
    jwt_secret: Option<String>,
}

/// A token for `user` signed with `secret` (HS256), valid for an hour.
pub fn user_token(secret: &str, user: &str) -> String {
    let claims = json!({"sub": user, "name": user, "exp": now_secs() + 3600});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign a token")
}

/// The server binary: `SOKDO_BIN` when set (to run these tests against another build),
/// else the one cargo built with this test.
pub fn sokdo_bin() -> std::path::PathBuf {
    std::env::var_os("SOKDO_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_sokdo").into())
}

impl Server {
    /// Starts `sokdo --listen 127.0.0.1:0 --shards 2 ARGS…` (ARGS may set `--listen` and
    /// `--shards`) on a
    /// fresh data directory and
    /// waits for its address.
    pub fn start(args: &[&str]) -> Server {
        let data = temp_dir("data");
        Server::start_in(&data, args)
    }

    /// Like `start`, on the given data directory (to restart on the same log and store).
    pub fn start_in(data: &std::path::Path, args: &[&str]) -> Server {
        Server::start_with_env(data, args, &[])
    }

    /// Like `start_in`, with extra environment variables.
    pub fn start_with_env(data: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_bin(&sokdo_bin(), data, args, env)
    }

    /// Like `start_with_env`, with another build of the server (`sokdo-autobahn`).
    pub fn start_bin(
        bin: &std::path::Path,
        data: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        Server::spawn(Command::new(bin), data, args, env)
    }

    /// Starts `command` (which runs the server binary, e.g. `ip netns exec NS sokdo`) with
    /// the harness's flags, then `args`, on `data`.
    pub fn start_command(
        command: Command,
        data: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        Server::spawn(command, data, args, env)
    }

    /// Like `start`, with the server started through `sh -c 'PREFIX; exec sokdo …'` (e.g. to
    /// move it into a cgroup first: the shell's pid becomes the server's).
    pub fn start_with_prefix(prefix: &str, args: &[&str]) -> Server {
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg(format!("{prefix} && exec \"$0\" \"$@\""))
            .arg(sokdo_bin());
        Server::spawn(sh, &temp_dir("data"), args, &[])
    }

    /// Starts `command` with the harness's flags, then `args`. The abuse limits (per-address
    /// connections, per-connection messages and pings) are off unless `args` set them.
    fn spawn(
        mut command: Command,
        data: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let shards: &[&str] = if args.contains(&"--shards") {
            &[]
        } else {
            &["--shards", "2"]
        };
        // The abuse limits are off unless `args` set them: the tests open many connections
        // from 127.0.0.1 and send as fast as they can (limits.rs and abuse.rs test them).
        let rate: Vec<&str> = [
            "--connections-per-ip-per-s",
            "--connections-per-ip-max",
            "--messages-per-connection-per-s",
            "--pings-per-connection-per-s",
        ]
        .into_iter()
        .filter(|flag| !args.contains(flag))
        .flat_map(|flag| [flag, "0"])
        .collect();
        let listen: &[&str] = if args.contains(&"--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let mut child = command
            .args(listen)
            .args(shards)
            .args(&rate)
            .arg("--data-dir")
            .arg(data)
            .args(args)
            .env("SOKDO_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sokdo");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let log_reader = {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("[sokdo] {line}");
                    log.lock().unwrap().push(line);
                }
            })
        };
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.parse::<SocketAddr>().expect("address"));
                }
            }
        });
        let addr = rx.recv_timeout(WAIT).expect("sokdo printed its address");
        Server {
            child: Some(child),
            addr,
            log,
            log_reader: Some(log_reader),
            panic_expected: false,
            jwt_secret: None,
        }
    }

    /// The server was started with `--jwt-secret secret`: clients connect with tokens.
    pub fn with_jwt_secret(mut self, secret: &str) -> Server {
        self.jwt_secret = Some(secret.to_owned());
        self
    }

    /// The query that authenticates `user`: a token if the server takes tokens, else
    /// development mode's `user=`.
    pub fn auth_query(&self, user: &str) -> String {
        match &self.jwt_secret {
            Some(secret) => format!("token={}", user_token(secret, user)),
            None => format!("user={user}"),
        }
    }

    /// The lines of the server's log that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.contains(needle)).cloned().collect()
    }

    /// This test makes the server panic on purpose: do not fail it for that.
    pub fn expect_panic(&mut self) {
        self.panic_expected = true;
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws?{query}", self.addr)
    }

    /// A plain HTTP/1.1 GET; returns the status and the body.
    pub fn get(&self, path: &str) -> (u16, String) {
        self.http("GET", path, &[], "")
    }

    /// A GET that gives up after `within` (a stalled shard may hold the socket): `None`
    /// when no complete answer came.
    pub fn try_get(&self, path: &str, within: Duration) -> Option<(u16, String)> {
        let mut s = std::net::TcpStream::connect_timeout(&self.addr, within).ok()?;
        s.set_read_timeout(Some(within)).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let status = out.get(9..12)?.parse().ok()?;
        let body = out.split_once("\r\n\r\n")?.1.to_owned();
        Some((status, body))
    }

    /// One HTTP/1.1 request (the server closes after answering); the status and the body.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read response");
        let status = out[9..12].parse().expect("status code");
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    /// The value of a metric summed over shards (0 when absent).
    /// The sum of a metric's samples (over its labels). A name `/metrics` does not export
    /// fails the test: a misspelt name (a counter without its `_total`) would read 0 forever
    /// and make an assertion that cannot fail.
    pub fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics");
        let samples: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .collect();
        assert!(!samples.is_empty(), "/metrics has no `{name}`");
        samples.iter().sum()
    }

    /// Resident memory of the server, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kb * 1024
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(self.pid() as i32, sig) }, 0);
    }

    /// Waits for the process to exit, at most `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(within) {
            Ok(status) => status.expect("wait"),
            Err(_) => {
                // SAFETY: killing our own child, which the waiting thread then reaps.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                panic!("sokdo did not exit within {within:?}");
            }
        }
    }
}

impl Drop for Server {
    /// Stops the server and fails the test if the server's log shows a panic: a shard that
    /// dies quietly must never pass a test.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The pipe closes with the process: the reader ends once it has read everything.
        if let Some(reader) = self.log_reader.take() {
            let _ = reader.join();
        }
        if !self.panic_expected && !std::thread::panicking() {
            let panics = self.log_lines("panicked");
            assert!(panics.is_empty(), "the server panicked: {panics:?}");
        }
    }
}

/// A new empty directory under the system's temporary directory.
pub fn temp_dir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sokdo-test-{what}-{}-{}",
        std::process::id(),
        unique()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Waits until `cond` holds, polling, for at most `WAIT`.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Client {
    pub ws: Ws,
    pub hello: Value,
    next_id: u64,
    events: VecDeque<Value>,
}

impl Client {
    pub async fn connect(server: &Server, user: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(server.ws_url(&server.auth_query(user)))
            .await
            .expect("upgrade");
        Client::from_ws(ws).await
    }

    /// Like `connect`, from the given local address (another loopback address: 127.0.0.2).
    pub async fn connect_from(server: &Server, user: &str, local: std::net::IpAddr) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(local, 0))
            .expect("bind the local address");
        let stream = socket.connect(server.addr).await.expect("connect");
        let (ws, _) = tokio_tungstenite::client_async(
            server.ws_url(&server.auth_query(user)),
            MaybeTlsStream::Plain(stream),
        )
        .await
        .expect("upgrade");
        Client::from_ws(ws).await
    }

    pub async fn from_ws(ws: Ws) -> Client {
        let mut c = Client {
            ws,
            hello: Value::Null,
            next_id: 0,
            events: VecDeque::new(),
        };
        c.hello = c.recv().await;
        assert_eq!(c.hello["op"], "hello", "first frame is hello: {}", c.hello);
        c
    }

    /// A client whose `hello` the test already read (after waiting in the admission queue).
    pub fn from_ws_admitted(ws: Ws, hello: Value) -> Client {
        Client {
            ws,
            hello,
            next_id: 0,
            events: VecDeque::new(),
        }
    }

    pub fn shard(&self) -> u64 {
        self.hello["shard"].as_u64().unwrap()
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// Next JSON frame from the socket (bounded wait).
    pub async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame within the wait")
                .expect("connection open")
                .expect("frame");
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).expect("JSON"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// Sends a request with a fresh id and returns its reply; events read meanwhile are
    /// kept for `event()`.
    pub async fn request(&mut self, mut req: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        req["id"] = json!(id);
        self.send_raw(&req.to_string()).await;
        loop {
            let v = self.recv().await;
            if v["id"] == json!(id) {
                return v;
            }
            self.events.push_back(v);
        }
    }

    pub async fn ok(&mut self, req: Value) -> Value {
        let reply = self.request(req.clone()).await;
        assert_eq!(reply["op"], "ok", "{req} -> {reply}");
        reply
    }

    /// Next pushed event (no id).
    pub async fn event(&mut self) -> Value {
        if let Some(v) = self.events.pop_front() {
            return v;
        }
        self.recv().await
    }

    /// Next event of the given op, skipping others.
    pub async fn event_of(&mut self, op: &str) -> Value {
        loop {
            let v = self.event().await;
            if v["op"] == op {
                return v;
            }
        }
    }

    /// Reads until the server's close frame; returns its code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("close within the wait");
            match msg {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (u16::from(frame.code), frame.reason.to_string())
                }
                Some(Ok(Message::Close(None))) => {
                    return (u16::from(CloseCode::Status), String::new())
                }
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }
}

/// A client whose socket has a 4 KiB receive buffer, so a server's queue to it fills fast
/// once it stops reading.
pub async fn small_buffer_client(server: &Server, user: &str) -> Client {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = MaybeTlsStream::Plain(socket.connect(server.addr).await.unwrap());
    let (ws, _) = tokio_tungstenite::client_async(server.ws_url(&format!("user={user}")), stream)
        .await
        .unwrap();
    Client::from_ws(ws).await
}

/// The seqs of a reply's `messages` (`history`, `search`), in the reply's order.
pub fn seqs_of(reply: &Value) -> Vec<u64> {
    reply["messages"]
        .as_array()
        .expect("a messages array")
        .iter()
        .map(|m| m["seq"].as_u64().expect("a seq"))
        .collect()
}

/// Connects clients until at least one lands on each of the two shards.
pub async fn clients_on_both_shards(server: &Server, n: usize) -> Vec<Client> {
    let mut clients = Vec::new();
    let mut i = 0;
    while clients.len() < n
        || clients
            .iter()
            .map(Client::shard)
            .collect::<HashSet<_>>()
            .len()
            < 2
    {
        assert!(
            i < n + 200,
            "the kernel never spread connections over both shards"
        );
        clients.push(Client::connect(server, &format!("u{i}")).await);
        i += 1;
    }
    clients
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Everything a socket receives until the peer closes it (or resets it).
pub async fn read_to_end(
    stream: tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let tokio_tungstenite::MaybeTlsStream::Plain(mut stream) = stream else {
        unreachable!("tests connect in plain TCP")
    };
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(WAIT, stream.read(&mut buf)).await;
        match read.expect("the server closes the idle connection") {
            Ok(0) | Err(_) => return raw,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
}

/// FNV-1a (64 bits) of the room id, modulo the shards: the placement the engine documents
/// (engine/src/placement.rs), computed here independently, as another program would.
pub fn home_of(room: &str, shards: u64) -> u64 {
    let hash = room.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    hash % shards
}
