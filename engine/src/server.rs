//! Starting and stopping a process: listeners, shard threads, signals.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::sync::Arc;

use anyhow::Context as _;
use glommio::{LocalExecutorBuilder, Placement, PoolPlacement};
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;
use crate::instance::Instance;
use crate::mesh::Mesh;
use crate::metrics::Metrics;
use crate::persist::{Completions, StatsCollector};
use crate::wire::auth::Auth;
use sokdo_persistence::{Persistence, RoomSnapshot};

/// Pending connections the kernel holds per listener (capped by `net.core.somaxconn`).
const LISTEN_BACKLOG: i32 = 4096;

/// glommio's registered I/O memory per shard, in bytes: its floor. glommio reads *files*
/// through it (DMA buffers); sokdo's shards read and write only sockets (the log and the
/// store are the persistence threads', on their own rings), so nothing ever uses it. Its
/// default, 10 MiB, was written through at start (registering pins the pages) in every
/// shard, and counted three times against RLIMIT_MEMLOCK (issue 14).
const SHARD_IO_MEMORY_BYTES: usize = 64 * 1024;

/// The binaries' `main`: logging from `SOKDO_LOG`, the flags, the server; exit code 2 with
/// the reason when it cannot start or run.
pub fn main() -> std::process::ExitCode {
    use clap::Parser as _;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SOKDO_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cfg = Config::parse();
    match run(cfg) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sokdo: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Runs the server until it has drained after SIGTERM or SIGINT.
pub fn run(cfg: Config) -> anyhow::Result<()> {
    cfg.validate()?;
    let auth = auth_of(&cfg)?;
    crate::liveness::install_panic_hook();
    let cpus = allowed_cpus();
    let shards = cfg.shards.unwrap_or(cpus.len().max(1) as u16);
    if cfg.fault_injection {
        tracing::warn!("FAULT INJECTION: POST /debug/fault/… can crash this process (tests only)");
    }
    #[cfg(feature = "autobahn")]
    tracing::warn!(
        "TEST BUILD (feature autobahn): GET /autobahn echoes every message (docs/CONFORMANCE.md)"
    );
    if cfg.dev_mode() {
        tracing::warn!(
            "DEVELOPMENT MODE: no --jwt-secret nor --jwt-public-key-file; any client may connect as ?user=ID (loopback only)"
        );
    }
    let listeners = bind_all(cfg.listen, shards)?;
    let addr = listeners[0]
        .local_addr()?
        .as_socket()
        .context("listener has an IP address")?;
    eprintln!("sokdo configuration:\n{}", cfg.summary(shards));

    let (persistence, instance, rooms_by_shard, cluster) = open_instance(cfg, auth, shards)?;
    watch_signals(instance.clone())?;
    let mut handles = Vec::new();
    for ((id, listener), rooms) in listeners.into_iter().enumerate().zip(rooms_by_shard) {
        handles.push(start_shard(id as u16, listener, rooms, &instance, &cpus)?);
    }
    println!("listening on {addr}");
    for handle in handles {
        handle
            .join()
            .map_err(|e| anyhow::anyhow!("shard failed: {e}"))?;
    }
    if let Some(cluster) = cluster {
        cluster.leave();
    }
    tracing::info!("stopped");
    drop(persistence);
    Ok(())
}

/// The persistence threads (recovering the log first), the accounts store and everything
/// shards share; the recovered rooms, by home shard.
/// The keys for client tokens, read at start: a key file that cannot be used stops the
/// server with a message naming the flag.
fn auth_of(cfg: &Config) -> anyhow::Result<Auth> {
    let public = match &cfg.jwt_public_key_file {
        None => None,
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("--jwt-public-key-file: reading {}", path.display()))?;
            // Not UTF-8 (a DER file, say) is not a PEM: `from_pem` says so.
            let pem = std::str::from_utf8(&bytes).unwrap_or_default();
            let key = crate::wire::auth::PublicKey::from_pem(pem)
                .map_err(|e| anyhow::anyhow!("--jwt-public-key-file {}: {e}", path.display()))?;
            tracing::info!(alg = ?key.algorithm(), "client tokens verified with a public key");
            Some(key)
        }
    };
    Ok(Auth::with_keys(
        cfg.jwt_secret.as_deref(),
        public,
        cfg.jwt_leeway_s,
    ))
}

/// What `open_instance` opened.
type Opened = (
    Persistence,
    Arc<Instance>,
    Vec<Vec<RoomSnapshot>>,
    Option<crate::cluster::Running>,
);

