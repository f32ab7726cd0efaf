//! Configuration: one clap struct. Every option has a long flag, an environment variable
//! (`SIGNAL_SERVER_` + the flag in upper snake case; the flag wins) and a safe default.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

/// Who may create an account.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// Anyone.
    Open,
    /// Only with a single-use invite token (`signal-server invites --count N`).
    Invite,
    /// Nobody (accounts are created by the operator's tools only).
    Closed,
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "signal-server",
    version,
    about = "A self-hosted server for the Signal protocol"
)]
pub struct Config {
    /// Directory for the database, the generated JWT secret and the lock file.
    /// Accepted before or after an operator command.
    #[arg(
        long,
        env = "SIGNAL_SERVER_DATA_DIR",
        default_value = "./data",
        global = true
    )]
    pub data_dir: PathBuf,

    /// PostgreSQL instead of sled: postgres://USER:PASS@HOST:PORT/DB (`?sslmode=require` for
    /// TLS). Any number of instances may share one database; the data dir then holds only the
    /// admin socket and the lock.
    #[arg(
        long,
        env = "SIGNAL_SERVER_DATABASE_URL",
        hide_env_values = true,
        global = true
    )]
    pub database_url: Option<String>,

    /// Address to listen on, IP:PORT or HOST:PORT (port 0 picks a free port).
    #[arg(long, env = "SIGNAL_SERVER_LISTEN", default_value = "127.0.0.1:8000",
          value_parser = socket_addr)]
    pub listen: SocketAddr,

    /// PBKDF2-SHA256 iterations for new password hashes (stored hashes keep their own count).
    #[arg(long, env = "SIGNAL_SERVER_PBKDF2_ITERATIONS", default_value_t = 600_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub pbkdf2_iterations: u32,

    /// Secret for signing tokens; without it one is generated on first start and kept in the
    /// data dir (mode 0600).
    #[arg(long, env = "SIGNAL_SERVER_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Lifetime of an access token, in seconds.
    #[arg(long, env = "SIGNAL_SERVER_TOKEN_TTL", default_value_t = 3600)]
    pub token_ttl: u64,

    /// How long after the original login a token may still be refreshed, in seconds.
    #[arg(long, env = "SIGNAL_SERVER_REFRESH_MAX_AGE", default_value_t = 604_800)]
    pub refresh_max_age: u64,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "SIGNAL_SERVER_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: u64,

    /// Seconds a request body may take to arrive in full, counted from when the server starts
    /// reading it; one still arriving then is answered 408 and its connection closed.
    #[arg(long, env = "SIGNAL_SERVER_BODY_TIMEOUT", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub body_timeout: u64,

    /// Bytes all request bodies being read may hold in memory together (at least
    /// --max-body-bytes), attachment uploads' buffers included (1 MiB each, 8 MiB on S3); a body
    /// that would go beyond it is refused with 503, to retry shortly.
    #[arg(long, env = "SIGNAL_SERVER_BODY_BUFFER_BYTES", default_value_t = 64 << 20)]
    pub body_buffer_bytes: u64,

    /// Cap on one-time EC prekeys, and separately on one-time Kyber prekeys, per device.
    #[arg(long, env = "SIGNAL_SERVER_MAX_PREKEYS", default_value_t = 100)]
    pub max_prekeys: u32,

    /// Most devices an account may have, the primary included (1 to 127).
    #[arg(long, env = "SIGNAL_SERVER_MAX_DEVICES", default_value_t = 6,
          value_parser = clap::value_parser!(u32).range(1..=127))]
    pub max_devices: u32,

    /// Largest accepted message content, in bytes.
    #[arg(
        long,
        env = "SIGNAL_SERVER_MAX_MESSAGE_BYTES",
        default_value_t = 65_536
    )]
    pub max_message_bytes: usize,

    /// Cap on messages queued for one device.
    #[arg(
        long,
        env = "SIGNAL_SERVER_MAX_QUEUED_MESSAGES",
        default_value_t = 10_000
    )]
    pub max_queued_messages: u32,

    /// Queued messages older than this many seconds are deleted.
    #[arg(long, env = "SIGNAL_SERVER_MESSAGE_TTL", default_value_t = 30 * 86_400)]
    pub message_ttl: u64,

    /// Turn every rate limit off (tests and benchmarks).
    #[arg(long, env = "SIGNAL_SERVER_NO_RATE_LIMIT")]
    pub no_rate_limit: bool,

    /// A reverse proxy whose X-Forwarded-For is trusted for the client IP (repeatable).
    #[arg(long, env = "SIGNAL_SERVER_TRUSTED_PROXY", value_delimiter = ',')]
    pub trusted_proxy: Vec<IpAddr>,

    /// SMTP server for password-reset mail: smtp://user:pass@host:port or smtps://...
    #[arg(long, env = "SIGNAL_SERVER_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,

    /// Sender address of password-reset mail.
    #[arg(
        long,
        env = "SIGNAL_SERVER_SMTP_FROM",
        default_value = "signal-server@localhost"
    )]
    pub smtp_from: String,

    /// Public base URL of this server (http:// or https://), for links in mail.
    #[arg(long, env = "SIGNAL_SERVER_PUBLIC_URL", value_parser = public_url)]
    pub public_url: Option<String>,

    /// Lifetime of a password-reset token, in seconds.
    #[arg(long, env = "SIGNAL_SERVER_RESET_TOKEN_TTL", default_value_t = 3600)]
    pub reset_token_ttl: u64,

    /// Who may register: open, invite (a single-use invite token in the `invite` field) or closed.
    #[arg(long, env = "SIGNAL_SERVER_REGISTRATION", value_enum, default_value_t = Registration::Open)]
    pub registration: Registration,

    /// Size of sled's page cache, in MiB.
    #[arg(long, env = "SIGNAL_SERVER_CACHE_MB", default_value_t = 64)]
    pub cache_mb: u64,

    /// MiB of disk kept in reserve: a file `reserve` in the data dir, deleted when storage fails
    /// (a full disk) so that the database can open and be drained at the next start, and made
    /// again at a start (or later) once at least twice its size is free. 0: none.
    #[arg(long, env = "SIGNAL_SERVER_RESERVE_MB", default_value_t = 64)]
    pub reserve_mb: u64,

    /// Address for `GET /metrics` (Prometheus text format), IP:PORT or HOST:PORT; off when not
    /// given.
    #[arg(long, env = "SIGNAL_SERVER_METRICS_LISTEN", value_parser = socket_addr)]
    pub metrics_listen: Option<SocketAddr>,

    /// Seconds a write may wait for its flush to disk; longer counts as a failed disk: the
    /// server answers 503 and exits non-zero (for its supervisor to restart it).
    #[arg(long, env = "SIGNAL_SERVER_FLUSH_TIMEOUT", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub flush_timeout: u64,
    /// Seconds a client has to send a complete request head, counted from its first byte on a new
    /// connection or from the previous response (so also how long a kept-alive connection may wait).
    #[arg(long, env = "SIGNAL_SERVER_HEADER_READ_TIMEOUT", default_value_t = 20)]
    pub header_read_timeout: u64,

    /// Seconds a connection may go without a byte moving either way (a stalled body, a response
    /// or WebSocket frame the client does not read) before it is closed.
    #[arg(long, env = "SIGNAL_SERVER_IDLE_TIMEOUT", default_value_t = 60)]
    pub idle_timeout: u64,

    /// Cap on open client connections (WebSockets included); 0 fits it under the open-file
    /// limit. Beyond it new connections wait until one closes.
    #[arg(long, env = "SIGNAL_SERVER_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,

    /// Cap on open connections from one client address (an IPv6 client: its /64), WebSockets
    /// included; 0 turns it off. Beyond it a new connection is closed at once. Connections from a
    /// --trusted-proxy are not counted: behind a proxy, limit connections per client there.
    #[arg(
        long,
        env = "SIGNAL_SERVER_MAX_CONNECTIONS_PER_IP",
        default_value_t = 64
    )]
    pub max_connections_per_ip: usize,

    /// Seconds a shutdown waits for requests in flight before dropping their connections.
    #[arg(long, env = "SIGNAL_SERVER_SHUTDOWN_TIMEOUT", default_value_t = 20)]
    pub shutdown_timeout: u64,
    /// Password hashes (logins, registrations, password changes) that may wait for a core while
    /// every core is hashing; beyond it they are refused with 503. Default: 8 per core.
    #[arg(long, env = "SIGNAL_SERVER_HASH_QUEUE")]
    pub hash_queue: Option<usize>,
    /// Origin whose web pages may call the API from a browser, as scheme://host[:port]
    /// (repeatable); `*` allows any origin, `none` turns CORS off.
    #[arg(
        long,
        env = "SIGNAL_SERVER_CORS_ORIGIN",
        value_name = "ORIGIN",
        value_delimiter = ',',
        default_value = "*"
    )]
    pub cors_origin: Vec<String>,

    /// Directory of attachment blobs. Default: `attachments` in the data dir. Several instances
    /// on one database need a directory they all reach, or --attachments-s3.
    #[arg(long, env = "SIGNAL_SERVER_ATTACHMENTS_DIR", value_name = "DIR")]
    pub attachments_dir: Option<PathBuf>,

    /// Keep attachment blobs in an S3-compatible bucket instead, as s3://bucket[/prefix];
    /// credentials from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION.
    #[arg(long, env = "SIGNAL_SERVER_ATTACHMENTS_S3", value_name = "URL")]
    pub attachments_s3: Option<String>,

    /// The S3 endpoint of a store other than AWS (MinIO, Garage, SeaweedFS, Ceph, R2), e.g.
    /// http://127.0.0.1:9000 (path-style requests).
    #[arg(
        long,
        env = "SIGNAL_SERVER_ATTACHMENTS_S3_ENDPOINT",
        value_name = "URL"
    )]
    pub attachments_s3_endpoint: Option<String>,

    /// Largest attachment (its Upload-Length), in bytes.
    #[arg(long, env = "SIGNAL_SERVER_MAX_ATTACHMENT_BYTES", default_value_t = 100 << 20)]
    pub max_attachment_bytes: u64,

    /// Bytes of attachments one account may hold, unfinished uploads at their full length.
    #[arg(long, env = "SIGNAL_SERVER_ATTACHMENT_QUOTA", default_value_t = 2 << 30)]
    pub attachment_quota: u64,

    /// Seconds a complete attachment is kept after its upload finished (default 30 days).
    #[arg(long, env = "SIGNAL_SERVER_ATTACHMENT_TTL", default_value_t = 30 * 24 * 3600)]
    pub attachment_ttl: u64,

    /// An operator command instead of running the server. Commands reach a running server
    /// through its admin socket (`<data-dir>/admin.sock`); with no server running they open the
    /// data dir themselves.
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// Manage accounts.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Create single-use invite tokens (for --registration invite).
    Invites {
        /// How many tokens to create.
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Counts of users, devices, queued messages, prekey stock and live connections.
    Stats,
    /// Write a consistent backup (portable JSON lines) while the server runs.
    #[command(visible_alias = "export")]
    Backup {
        /// Output file (`-` for standard output).
        file: PathBuf,
        /// Replace FILE if it exists already.
        #[arg(long)]
        #[serde(default)]
        force: bool,
    },
    /// Load a backup into an empty data dir (server stopped).
    #[command(visible_alias = "import")]
    Restore {
        /// Input file (`-` for standard input).
        file: PathBuf,
    },
    /// Read every record of the database and report what is damaged; exits non-zero if any.
    Fsck,
}

