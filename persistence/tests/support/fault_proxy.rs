//! A TCP proxy between a client (the MongoDB sink) and a server (SecantusDB) that a test
//! can make slow — every chunk held `delay_ms` before it is forwarded, both ways — or make
//! reset — every open connection, and each new one, closed with RST (`SO_LINGER` 0).
//! Std threads only: one accept thread, two pump threads per connection.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct State {
    delay_ms: AtomicU64,
    resetting: AtomicBool,
    stopped: AtomicBool,
    /// Connections reset so far, and every connection's two sockets, to reset them.
    resets: AtomicU64,
    open: Mutex<Vec<(TcpStream, TcpStream)>>,
}

pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
}

fn reset(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
    let _ = s.shutdown(Shutdown::Both);
}

impl FaultProxy {
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let st = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if st.stopped.load(SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                if st.resetting.load(SeqCst) {
                    st.resets.fetch_add(1, SeqCst);
                    reset(&client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    reset(&client);
                    continue;
                };
                let pairs = [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server.try_clone().unwrap(), client.try_clone().unwrap()),
                ];
                st.open.lock().unwrap().push((client, server));
                for (from, to) in pairs {
                    let st = st.clone();
                    std::thread::spawn(move || pump(from, to, &st));
                }
            }
        });
        FaultProxy { addr, state }
    }

    /// The URI of the proxied server (SecantusDB's form).
    pub fn uri(&self) -> String {
        format!("mongodb://{}/?directConnection=true", self.addr)
    }

    pub fn set_delay_ms(&self, ms: u64) {
        self.state.delay_ms.store(ms, SeqCst);
    }

    /// Resets every open connection and each new one until `heal`.
    pub fn start_resetting(&self) {
        self.state.resetting.store(true, SeqCst);
        for (a, b) in self.state.open.lock().unwrap().drain(..) {
            self.state.resets.fetch_add(1, SeqCst);
            reset(&a);
            reset(&b);
        }
    }

    pub fn heal(&self) {
        self.state.resetting.store(false, SeqCst);
        self.state.delay_ms.store(0, SeqCst);
    }

    pub fn resets(&self) -> u64 {
        self.state.resets.load(SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.stopped.store(true, SeqCst);
        self.start_resetting();
        let _ = TcpStream::connect(self.addr); // wakes the accept thread
    }
}

/// Forwards `from` → `to`, holding each chunk `delay_ms` first; resets both on any error or
/// once the proxy resets.
fn pump(mut from: TcpStream, mut to: TcpStream, st: &State) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let delay = st.delay_ms.load(SeqCst);
        if delay > 0 {
            // The fault itself: this thread is the slow network, not a wait for an event.
            std::thread::sleep(Duration::from_millis(delay));
        }
        if st.resetting.load(SeqCst) || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    reset(&from);
    reset(&to);
}
