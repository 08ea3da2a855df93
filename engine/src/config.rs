//! Configuration: one struct, every limit a flag with its unit last in the name, each flag
//! also readable from a `SOKDO_*` environment variable. Read-only after start-up, so the
//! shards may share it through an `Arc`.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{CommandFactory, Parser};
use serde::{Serialize, Serializer};
use sokdo_persistence::Durability;

/// The effective configuration of one `sokdo` process. It serialises (for [`Config::summary`]
/// and `Debug`) with every secret redacted.
#[derive(Parser, Clone, Serialize)]
#[command(
    name = "sokdo",
    version,
    about = "sokdo: a thread-per-core WebSocket chat engine"
)]
pub struct Config {
    /// Address to listen on (HTTP and WebSocket share it). Port 0 picks a free port; the
    /// chosen address is printed on stdout as `listening on ADDR`.
    #[arg(long, env = "SOKDO_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Number of shards (one pinned executor per shard). Default: the CPUs this process may
    /// run on.
    #[arg(long, env = "SOKDO_SHARDS", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub shards: Option<u16>,

    /// Submission entries of each shard's io_uring rings (its completion queue holds twice
    /// as many). Every socket a shard waits on has a request in flight, so a burst can
    /// complete more than the queue holds; the kernel keeps the excess in memory it
    /// allocates atomically, and where that fails — a memory cgroup at its limit — drops
    /// completions, which stops the shard (issue 14: seen at 66,500 users in 2 GiB). Larger
    /// rings cost ≈ 100 bytes of kernel memory per entry per ring (three per shard).
    #[arg(long, env = "SOKDO_IO_RING_DEPTH", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(128..=32768))]
    pub io_ring_depth: u32,

    /// Pin each shard to one CPU of the process's affinity mask.
    #[arg(long, env = "SOKDO_PIN", default_value_t = true, action = clap::ArgAction::Set)]
    pub pin: bool,

    /// Directory for the write-ahead log and the embedded store.
    #[arg(long, env = "SOKDO_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// When a `send` is acknowledged: `sync` after its record is fdatasync'd in the log
    /// (a crash loses no acknowledged message); `async` at once (a crash may lose the last
    /// unsynced group).
    #[arg(long, env = "SOKDO_DURABILITY", default_value = "sync", value_parser = durability_parser())]
    #[serde(serialize_with = "durability_name")]
    pub durability: Durability,

    /// Most bytes the write-ahead log may hold while the sink catches up; past it, sends
    /// get `unavailable`.
    #[arg(long, env = "SOKDO_WAL_BYTES_MAX", default_value_t = 256 << 20, value_parser = clap::value_parser!(u64).range(8192..))]
    pub wal_bytes_max: u64,

    /// Size of one log segment; the log is trimmed a whole segment at a time.
    #[arg(long, env = "SOKDO_WAL_SEGMENT_BYTES", default_value_t = 16 << 20, value_parser = clap::value_parser!(u64).range(4096..))]
    pub wal_segment_bytes: u64,

    /// While the log cannot be written (disk full, I/O error), it is probed again after
    /// 100 ms, the wait doubling up to this bound.
    #[arg(long, env = "SOKDO_WAL_RETRY_BACKOFF_MAX_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub wal_retry_backoff_max_ms: u64,

    /// A write-behind batch is written once it holds this many records…
    #[arg(long, env = "SOKDO_BATCH_MESSAGES_MAX", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch_messages_max: u64,

    /// …or once its oldest record has waited this long.
    #[arg(long, env = "SOKDO_BATCH_AGE_MS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub batch_age_ms: u64,

    /// The write-behind sink writes its batches as `SCHED_IDLE` (only in CPU time the shards
    /// leave: its store commits no longer delay a shard on the same core) until a record has
    /// waited this long for it; then as a normal thread until it has caught up (below half).
    /// A batch waits --batch-age-ms, so a lag not well above it keeps the sink normal; 0:
    /// always a normal thread. Needs CAP_SYS_NICE or
    /// RLIMIT_NICE >= 20 to leave SCHED_IDLE (systemd: LimitNICE=+0); without, the sink stays
    /// normal and says so at start (docs/PERSISTENCE.md "The sink's scheduling").
    #[arg(long, env = "SOKDO_SINK_IDLE_LAG_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub sink_idle_lag_ms: u64,

    /// Write messages behind to MongoDB (official driver) instead of the embedded store.
    #[arg(long, env = "SOKDO_MONGODB_URI", hide_env_values = true)]
    #[serde(serialize_with = "uri_redacted")]
    pub mongodb_uri: Option<String>,

    /// MongoDB database name.
    #[arg(long, env = "SOKDO_MONGODB_DATABASE", default_value = "sokdo")]
    pub mongodb_database: String,

    // === Tokens (docs/PROTOCOL.md "Authentication", docs/SECURITY.md "Tokens") ===
    /// HS256 secret for client JWTs. Without it (and without --jwt-public-key-file) the
    /// server runs in development mode and accepts `?user=ID`, which it allows only on a
    /// loopback address.
    #[arg(long, env = "SOKDO_JWT_SECRET", hide_env_values = true)]
    #[serde(serialize_with = "redacted")]
    pub jwt_secret: Option<String>,

    /// Public key (SPKI PEM, `-----BEGIN PUBLIC KEY-----`) for client JWTs signed by an
    /// identity service: RSA → RS256, EC P-256 → ES256; any other key type is refused at
    /// start. With --jwt-secret too, a token's `alg` picks the key (HS256 the secret).
    #[arg(long, env = "SOKDO_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// Clock skew allowed between the token issuer and this server, in seconds, for `exp`,
    /// `nbf` and `iat` (an open connection is closed 4001 at `exp` + this).
    #[arg(long, env = "SOKDO_JWT_LEEWAY_S", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=300))]
    pub jwt_leeway_s: u64,
    // === end of Tokens ===
    /// Key a back end sends as `X-Api-Key` to `POST /api/rooms/{room}/messages`; without it
    /// that endpoint is disabled.
    #[arg(long, env = "SOKDO_API_KEY", hide_env_values = true)]
    #[serde(serialize_with = "redacted")]
    pub api_key: Option<String>,