#[derive(Subcommand, Debug, Clone, Serialize, Deserialize)]
pub enum UsersCommand {
    /// List every account: id, username, email, device address, queued messages.
    List,
    /// Delete an account with its devices, keys and queued messages.
    Delete { username: String },
    /// Set a new password, read from standard input; revokes the user's tokens.
    SetPassword {
        username: String,
        #[arg(skip)]
        #[serde(default)]
        password: String,
    },
    /// Print a single-use password-reset uid and token to hand to the user.
    ResetToken { username: String },
    /// Create an account (works with --registration closed). The password is read from standard
    /// input; when that is a terminal or empty, one is generated and printed once.
    Create {
        username: String,
        /// The account's email address (optional, unique).
        #[arg(long, default_value = "")]
        email: String,
        #[arg(skip)]
        #[serde(default)]
        password: String,
    },
}

/// `--listen` and `--metrics-listen`: an IP:PORT, or a HOST:PORT resolved once at start (the
/// first address the resolver gives, e.g. `localhost:8005`).
fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let mut addrs = std::net::ToSocketAddrs::to_socket_addrs(text)
        .map_err(|e| format!("expected IP:PORT or HOST:PORT, e.g. 127.0.0.1:8000 ({e})"))?;
    addrs
        .next()
        .ok_or_else(|| format!("the host name in {text} resolves to no address"))
}

