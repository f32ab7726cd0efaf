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
    #[arg(long, env = "SIGNAL_SERVER_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "SIGNAL_SERVER_LISTEN", default_value = "127.0.0.1:8000")]
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

    /// Cap on one-time EC prekeys, and separately on one-time Kyber prekeys, per device.
    #[arg(long, env = "SIGNAL_SERVER_MAX_PREKEYS", default_value_t = 100)]
    pub max_prekeys: u32,

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

    /// Public base URL of this server, for links in mail.
    #[arg(long, env = "SIGNAL_SERVER_PUBLIC_URL")]
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

    /// Address for `GET /metrics` (Prometheus text format); off when not given.
    #[arg(long, env = "SIGNAL_SERVER_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

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
    },
    /// Load a backup into an empty data dir (server stopped).
    #[command(visible_alias = "import")]
    Restore {
        /// Input file (`-` for standard input).
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug, Clone, Serialize, Deserialize)]
pub enum UsersCommand {
    /// List every account: id, username, email, device address, queued messages.
    List,
    /// Delete an account with its device, keys and queued messages.
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
}