    /// Serve `GET /debug/pprof/profile` (an on-demand CPU profile: docs/PROFILING.md) behind
    /// --api-key. Without an API key the endpoint answers 403 whatever this says.
    #[arg(long, env = "SOKDO_DEBUG_ENDPOINTS", default_value_t = true, value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub debug_endpoints: bool,

    /// Serve `/api/auth/register|login|password` (accounts kept in `accounts.redb`).
    /// Needs --jwt-secret to sign the tokens it issues.
    #[arg(long, env = "SOKDO_ACCOUNTS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub accounts: bool,

    /// Lifetime of tokens issued by `/api/auth/login`.
    #[arg(long, env = "SOKDO_TOKEN_TTL_S", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(60..))]
    pub token_ttl_s: u64,

    /// Name of this instance in `hello` and metrics. Default: `sokdo-<pid>`.
    #[arg(long, env = "SOKDO_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// `join` of an unknown room creates it as a public room.
    #[arg(long, env = "SOKDO_AUTO_CREATE_ROOMS", default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_create_rooms: bool,

    /// Largest message body, in bytes of UTF-8.
    #[arg(long, env = "SOKDO_BODY_BYTES_MAX", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub body_bytes_max: u32,

    /// Largest WebSocket message a client may send (after reassembly); larger closes 1009.
    #[arg(long, env = "SOKDO_FRAME_BYTES_MAX", default_value_t = 16384, value_parser = clap::value_parser!(u32).range(128..=16_777_216))]
    pub frame_bytes_max: u32,

    /// Hard cap on the bytes queued for one connection: a frame that would pass it closes
    /// the connection 1013 `slow consumer`. Sized for bursts (4 MiB: ~1,000 messages of the
    /// default 4 KiB body, handed over faster than one turn of the shard writes them); a
    /// client that stops reading is caught earlier by `--write-stall-timeout-ms`.
    #[arg(long, env = "SOKDO_OUTBOUND_QUEUE_BYTES_MAX", default_value_t = 4 << 20, value_parser = clap::value_parser!(u32).range(1024..))]
    pub outbound_queue_bytes_max: u32,

    /// How long a delivery that reaches a connection's empty queue waits before the
    /// connection writes, so that deliveries arriving meanwhile go out in one `sendmsg`:
    /// fewer syscalls per delivery, for up to this much latency. 0 writes at once. Replies to
    /// the connection's own requests and close frames are never delayed, and take the waiting
    /// deliveries with them.
    #[arg(long, env = "SOKDO_WRITE_COALESCE_US", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub write_coalesce_us: u64,

    /// A connection whose socket is full (a write was refused) and accepts none of its
    /// queued bytes for this long is closed 1013 `slow consumer` (a stall, not a burst).
    /// Checked every tick.
    #[arg(long, env = "SOKDO_WRITE_STALL_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub write_stall_timeout_ms: u64,

    /// Most messages a `join` with `after_seq` replays; a client further behind gets the
    /// newest this many and `"recovered": false` in the `ok`, and pages older ones with
    /// `history`.
    #[arg(long, env = "SOKDO_REPLAY_MESSAGES_MAX", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub replay_messages_max: u64,

    /// Own messages remembered by seq per member after its read pointer, so that they do not
    /// count as unread; older ones are remembered only by count (`unread` stays exact unless
    /// a `read` stops among those).
    #[arg(long, env = "SOKDO_OWN_MESSAGES_AFTER_READ_MAX", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub own_messages_after_read_max: u32,

    /// Recent messages each room keeps in memory for replay and history.
    #[arg(long, env = "SOKDO_HISTORY_RING_MESSAGES_MAX", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub history_ring_messages_max: u32,

    /// Estimated bytes each shard keeps of its rooms' recent messages (rings) and search
    /// indexes. Past it, the rooms whose last message is oldest lose theirs: their history
    /// and replays are read from the store, and search finds only their messages sent
    /// after that. `sokdo_room_cache_*` in /metrics.
    #[arg(long, env = "SOKDO_ROOM_CACHE_BYTES_PER_SHARD", default_value_t = 32 << 20, value_parser = clap::value_parser!(u64).range(65_536..=(1 << 40)))]
    pub room_cache_bytes_per_shard: u64,

    /// Shortest interval between two `typing` notices of one connection.
    #[arg(long, env = "SOKDO_TYPING_INTERVAL_MS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub typing_interval_ms: u64,

    /// `client_msg_id`s each room remembers for retries (the retry window, by count).
    #[arg(long, env = "SOKDO_IDEMPOTENCY_KEYS_MAX", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub idempotency_keys_max: u32,

    /// Rooms one connection may be joined to at once.
    #[arg(long, env = "SOKDO_ROOMS_PER_CONNECTION_MAX", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub rooms_per_connection_max: u32,

    /// Rooms each shard may home.
    #[arg(long, env = "SOKDO_ROOMS_PER_SHARD_MAX", default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub rooms_per_shard_max: u32,

    /// Largest room id, in bytes.
    #[arg(long, env = "SOKDO_ROOM_ID_BYTES_MAX", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub room_id_bytes_max: u32,

    /// Admitted WebSocket connections, for the whole instance (every shard); past it, new
    /// ones are upgraded but wait in the instance's admission queue (`queued` with their
    /// position) until a place frees. `auto`: the memory budget (cgroup limit, or MemTotal;
    /// × --memory-budget-percent, minus 64 MiB) ÷ --connection-memory-bytes, capped by the
    /// open-file soft limit minus 100 (logged at start, `sokdo_connections_max`).
    #[arg(long, env = "SOKDO_CONNECTIONS_MAX", default_value = "auto", value_parser = parse_connections_max)]
    pub connections_max: ConnectionsMax,

    /// Connections the instance's admission queue holds; past it (and every place taken),
    /// upgrades get HTTP 503 with `Retry-After`.
    #[arg(long, env = "SOKDO_ADMISSION_QUEUE_MAX", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(0..=10_000_000))]
    pub admission_queue_max: u32,

    /// `--connections-max auto`: the share of the memory limit connections may use, in
    /// percent.
    #[arg(long, env = "SOKDO_MEMORY_BUDGET_PERCENT", default_value_t = 80, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub memory_budget_percent: u32,