fn open_instance(cfg: Config, auth: Auth, shards: u16) -> anyhow::Result<Opened> {
    let mesh = Arc::new(Mesh::new(
        shards as usize,
        cfg.shard_channel_messages_max as usize,
    ));
    let running = crate::cluster::start(&cfg, mesh.doorbells())?;
    let cluster = running.as_ref().map(|c| c.cluster.clone());
    let completions = Completions::new(mesh.doorbells());
    let (persistence, snapshots) = Persistence::open(cfg.persistence(), completions.sinks())
        .with_context(|| {
            format!(
                "opening the log and store in --data-dir {}",
                cfg.data_dir.display()
            )
        })?;
    tracing::info!(rooms = snapshots.len(), "recovered");
    if cfg.persistence_threads_idle {
        let n = idle_persistence_threads(&persistence)
            .context("--persistence-threads-idle: setting SCHED_IDLE on the persistence threads")?;
        tracing::info!(threads = n, "persistence threads run as SCHED_IDLE");
    }
    let mut rooms_by_shard: Vec<Vec<RoomSnapshot>> = (0..shards).map(|_| Vec::new()).collect();
    for snapshot in snapshots {
        rooms_by_shard[crate::placement::home_of(&snapshot.room, shards) as usize].push(snapshot);
    }
    let accounts = match (&cfg.accounts, &cfg.jwt_secret) {
        (true, Some(secret)) => Some(Arc::new(
            crate::accounts::Accounts::open(
                &cfg.data_dir.join("accounts.redb"),
                secret,
                cfg.token_ttl_s,
            )
            .context("opening accounts.redb")?,
        )),
        _ => None,
    };
    let places = Arc::new(crate::places::Places::new(
        crate::capacity::connections_max(&cfg) as usize,
        cfg.admission_queue_max as usize,
    ));
    let mut metrics = Metrics::new();
    metrics.register_collector(Box::new(StatsCollector {
        persist: persistence.handle(),
    }));
    metrics.register_collector(Box::new(crate::places::PlacesCollector(places.clone())));
    if let Some(cluster) = &cluster {
        metrics.register_collector(Box::new(crate::cluster::ClusterCollector(cluster.clone())));
    }
    let instance = Arc::new(Instance {
        name: cfg.instance(),
        auth,
        metrics,
        mesh,
        completions,
        persist: persistence.handle(),
        accounts,
        liveness: crate::liveness::Liveness::new(shards, cfg.stall_timeout_ms),
        places,
        ip_counts: crate::ip_counts::IpCounts::new(cfg.connections_per_ip_max),
        handshake_counts: crate::ip_counts::IpCounts::new(cfg.handshakes_per_ip_max),
        cluster,
        cfg,
    });
    Ok((persistence, instance, rooms_by_shard, running))
}

/// Starts shard `id`'s executor thread, pinned to its CPU unless `--pin false`.
fn start_shard(
    id: u16,
    listener: Socket,
    rooms: Vec<RoomSnapshot>,
    instance: &Arc<Instance>,
    cpus: &[usize],
) -> anyhow::Result<glommio::ExecutorJoinHandle<()>> {
    let placement = if instance.cfg.pin {
        Placement::Fixed(cpus[id as usize % cpus.len()])
    } else {
        Placement::Unbound
    };
    let instance = instance.clone();
    let fd = listener.into_raw_fd();
    let mut builder = LocalExecutorBuilder::new(placement)
        .name(&format!("sokdo-shard-{id}"))
        .io_memory(SHARD_IO_MEMORY_BYTES)
        // glommio's default (128) overflows the completion queue in a burst on a shard of
        // thousands of sockets; see `--io-ring-depth`.
        .ring_depth(instance.cfg.io_ring_depth as usize)
        // argon2 and account-store calls run on this pool: not pinned to the shard's core,
        // so the kernel may run them on a quieter one.
        .blocking_thread_pool_placement(PoolPlacement::Unbound(1));
    if instance.cfg.detect_stalls {
        builder = builder.detect_stalls(Some(Box::new(crate::liveness::StallReport)));
    }
    builder
        .spawn(move || async move {
            // SAFETY: `fd` is a listening socket this thread now owns alone.
            let listener = unsafe { glommio::net::TcpListener::from_raw_fd(fd) };
            crate::shard::run(id, instance.clone(), listener, rooms).await;
            if !instance.mesh.drain_requested() {
                crate::liveness::fatal(&format!("shard {id} stopped although no drain was asked"));
            }
        })
        .map_err(|e| anyhow::anyhow!("starting shard {id}: {e}"))
}

/// One `SO_REUSEPORT` listener per shard on the same address; the first one resolves
/// port 0 for the others.
fn bind_all(listen: SocketAddr, shards: u16) -> anyhow::Result<Vec<Socket>> {
    let mut addr = listen;
    let mut listeners = Vec::new();
    for _ in 0..shards {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket
            .bind(&addr.into())
            .with_context(|| format!("--listen {listen}: cannot bind"))?;
        socket.listen(LISTEN_BACKLOG)?;
        addr = socket
            .local_addr()?
            .as_socket()
            .context("listener has an IP address")?;
        listeners.push(socket);
    }
    Ok(listeners)
}

/// CPUs this process may run on (its affinity mask, e.g. as narrowed by `taskset`).
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `cpu_set_t` is plain data and `sched_getaffinity` writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above; the size passed is the size of `set`.
    let ok =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) }
            == 0;
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, the number of CPUs a `cpu_set_t` holds.
        .filter(|cpu| ok && unsafe { libc::CPU_ISSET(*cpu, &set) })
        .collect();
    if cpus.is_empty() {
        vec![0]
    } else {
        cpus
    }
}

/// First SIGTERM/SIGINT drains; a second one exits at once.
fn watch_signals(instance: Arc<Instance>) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("sokdo-signals".into())
        .spawn(move || {
            let mut draining = false;
            for signal in signals.forever() {
                if draining {
                    tracing::warn!(signal, "second signal: exiting without finishing the drain");
                    std::process::exit(1);
                }
                draining = true;
                tracing::info!(signal, "draining: /readyz now answers 503");
                instance.mesh.request_drain();
            }
        })?;
    Ok(())
}

/// Puts the persistence threads in `SCHED_IDLE` (`--persistence-threads-idle`); how many.
fn idle_persistence_threads(persistence: &Persistence) -> anyhow::Result<usize> {
    let threads = persistence.threads();
    for (name, thread) in &threads {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `thread` is a live thread of this process (`Persistence` holds its join
        // handle) and `param` is valid for the call's duration.
        let err = unsafe { libc::pthread_setschedparam(*thread, libc::SCHED_IDLE, &param) };
        if err != 0 {
            let e = std::io::Error::from_raw_os_error(err);
            anyhow::bail!("thread {name}: {e}");
        }
    }
    Ok(threads.len())
}