/// `--public-url`: an absolute http(s) URL with a host, so that links in mail work.
fn public_url(text: &str) -> Result<String, String> {
    let rest = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"));
    let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or(""));
    match host {
        Some(h) if !h.is_empty() && !text.contains(char::is_whitespace) => Ok(text.to_string()),
        _ => Err("expected an absolute URL such as https://signal.example.org".into()),
    }
}

impl Config {
    /// One line for the start log, what an operator greps for: the store (the data dir, or the
    /// database's name and hosts, never its password), the registration mode, and the API and
    /// metrics addresses.
    pub fn summary(&self, api: SocketAddr) -> String {
        let store = match &self.database_url {
            Some(url) => match url.parse::<tokio_postgres::Config>() {
                Ok(pg) => {
                    let hosts: Vec<String> = pg
                        .get_hosts()
                        .iter()
                        .map(|h| match h {
                            tokio_postgres::config::Host::Tcp(name) => name.clone(),
                            #[cfg(unix)]
                            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
                        })
                        .collect();
                    format!(
                        "postgresql database {} on {}",
                        pg.get_dbname().unwrap_or("(default)"),
                        hosts.join(",")
                    )
                }
                Err(_) => "postgresql".to_string(),
            },
            None => format!("sled in {}", self.data_dir.display()),
        };
        let registration = self
            .registration
            .to_possible_value()
            .map_or_else(String::new, |v| v.get_name().to_string());
        let metrics = self
            .metrics_listen
            .map_or_else(|| "off".to_string(), |a| format!("http://{a}"));
        format!("serving: store {store}; registration {registration}; api http://{api}; metrics {metrics}")
    }
}

#[cfg(test)]
mod summary_tests {
    use super::*;

    #[test]
    fn the_start_summary_names_the_store_without_its_password() {
        let config = Config::parse_from([
            "signal-server",
            "--database-url",
            "postgres://signal:s3cret@db.internal:5432/signal",
            "--registration",
            "invite",
            "--metrics-listen",
            "127.0.0.1:9100",
        ]);
        let line = config.summary("127.0.0.1:8000".parse().unwrap());
        assert_eq!(
            line,
            "serving: store postgresql database signal on db.internal; registration invite; \
             api http://127.0.0.1:8000; metrics http://127.0.0.1:9100"
        );
        let sled = Config::parse_from(["signal-server", "--data-dir", "/var/lib/s"]);
        let line = sled.summary("127.0.0.1:8000".parse().unwrap());
        assert_eq!(
            line,
            "serving: store sled in /var/lib/s; registration open; api http://127.0.0.1:8000; \
             metrics off"
        );
    }
}