    /// `--connections-max auto`: memory one admitted connection costs, in bytes. The default
    /// is a user under the seeds' load (rooms of 50, 1 msg/10 s) once its rooms' rings are
    /// full: 21,794 bytes by the capacity model `tuning/models/2vcpu-1core-server.json`
    /// (`sokdo-tune plan`, docs/CAPACITY.md), rounded up.
    #[arg(long, env = "SOKDO_CONNECTION_MEMORY_BYTES", default_value_t = 22_000, value_parser = clap::value_parser!(u64).range(1_000..=1_000_000_000))]
    pub connection_memory_bytes: u64,

    /// WebSocket upgrades one client address may make per second, on average (a token
    /// bucket, shared out over the shards); past it, HTTP 429 with `Retry-After`. 0 turns
    /// the limit off (behind a proxy every client has the proxy's address).
    #[arg(long, env = "SOKDO_CONNECTIONS_PER_IP_PER_S", default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub connections_per_ip_per_s: u32,

    /// Upgrades one client address may make at once before `--connections-per-ip-per-s`
    /// paces it (the bucket's size), in connections.
    #[arg(long, env = "SOKDO_CONNECTIONS_PER_IP_BURST", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub connections_per_ip_burst: u32,

    // --- Abuse limits (connection) ---
    /// Requests (text frames, every op) one connection may send per second, on average (a
    /// token bucket); past it, each request is answered `rate_limited` with
    /// `retry_after_ms`. 0 turns the limit off.
    #[arg(long, env = "SOKDO_MESSAGES_PER_CONNECTION_PER_S", default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub messages_per_connection_per_s: u32,

    /// Requests one connection may send at once before `--messages-per-connection-per-s`
    /// paces it (the bucket's size), in requests.
    #[arg(long, env = "SOKDO_MESSAGES_PER_CONNECTION_BURST", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub messages_per_connection_burst: u32,

    /// `rate_limited` replies in a row (no request let through between them) after which
    /// the connection is closed with 1008 `rate limit exceeded`.
    #[arg(long, env = "SOKDO_RATE_LIMITED_REPLIES_MAX", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate_limited_replies_max: u32,

    /// WebSocket pings one connection may send per second, on average (a token bucket of
    /// twice this many); past it, the connection is closed with 1008 `ping rate exceeded`.
    /// 0 turns the limit off.
    #[arg(long, env = "SOKDO_PINGS_PER_CONNECTION_PER_S", default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub pings_per_connection_per_s: u32,

    /// Upgraded WebSocket connections (admitted or queued) one client address may hold at
    /// once, for the whole instance; past it, HTTP 429 with `Retry-After`. 0 turns the
    /// limit off.
    #[arg(long, env = "SOKDO_CONNECTIONS_PER_IP_MAX", default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(0..=10_000_000))]
    pub connections_per_ip_max: u32,

    /// Sockets one client address may hold open before their HTTP request is read (TCP
    /// accepted, no upgrade or request yet), for the whole instance; past it, a new socket
    /// from that address is closed at once, without reading it. Bounds what an address can
    /// hold with handshakes it never finishes (each lives up to `--handshake-timeout-ms`).
    /// 0 turns the limit off.
    #[arg(long, env = "SOKDO_HANDSHAKES_PER_IP_MAX", default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=10_000_000))]
    pub handshakes_per_ip_max: u32,

    /// Interval of server WebSocket pings.
    #[arg(long, env = "SOKDO_HEARTBEAT_MS", default_value_t = 25_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub heartbeat_ms: u64,

    /// A connection that sends nothing (not even a pong) for this long is closed.
    #[arg(long, env = "SOKDO_IDLE_TIMEOUT_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(200..))]
    pub idle_timeout_ms: u64,

    /// Time a new socket has to complete its HTTP request or WebSocket upgrade.
    #[arg(long, env = "SOKDO_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub handshake_timeout_ms: u64,

    /// Time a closing connection has to take its close frame before the socket is dropped.
    #[arg(long, env = "SOKDO_CLOSE_TIMEOUT_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub close_timeout_ms: u64,

    /// Largest HTTP request head (request line and headers).
    #[arg(long, env = "SOKDO_HTTP_REQUEST_BYTES_MAX", default_value_t = 8192, value_parser = clap::value_parser!(u32).range(256..=1_048_576))]
    pub http_request_bytes_max: u32,

    /// Capacity of each shard-to-shard channel, in messages.
    #[arg(long, env = "SOKDO_SHARD_CHANNEL_MESSAGES_MAX", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(16..))]
    pub shard_channel_messages_max: u32,

    /// Messages a shard holds for one other shard whose channel is full, in messages. At the
    /// bound, new requests whose effects would go to that shard are refused `unavailable`
    /// (nothing accepted is dropped; see docs/ARCHITECTURE.md, "Every queue is bounded").
    #[arg(long, env = "SOKDO_SHARD_OUTBOX_MESSAGES_MAX", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(1..))]
    pub shard_outbox_messages_max: u32,

    /// Report glommio task queues that run past their time slice (a task hogging a shard)
    /// with a backtrace in the log and in `sokdo_stalls_total`. On by default in debug
    /// builds; `sokdo-bench` turns it on for the servers it starts.
    #[arg(long, env = "SOKDO_DETECT_STALLS", default_value_t = cfg!(debug_assertions), value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub detect_stalls: bool,

    /// On SIGTERM, spread the closing of connections over this long, so clients do not all
    /// reconnect to the other instances at the same instant.
    #[arg(long, env = "SOKDO_DRAIN_SPREAD_MS", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub drain_spread_ms: u64,

    /// Upper bound on the whole drain; the process exits by then whatever remains.
    #[arg(long, env = "SOKDO_DRAIN_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub drain_timeout_ms: u64,

    /// `/healthz` answers 503 while a shard has not run its ticker for this long (a shard
    /// stuck in a loop or a blocking call), so that a load balancer moves its users.
    #[arg(long, env = "SOKDO_STALL_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub stall_timeout_ms: u64,

    /// Run the persistence threads (`sokdo-wal`, `sokdo-sink`, `sokdo-read`) as
    /// `SCHED_IDLE`: on a core they share with a shard they then never delay it, only take
    /// what it leaves (docs/BENCHMARKS.md: seed 002's p99 about 4 → 2 ms on one core). Off by
    /// default: a shard that keeps its core busy then starves them, and the log and the
    /// store fall behind (sends are refused `unavailable` once the log is full).
    #[arg(long, env = "SOKDO_PERSISTENCE_THREADS_IDLE", default_value_t = false, value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub persistence_threads_idle: bool,

    /// Test only: serve `POST /debug/fault/…` to make a shard or the log thread panic or
    /// stall. Refused unless in development mode (no --jwt-secret).
    #[arg(long, env = "SOKDO_FAULT_INJECTION", hide = true, value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub fault_injection: bool,

    /// `reconnect_after_ms` told to clients in the `closing` event (each gets a jittered
    /// value up to this).
    #[arg(long, env = "SOKDO_RECONNECT_AFTER_MS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub reconnect_after_ms: u64,

    // === Abuse limits (rooms and passwords) ===
    /// `rooms` queries one connection may make per second (bursts of as many); over it
    /// → `rate_limited` with `retry_after_ms`. 0: no limit.
    #[arg(long, env = "SOKDO_ROOM_QUERIES_PER_CONNECTION_PER_S", default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub room_queries_per_connection_per_s: u32,

    /// Most rooms one shard looks at for one `rooms` query (in room id order from the
    /// cursor); a query whose filter matches few rooms answers a short page with a
    /// `cursor` to go on from, so no query costs more than this per shard.
    #[arg(long, env = "SOKDO_ROOMS_QUERY_SCAN_ROOMS_MAX", default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(101..=10_000_000))]
    pub rooms_query_scan_rooms_max: u32,

    /// Wrong room passwords one user may give for one room within
    /// `--auth-failure-window-ms`; then its `join`s with a password get `rate_limited`.
    #[arg(long, env = "SOKDO_ROOM_PASSWORD_FAILURES_MAX", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub room_password_failures_max: u32,

    /// Wrong room passwords from one client address (any user, any room) within the
    /// window, counted on each room's home shard; then `rate_limited`.
    #[arg(long, env = "SOKDO_ROOM_PASSWORD_FAILURES_PER_IP_MAX", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub room_password_failures_per_ip_max: u32,

    /// Room password checks (argon2) one shard runs at once; a `join` past it gets
    /// `unavailable` at once instead of queueing behind them. Each user has at most one
    /// check in flight per shard (a second → `rate_limited`).
    #[arg(long, env = "SOKDO_PASSWORD_CHECKS_IN_FLIGHT_MAX", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1_024))]
    pub password_checks_in_flight_max: u32,

    /// Failed `/api/auth/login|password` calls for one account from one client address
    /// within the window; then that account is refused from that address (429) — the owner
    /// from another address is not.
    #[arg(long, env = "SOKDO_LOGIN_FAILURES_MAX", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub login_failures_max: u32,

    /// Failed logins from one client address (any account) within the window; then every
    /// login from that address is refused (429).
    #[arg(long, env = "SOKDO_LOGIN_FAILURES_PER_IP_MAX", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub login_failures_per_ip_max: u32,

    /// The window of the login and room password failure counts: a key that reached its
    /// bound is heard again this long after its first failure.
    #[arg(long, env = "SOKDO_AUTH_FAILURE_WINDOW_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(100..=86_400_000))]
    pub auth_failure_window_ms: u64,

    // === Cluster (docs/REPLICATION.md "Membership") ===
    /// The other instances' cluster addresses, `host:port,…` (UDP, resolved at start): the
    /// configured members are these plus this instance. Without it the instance runs alone
    /// and replication is off.
    #[arg(long, env = "SOKDO_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,

    /// This instance's name in the cluster: 1–64 of `[a-z0-9-]`, unique, stable across
    /// restarts. Required with --peers.
    #[arg(long, env = "SOKDO_NODE_ID", value_parser = parse_node_id)]
    pub node_id: Option<String>,

    /// UDP address the membership protocol (SWIM) listens on. Required with --peers; a fixed
    /// port (the peers list it).
    #[arg(long, env = "SOKDO_CLUSTER_LISTEN")]
    pub cluster_listen: Option<SocketAddr>,

    /// The cluster address the peers reach this instance at. Default: --cluster-listen;
    /// required when that is a wildcard address (0.0.0.0, ::).
    #[arg(long, env = "SOKDO_CLUSTER_ADVERTISE")]
    pub cluster_advertise: Option<SocketAddr>,

    /// How often one random member is probed; a member that does not answer within a period
    /// (directly or through others) becomes suspect.
    #[arg(long, env = "SOKDO_CLUSTER_PROBE_PERIOD_MS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub cluster_probe_period_ms: u64,

    /// How long a probe waits for a direct answer before asking others to probe indirectly
    /// (a high quantile of the network's round trip). Below --cluster-probe-period-ms.
    #[arg(long, env = "SOKDO_CLUSTER_PROBE_RTT_MS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=30_000))]
    pub cluster_probe_rtt_ms: u64,

    /// How long a suspect member has to refute the suspicion before it is declared down.
    #[arg(long, env = "SOKDO_CLUSTER_SUSPECT_TO_DOWN_MS", default_value_t = 3_000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub cluster_suspect_to_down_ms: u64,

    /// Frames queued for one peer's outbound link (TCP on the cluster port). A link whose
    /// queue is full is dropped and dialled again; the peer is then resynchronised from the
    /// room owners' logs (appends resent, deliveries replayed), so memory stays bounded.
    #[arg(long, env = "SOKDO_CLUSTER_LINK_QUEUE_FRAMES", default_value_t = 8_192, value_parser = clap::value_parser!(u32).range(16..=1_000_000))]
    pub cluster_link_queue_frames: u32,

    /// Longest wait between two dials of a peer that cannot be reached (the first is 50 ms,
    /// doubled after each failure).
    #[arg(long, env = "SOKDO_CLUSTER_LINK_BACKOFF_MAX_MS", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub cluster_link_backoff_max_ms: u64,

    /// Events (datagrams, peer frames, sends from the shards) the cluster thread's channel
    /// holds; a send that finds it full is answered `overloaded`.
    #[arg(long, env = "SOKDO_CLUSTER_QUEUE_EVENTS", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(64..=4_194_304))]
    pub cluster_queue_events: u32,

    /// How long a `send` waits for the room's owner to acknowledge it before the client is
    /// answered `unavailable` (the message may still be acknowledged: retry with the same
    /// `client_msg_id`).
    #[arg(long, env = "SOKDO_CLUSTER_PUBLISH_TIMEOUT_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub cluster_publish_timeout_ms: u64,

    /// How often the room machines resend what is unanswered (claims, appends) and catch-up
    /// replays are retried.
    #[arg(long, env = "SOKDO_CLUSTER_TICK_MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    pub cluster_tick_ms: u64,

    /// Acknowledged records the cluster thread queues for one home shard. A shard that lags
    /// (busy, stalled) is not sent more: its rooms' records beyond the bound are dropped
    /// and the room is caught up from its owner's log once the queue has room again, so
    /// memory stays bounded and nothing is missed.
    #[arg(long, env = "SOKDO_CLUSTER_HOME_QUEUE_RECORDS", default_value_t = 8_192, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub cluster_home_queue_records: u32,

    /// Acknowledged records each room's machine keeps in memory below the end of its
    /// acknowledged prefix (with every record after it); older ones are read back from
    /// `cluster.redb` when a replica, a home or a claimant is behind. A restart loads
    /// only these tails.
    #[arg(long, env = "SOKDO_CLUSTER_LOG_TAIL_RECORDS", default_value_t = 512, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub cluster_log_tail_records: u64,

    /// Room machines (one per room this instance owns, replicates or was asked about) the
    /// cluster thread keeps in memory. Beyond it, each tick drops quiescent ones — not the
    /// owner nor claiming, no interest registered, nothing waiting or unwritten, idle for
    /// --cluster-room-idle-ms — least recently used first; the next frame or send for the
    /// room rebuilds its machine from `cluster.redb`. Owners and busy rooms are never
    /// dropped, so this is a target, not a hard cap. 0: drop every quiescent machine.
    #[arg(long, env = "SOKDO_CLUSTER_ROOMS_IN_MEMORY_MAX", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(0..=100_000_000))]
    pub cluster_rooms_in_memory_max: u64,

    /// How long a room machine has had no input but ticks and views before it may be
    /// dropped beyond --cluster-rooms-in-memory-max.
    #[arg(long, env = "SOKDO_CLUSTER_ROOM_IDLE_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(0..=86_400_000))]
    pub cluster_room_idle_ms: u64,

    /// How often this instance renews, with each room's owner, its interest in the rooms it
    /// has members in, in ms. An owner drops a registration not renewed within three of
    /// these (so an instance that owned a room before a view change forgets the others'
    /// registrations and may evict the room). Give every instance the same value.
    #[arg(long, env = "SOKDO_CLUSTER_INTEREST_REFRESH_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub cluster_interest_refresh_ms: u64,
    // === end of Cluster ===
}

/// `--connections-max`: `auto` (derived from the host, `capacity`) or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionsMax {
    Auto,
    Fixed(u32),
}

impl Serialize for ConnectionsMax {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ConnectionsMax::Auto => s.serialize_str("auto"),
            ConnectionsMax::Fixed(n) => s.serialize_u32(*n),
        }
    }
}

/// Most connections one instance may be told to admit.
const CONNECTIONS_MAX_LIMIT: u32 = 100_000_000;

fn parse_connections_max(value: &str) -> Result<ConnectionsMax, String> {
    if value == "auto" {
        return Ok(ConnectionsMax::Auto);
    }
    match value.parse::<u32>() {
        Ok(n) if (1..=CONNECTIONS_MAX_LIMIT).contains(&n) => Ok(ConnectionsMax::Fixed(n)),
        _ => Err(format!(
            "expected `auto` or a number of connections from 1 to {CONNECTIONS_MAX_LIMIT}"
        )),
    }
}

fn parse_node_id(value: &str) -> Result<String, String> {
    if sokdo_replication::membership::valid_node_id(value) {
        Ok(value.to_owned())
    } else {
        Err("expected 1–64 of [a-z0-9-]".to_owned())
    }
}

/// `--durability`'s names, parsed straight into the persistence crate's type: one copy.
const DURABILITY_NAMES: [(&str, Durability); 2] =
    [("sync", Durability::Sync), ("async", Durability::Async)];

fn durability_parser() -> impl TypedValueParser<Value = Durability> {
    PossibleValuesParser::new(DURABILITY_NAMES.map(|(name, _)| name)).map(|name| {
        DURABILITY_NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, d)| d)
            .expect("clap accepts only the names listed")
    })
}

fn durability_name<S: Serializer>(durability: &Durability, s: S) -> Result<S::Ok, S::Error> {
    let (name, _) = DURABILITY_NAMES
        .iter()
        .find(|(_, d)| d == durability)
        .expect("every durability has a name");
    s.serialize_str(name)
}

/// What a secret prints as.
const REDACTED: &str = "<redacted>";

/// A secret: whether it is set, never its value.
fn redacted<S: Serializer>(secret: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match secret {
        Some(_) => s.serialize_str(REDACTED),
        None => s.serialize_none(),
    }
}

/// A URI with its password and its options (which may hold keys) redacted, so the summary
/// still says which hosts and user it names.
fn uri_redacted<S: Serializer>(uri: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match uri {
        Some(uri) => s.serialize_str(&redact_uri(uri)),
        None => s.serialize_none(),
    }
}

fn redact_uri(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return REDACTED.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:{REDACTED}@{hosts}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let path = tail.split(['?', '#']).next().unwrap_or("");
    let options = if path.len() < tail.len() {
        format!("?{REDACTED}")
    } else {
        String::new()
    };
    format!("{scheme}://{authority}{path}{options}")
}

/// A configuration that does not make sense as a whole, naming the flags involved.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--jwt-secret or --jwt-public-key-file is required when --listen is not a loopback address (development mode accepts ?user= only on loopback); got --listen {0}")]
    DevModeNotLoopback(SocketAddr),
    #[error("--accounts needs --jwt-secret to sign the tokens it issues")]
    AccountsWithoutSecret,
    #[error("--frame-bytes-max ({frame}) must exceed --body-bytes-max ({body}) by at least 512 bytes of JSON envelope")]
    FrameSmallerThanBody { frame: u32, body: u32 },
    #[error("--wal-bytes-max ({max}) must be at least twice --wal-segment-bytes ({segment})")]
    WalSmallerThanSegments { max: u64, segment: u64 },
    #[error("--idle-timeout-ms ({idle}) must be larger than --heartbeat-ms ({heartbeat}), or idle clients are closed between pings")]
    IdleBelowHeartbeat { idle: u64, heartbeat: u64 },
    #[error("--stall-timeout-ms ({stall}) must be at least {min}: four of the shards' ticks (--heartbeat-ms / 4, 10–250 ms), or a running shard looks stuck")]
    StallBelowTicks { stall: u64, min: u64 },
    #[error(
        "--fault-injection (SOKDO_FAULT_INJECTION) is for tests: it is refused with --jwt-secret or --jwt-public-key-file"
    )]
    FaultInjectionInProduction,
    #[error("--peers needs --node-id (this instance's unique name in the cluster)")]
    PeersWithoutNodeId,
    #[error("--peers needs --cluster-listen (the UDP address of the membership protocol)")]
    PeersWithoutClusterListen,
    #[error("--cluster-listen {0}: the port must be fixed (the peers list it), not 0")]
    ClusterPortZero(SocketAddr),
    #[error("--cluster-listen {0} is a wildcard address: set --cluster-advertise to the address the peers reach")]
    ClusterAdvertiseNeeded(SocketAddr),
    #[error("--cluster-probe-rtt-ms ({rtt}) must be below --cluster-probe-period-ms ({period})")]
    ProbeRttNotBelowPeriod { rtt: u64, period: u64 },
}

impl Config {
    /// Checks the relations between flags that clap's per-flag ranges cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.dev_mode() && !self.listen.ip().is_loopback() {
            return Err(ConfigError::DevModeNotLoopback(self.listen));
        }
        if self.accounts && self.jwt_secret.is_none() {
            return Err(ConfigError::AccountsWithoutSecret);
        }
        if self.frame_bytes_max < self.body_bytes_max.saturating_add(512) {
            return Err(ConfigError::FrameSmallerThanBody {
                frame: self.frame_bytes_max,
                body: self.body_bytes_max,
            });
        }
        if self.wal_bytes_max < 2 * self.wal_segment_bytes {
            return Err(ConfigError::WalSmallerThanSegments {
                max: self.wal_bytes_max,
                segment: self.wal_segment_bytes,
            });
        }
        if self.idle_timeout_ms <= self.heartbeat_ms {
            return Err(ConfigError::IdleBelowHeartbeat {
                idle: self.idle_timeout_ms,
                heartbeat: self.heartbeat_ms,
            });
        }
        if self.stall_timeout_ms < 4 * self.tick_ms() {
            return Err(ConfigError::StallBelowTicks {
                stall: self.stall_timeout_ms,
                min: 4 * self.tick_ms(),
            });
        }
        if self.fault_injection && !self.dev_mode() {
            return Err(ConfigError::FaultInjectionInProduction);
        }
        self.validate_cluster()
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        if self.cluster_probe_rtt_ms >= self.cluster_probe_period_ms {
            return Err(ConfigError::ProbeRttNotBelowPeriod {
                rtt: self.cluster_probe_rtt_ms,
                period: self.cluster_probe_period_ms,
            });
        }
        if self.peers.is_empty() {
            return Ok(());
        }
        if self.node_id.is_none() {
            return Err(ConfigError::PeersWithoutNodeId);
        }
        let Some(listen) = self.cluster_listen else {
            return Err(ConfigError::PeersWithoutClusterListen);
        };
        if listen.port() == 0 {
            return Err(ConfigError::ClusterPortZero(listen));
        }
        if listen.ip().is_unspecified() && self.cluster_advertise.is_none() {
            return Err(ConfigError::ClusterAdvertiseNeeded(listen));
        }
        Ok(())
    }

    /// `--peers` given: this instance is one member of a cluster.
    pub fn clustered(&self) -> bool {
        !self.peers.is_empty()
    }

    /// The interval of each shard's ticker (heartbeats, timeouts, liveness), in ms.
    pub fn tick_ms(&self) -> u64 {
        (self.heartbeat_ms / 4).clamp(10, 250)
    }

    /// The persistence crate's configuration.
    pub fn persistence(&self) -> sokdo_persistence::Config {
        sokdo_persistence::Config {
            data_dir: self.data_dir.clone(),
            durability: self.durability,
            wal_bytes_max: self.wal_bytes_max,
            wal_segment_bytes: self.wal_segment_bytes,
            batch_messages_max: self.batch_messages_max as usize,
            batch_age_ms: self.batch_age_ms,
            // `--persistence-threads-idle` keeps the sink idle for good: it must not adapt.
            sink_idle_lag_ms: if self.persistence_threads_idle {
                0
            } else {
                self.sink_idle_lag_ms
            },
            mongodb_uri: self.mongodb_uri.clone(),
            mongodb_database: self.mongodb_database.clone(),
            wal_retry_backoff_max_ms: self.wal_retry_backoff_max_ms,
            retry_keys_max: self.idempotency_keys_max as usize,
        }
    }

    /// `--durability sync`: a `send` is answered once its record is durable.
    pub fn durable_acks(&self) -> bool {
        self.durability == Durability::Sync
    }

    /// No key for tokens: `?user=` (loopback only).
    pub fn dev_mode(&self) -> bool {
        self.jwt_secret.is_none() && self.jwt_public_key_file.is_none()
    }

    pub fn instance(&self) -> String {
        self.instance_id
            .clone()
            .unwrap_or_else(|| format!("sokdo-{}", std::process::id()))
    }

    /// The effective configuration, one `key = value` per line in the order of the flags,
    /// secrets redacted. Generated from the struct, so a new flag is printed without anyone
    /// remembering to; `shards` and `instance_id` show the values in effect.
    pub fn summary(&self, shards: u16) -> String {
        let mut fields = self.fields();
        fields.insert("shards".into(), shards.into());
        fields.insert("instance_id".into(), self.instance().into());
        let mut lines = Vec::with_capacity(fields.len());
        for arg in Config::command().get_arguments() {
            if let Some((id, value)) = fields.remove_entry(arg.get_id().as_str()) {
                lines.push(format!("{id} = {}", shown(&value)));
            }
        }
        debug_assert!(fields.is_empty(), "fields that are not flags: {fields:?}");
        lines.extend(
            fields
                .iter()
                .map(|(id, value)| format!("{id} = {}", shown(value))),
        );
        lines.join("\n")
    }

    /// Every field by name, secrets redacted.
    fn fields(&self) -> serde_json::Map<String, serde_json::Value> {
        // A struct of strings, numbers and booleans always serialises to an object.
        match serde_json::to_value(self).expect("the configuration serialises") {
            serde_json::Value::Object(fields) => fields,
            other => unreachable!("the configuration serialised to {other}"),
        }
    }
}

/// `Debug` prints what the summary prints: never a secret.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.fields()).finish()
    }
}

/// A value as the summary prints it: strings bare, absent values as `<none>`.
fn shown(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "<none>".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("sokdo").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_validate() {
        let cfg = parse(&[]).unwrap();
        cfg.validate().unwrap();
        assert!(cfg.dev_mode());
    }

    #[test]
    fn cluster_flags_are_checked_and_name_the_flag() {
        let base = ["--peers", "127.0.0.1:7002,127.0.0.1:7003"];
        let err = |args: &[&str]| {
            let all: Vec<&str> = base.iter().chain(args).copied().collect();
            match parse(&all) {
                Err(e) => e.to_string(),
                Ok(cfg) => cfg
                    .validate()
                    .map_or_else(|e| e.to_string(), |()| "ok".into()),
            }
        };
        assert!(err(&[]).contains("--node-id"), "{}", err(&[]));
        assert!(err(&["--node-id", "A_1"]).contains("[a-z0-9-]"));
        assert!(err(&["--node-id", "a"]).contains("--cluster-listen"));
        let zero = err(&["--node-id", "a", "--cluster-listen", "127.0.0.1:0"]);
        assert!(zero.contains("not 0"), "{zero}");
        let wild = err(&["--node-id", "a", "--cluster-listen", "0.0.0.0:7001"]);
        assert!(wild.contains("--cluster-advertise"), "{wild}");
        let ok = ["--node-id", "a", "--cluster-listen", "127.0.0.1:7001"];
        assert_eq!(err(&ok), "ok");
        let rtt: Vec<&str> = ok
            .iter()
            .copied()
            .chain([
                "--cluster-probe-period-ms",
                "100",
                "--cluster-probe-rtt-ms",
                "100",
            ])
            .collect();
        assert!(
            err(&rtt).contains("--cluster-probe-rtt-ms (100)"),
            "{}",
            err(&rtt)
        );
        let range = err(&["--cluster-probe-period-ms", "5"]);
        assert!(range.contains("--cluster-probe-period-ms"), "{range}");
        let tail = err(&["--cluster-log-tail-records", "2000000"]);
        assert!(tail.contains("--cluster-log-tail-records"), "{tail}");
        assert_eq!(parse(&base).unwrap().cluster_log_tail_records, 512);
        let cfg = parse(&base).unwrap();
        assert_eq!(cfg.peers, ["127.0.0.1:7002", "127.0.0.1:7003"]);
        assert!(cfg.clustered() && !parse(&[]).unwrap().clustered());
    }

    /// The environment variable flag `id` is read from.
    fn env_of(id: &str) -> Option<std::ffi::OsString> {
        Config::command()
            .get_arguments()
            .find(|a| a.get_id() == id)
            .and_then(|a| a.get_env().map(|e| e.to_owned()))
    }

    #[test]
    fn the_sink_idle_lag_is_range_checked_and_off_under_persistence_threads_idle() {
        let cfg = parse(&[]).unwrap();
        assert_eq!(cfg.persistence().sink_idle_lag_ms, 1000);
        assert_eq!(
            env_of("sink_idle_lag_ms").unwrap(),
            "SOKDO_SINK_IDLE_LAG_MS"
        );
        let off = parse(&["--sink-idle-lag-ms", "0"]).unwrap();
        assert_eq!(off.persistence().sink_idle_lag_ms, 0);
        let err = parse(&["--sink-idle-lag-ms", "600001"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--sink-idle-lag-ms"), "{err}");
        // The flag that keeps every persistence thread idle keeps the sink there too.
        let idle = parse(&["--persistence-threads-idle", "--sink-idle-lag-ms", "500"]).unwrap();
        assert_eq!(idle.persistence().sink_idle_lag_ms, 0);
    }

    #[test]
    fn io_ring_depth_is_range_checked() {
        assert_eq!(parse(&[]).unwrap().io_ring_depth, 4096);
        assert_eq!(
            parse(&["--io-ring-depth", "128"]).unwrap().io_ring_depth,
            128
        );
        for bad in ["127", "32769"] {
            let err = parse(&["--io-ring-depth", bad]).unwrap_err().to_string();
            assert!(err.contains("--io-ring-depth"), "{err}");
        }
    }

    #[test]
    fn the_room_machine_bound_and_idle_time_are_range_checked_and_read_from_the_environment() {
        let cfg = parse(&[]).unwrap();
        assert_eq!(cfg.cluster_rooms_in_memory_max, 100_000);
        assert_eq!(cfg.cluster_room_idle_ms, 60_000);
        let cfg = parse(&[
            "--cluster-rooms-in-memory-max",
            "0",
            "--cluster-room-idle-ms",
            "0",
        ])
        .unwrap();
        assert_eq!(
            (cfg.cluster_rooms_in_memory_max, cfg.cluster_room_idle_ms),
            (0, 0)
        );
        for (flag, beyond) in [
            ("--cluster-rooms-in-memory-max", "100000001"),
            ("--cluster-room-idle-ms", "86400001"),
        ] {
            let err = parse(&[flag, beyond]).unwrap_err().to_string();
            assert!(err.contains(flag), "{err}");
        }
        for (id, var) in [
            (
                "cluster_rooms_in_memory_max",
                "SOKDO_CLUSTER_ROOMS_IN_MEMORY_MAX",
            ),
            ("cluster_room_idle_ms", "SOKDO_CLUSTER_ROOM_IDLE_MS"),
        ] {
            assert_eq!(
                env_of(id).as_deref(),
                Some(std::ffi::OsStr::new(var)),
                "{id}"
            );
        }
    }

    #[test]
    fn the_interest_refresh_is_range_checked_and_leases_three_of_it_in_ticks() {
        let cfg = parse(&[]).unwrap();
        assert_eq!(cfg.cluster_interest_refresh_ms, 10_000);
        let limits = |args: &[&str]| crate::cluster::Limits::of(&parse(args).unwrap());
        assert_eq!(limits(&[]).interest_lease_ticks(), 301);
        let odd = [
            "--cluster-interest-refresh-ms",
            "1000",
            "--cluster-tick-ms",
            "70",
        ];
        assert_eq!(
            limits(&odd).interest_lease_ticks(),
            44,
            "rounded up, and a tick"
        );
        let fast = [
            "--cluster-interest-refresh-ms",
            "100",
            "--cluster-tick-ms",
            "1000",
        ];
        assert_eq!(
            limits(&fast).interest_lease_ticks(),
            4,
            "renewals go out on ticks"
        );
        for bad in ["99", "3600001"] {
            let err = parse(&["--cluster-interest-refresh-ms", bad])
                .unwrap_err()
                .to_string();
            assert!(err.contains("--cluster-interest-refresh-ms"), "{err}");
        }
        assert_eq!(
            env_of("cluster_interest_refresh_ms").as_deref(),
            Some(std::ffi::OsStr::new("SOKDO_CLUSTER_INTEREST_REFRESH_MS"))
        );
    }

    #[test]
    fn write_coalesce_us_is_range_checked_and_read_from_the_environment() {
        assert_eq!(parse(&[]).unwrap().write_coalesce_us, 0);
        assert_eq!(
            parse(&["--write-coalesce-us", "500"])
                .unwrap()
                .write_coalesce_us,
            500
        );
        let err = parse(&["--write-coalesce-us", "1000001"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--write-coalesce-us"), "{err}");
        assert_eq!(
            env_of("write_coalesce_us").as_deref(),
            Some(std::ffi::OsStr::new("SOKDO_WRITE_COALESCE_US"))
        );
    }

    #[test]
    fn dev_mode_refuses_public_address() {
        let cfg = parse(&["--listen", "0.0.0.0:9000"]).unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("--jwt-secret"), "{err}");
    }

    #[test]
    fn every_flag_is_in_the_summary() {
        let summary = parse(&[]).unwrap().summary(3);
        let ids: Vec<_> = Config::command()
            .get_arguments()
            .map(|a| a.get_id().as_str().to_owned())
            .filter(|id| id != "help" && id != "version")
            .collect();
        assert!(ids.len() > 30, "{ids:?}");
        for id in &ids {
            let line = format!("\n{id} = ");
            assert!(
                format!("\n{summary}").contains(&line),
                "`{id}` is missing from the summary:\n{summary}"
            );
        }
        assert_eq!(summary.lines().count(), ids.len(), "{summary}");
        assert!(summary.contains("\nshards = 3\n"), "{summary}");
        assert!(
            summary.contains("\nadmission_queue_max = 10000\n"),
            "{summary}"
        );
        assert!(summary.contains("\ndurability = sync\n"), "{summary}");
        assert!(summary.contains("\njwt_secret = <none>\n"), "{summary}");
    }

    #[test]
    fn no_secret_is_ever_printed() {
        let cfg = parse(&[
            "--jwt-secret",
            "s3cret-jwt",
            "--api-key",
            "s3cret-key",
            "--mongodb-uri",
            "mongodb://mina:s3cret-pw@db1:27017,db2/chat?tlsCertificateKeyFilePassword=s3cret-opt",
        ])
        .unwrap();
        for printed in [cfg.summary(1), format!("{cfg:?}")] {
            assert!(!printed.contains("s3cret"), "a secret leaked:\n{printed}");
            assert!(printed.contains("<redacted>"), "{printed}");
        }
        let summary = cfg.summary(1);
        assert!(summary.contains("\njwt_secret = <redacted>\n"), "{summary}");
        assert!(summary.contains("\napi_key = <redacted>\n"), "{summary}");
        assert!(
            summary.contains(
                "\nmongodb_uri = mongodb://mina:<redacted>@db1:27017,db2/chat?<redacted>\n"
            ),
            "{summary}"
        );
    }

    #[test]
    fn a_uri_keeps_its_hosts_and_loses_its_password() {
        assert_eq!(redact_uri("mongodb://db:27017"), "mongodb://db:27017");
        assert_eq!(redact_uri("mongodb://mina@db/x"), "mongodb://mina@db/x");
        assert_eq!(
            redact_uri("mongodb+srv://m:p@w@cluster.example?w=1"),
            "mongodb+srv://m:<redacted>@cluster.example?<redacted>"
        );
        assert_eq!(redact_uri("not a uri s3cret"), "<redacted>");
    }

    #[test]
    fn durability_parses_into_the_persistence_type() {
        let cfg = parse(&[]).unwrap();
        assert_eq!(cfg.durability, Durability::Sync);
        assert!(cfg.durable_acks());
        let cfg = parse(&["--durability", "async"]).unwrap();
        assert_eq!(cfg.persistence().durability, Durability::Async);
        assert!(!cfg.durable_acks());
        let err = parse(&["--durability", "never"]).unwrap_err().to_string();
        assert!(err.contains("--durability"), "{err}");
        assert!(err.contains("sync") && err.contains("async"), "{err}");
    }

    #[test]
    fn connections_max_is_auto_or_a_number() {
        assert_eq!(parse(&[]).unwrap().connections_max, ConnectionsMax::Auto);
        let cfg = parse(&["--connections-max", "3"]).unwrap();
        assert_eq!(cfg.connections_max, ConnectionsMax::Fixed(3));
        assert!(cfg.summary(1).contains("\nconnections_max = 3\n"));
        assert!(parse(&[])
            .unwrap()
            .summary(1)
            .contains("\nconnections_max = auto\n"));
        for bad in ["0", "many", "100000001"] {
            let err = parse(&["--connections-max", bad]).unwrap_err().to_string();
            assert!(
                err.contains("--connections-max") && err.contains("auto"),
                "{err}"
            );
        }
    }

    #[test]
    fn bad_flag_value_names_the_flag() {
        let err = parse(&["--shards", "0"]).unwrap_err().to_string();
        assert!(err.contains("--shards"), "{err}");
    }
}
