//! The PostgreSQL store: the same verbs as the sled `Storage`, async, for several server
//! processes sharing one database.
//!
//! Every rule holds across processes because the database enforces it, never a lock or count in
//! one process:
//! - A one-time prekey is taken by ONE statement that deletes the lowest key on its primary key
//!   (`FOR UPDATE SKIP LOCKED`), so concurrent takers each get a different key, once.
//! - Rows owned by a user or device are removed with it by `ON DELETE CASCADE`, in the
//!   delete's own transaction: nothing is left behind for a later device to find.
//! - Caps (prekeys, queue) are checked and written holding the device row (`FOR NO KEY
//!   UPDATE`): uploads and sends of one device are checked one after the other everywhere. A
//!   send to one device holds it only until its reservation commits, without waiting for the
//!   disk; the message then replaces the reservation in a durable commit of its own
//!   (`messages::enqueue_once`), so sends to one device do not queue behind each other's
//!   fsync. Uploads, keyed sends and a send to every device of an account (which holds all its
//!   device rows, locked in id order, so sends never deadlock each other) hold the rows until
//!   they commit. Pops only lower a stock, so they need not wait.
//! - Links, unlinks and deletes of an account's devices hold its user row (`FOR NO KEY
//!   UPDATE`, `devices::lock_account`), then its device rows: two links never take one id nor
//!   both pass the account's most devices.
//! - Message ids come from a sequence, drawn under the device lock: within one queue they grow
//!   in the order sends are accepted. Two sends to one device finishing together may become
//!   visible out of that order (as on sled); live delivery pushes each message by its id once
//!   committed, and a socket's re-read lists the queue's ids, so none is missed.
//! - An account's attachment uploads are created holding its user row (`FOR NO KEY UPDATE`), so
//!   their count and bytes are checked against what every earlier creation committed. One
//!   request writes an upload at a time: its lease is in the row, taken and moved by
//!   compare-and-swap `UPDATE`s (`attachments`).
//! - All-or-nothing writes are one transaction; deadlocks and serialization failures are
//!   retried a few times (`retrying`).
//!
//! Durability: every verb returns `Ok` only after its transaction (or autocommit statement)
//! committed, with `synchronous_commit = on` for the store's sessions.
//!
//! A database that is down or stalled answers `StoreError::Unavailable` within `TIMEOUT`, and
//! the pool connects again on its own once it is back.
//!
//! Sessions are set up through startup options (`synchronous_commit`, `statement_timeout`,
//! `lock_timeout`) and statements are prepared once per connection: a pooler in front must keep
//! sessions (PgBouncer in session mode, not transaction mode).
//!
//! Usernames and emails are compared with PostgreSQL's `lower()`: for usernames (ASCII only)
//! that is the sled store's `to_lowercase()`; for a non-ASCII email it follows the database's
//! locale (`C.UTF-8` or any UTF-8 one lowers as Rust does for nearly every letter).

mod attachments;
mod backup;
mod devices;
mod fanout;
mod idempotency;
mod keys;
mod messages;
mod schema;
mod signals;
#[cfg(test)]
mod tests;
mod users;

use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Timeouts};
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;

use super::{StoreError, Totals};
pub use signals::Incoming;

/// The longest any verb waits for the database (connecting, a pooled connection, a statement).
const TIMEOUT: Duration = Duration::from_secs(5);
/// How often a transaction that lost a deadlock or a serialization check is run again.
const ATTEMPTS: u32 = 4;
/// Connections per process: four per core of this machine, at least 16 and at most 64. A
/// request holds one for its round trips only (a fetch one, a send two), so a few per core keep
/// the database busy without queueing requests behind each other; the bound keeps N instances
/// within PostgreSQL's `max_connections` (100 by default: size it for N x this + 10).
fn pool_size() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    (cores * 4).clamp(16, 64)
}
/// Connections shared by reads (`PgStore::reader`): one per core of this machine, 2 to 16.
fn lanes() -> usize {
    std::thread::available_parallelism()
        .map_or(2, usize::from)
        .clamp(2, 16)
}

/// The shared read connections, taken from the pool on first use.
struct Lanes {
    slots: Vec<std::sync::Mutex<Option<Arc<deadpool_postgres::Object>>>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Lanes {
    fn new(n: usize) -> Lanes {
        Lanes {
            slots: (0..n).map(|_| std::sync::Mutex::default()).collect(),
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How long a health probe's answer is reused.
const HEALTH_FRESH: Duration = Duration::from_secs(1);

/// A handle on the database; cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// Connections shared by single reads (`reader`).
    lanes: Arc<Lanes>,
    /// For the connection that listens to the other instances (`signals`).
    config: Arc<tokio_postgres::Config>,
    /// When the database last answered a health probe (ms since the epoch).
    healthy_at: Arc<AtomicU64>,
}

impl PgStore {
    /// Connects to `url` (`postgres://USER:PASS@HOST:PORT/DB`, TLS with `?sslmode=require`) and
    /// brings the schema up to date; refuses a schema newer than this build knows.
    pub async fn connect(url: &str) -> Result<PgStore, StoreError> {
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|e| StoreError::Corrupt(format!("the database URL is not valid: {e}")))?;
        let options = format!(
            "{} -c synchronous_commit=on -c statement_timeout={ms} -c lock_timeout={ms}",
            config.get_options().unwrap_or_default(),
            ms = TIMEOUT.as_millis()
        );
        config
            .options(options.trim())
            .connect_timeout(TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30));
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let shared = Arc::new(config.clone());
        let manager = match config.get_ssl_mode() {
            SslMode::Require => Manager::from_config(config, tls()?, manager_config),
            _ => Manager::from_config(config, tokio_postgres::NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(pool_size() + lanes())
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .timeouts(Timeouts {
                wait: Some(TIMEOUT),
                create: Some(TIMEOUT),
                recycle: Some(TIMEOUT),
            })
            .build()
            .map_err(|e| StoreError::Db(Box::new(e)))?;
        let store = PgStore {
            lanes: Arc::new(Lanes::new(lanes())),
            pool,
            config: shared,
            healthy_at: Arc::default(),
        };
        store.timed(schema::migrate(&store)).await?;
        Ok(store)
    }

    /// A pooled connection, or `Unavailable` when none can be had in time.
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// A connection for one read statement, shared with other reads: tokio-postgres pipelines
    /// the statements of concurrent requests on one connection (one write and one read of the
    /// socket for many, on both sides), where a pooled connection each would cost a round of
    /// system calls and wake-ups apiece. Never for writes: a commit waits for the disk, and the
    /// reads behind it on the connection would wait too. A lane whose connection failed (or did
    /// not answer in time, `forget_reader`) takes a new one from the pool.
    async fn reader(&self) -> Result<(usize, Arc<deadpool_postgres::Object>), StoreError> {
        let lane = self.lanes.next.fetch_add(1, Ordering::Relaxed) % self.lanes.slots.len();
        let slot = &self.lanes.slots[lane];
        if let Some(client) = lock(slot).as_ref().filter(|c| !c.is_closed()) {
            return Ok((lane, client.clone()));
        }
        let fresh = Arc::new(self.client().await?);
        *lock(slot) = Some(fresh.clone());
        Ok((lane, fresh))
    }

    /// Drops a lane's connection after it failed a read, so the next read takes another.
    fn forget_reader(&self, lane: usize) {
        *lock(&self.lanes.slots[lane]) = None;
    }

    /// Runs one read statement on a shared connection (`reader`), within `TIMEOUT`.
    async fn read<T, F, Fut>(&self, statement: F) -> Result<T, StoreError>
    where
        F: FnOnce(Arc<deadpool_postgres::Object>) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let (lane, client) = self.timed(self.reader()).await?;
        let outcome = self.timed(statement(client)).await;
        if matches!(outcome, Err(StoreError::Unavailable(_))) {
            self.forget_reader(lane);
        }
        outcome
    }

    /// Runs a verb within `TIMEOUT`: a database that stopped answering (not only one that
    /// refuses connections) makes the verb fail instead of hang.
    async fn timed<T>(
        &self,
        verb: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(TIMEOUT, verb)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(format!(
                    "the database did not answer within {} s",
                    TIMEOUT.as_secs()
                )))
            })
    }

    /// Runs a transaction (`attempt`, which starts and commits its own) again when it lost a
    /// deadlock or a serialization check, a few times, all within `TIMEOUT`.
    async fn retrying<T, F, Fut>(&self, mut attempt: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        self.timed(async {
            let mut tries = 1;
            loop {
                match attempt().await {
                    Err(e) if tries < ATTEMPTS && retryable(&e) => tries += 1,
                    outcome => return outcome,
                }
            }
        })
        .await
    }

    /// Answers once the database does (`SELECT 1`), within `TIMEOUT`.
    pub async fn health(&self) -> Result<(), StoreError> {
        self.timed(async {
            self.client().await?.fetch_one("SELECT 1", &[]).await?;
            Ok(())
        })
        .await
    }

    /// `health`, but a success less than `HEALTH_FRESH` old is reused: a probe asked often
    /// (`/health`) costs the database one statement a second, not one each time.
    pub async fn recent_health(&self) -> Result<(), StoreError> {
        let now = crate::auth::now_millis();
        let last = self.healthy_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) < HEALTH_FRESH.as_millis() as u64 {
            return Ok(());
        }
        self.health().await?;
        self.healthy_at.fetch_max(now, Ordering::Relaxed);
        Ok(())
    }

    /// The JWT secret every instance shares: `fresh` is stored if there is none yet (the first
    /// instance to start wins), and the stored one is returned.
    pub async fn jwt_secret(&self, fresh: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.timed(async {
            let client = self.client().await?;
            client
                .exec(
                    "INSERT INTO settings (key, value) VALUES ('jwt_secret', $1) \
                     ON CONFLICT (key) DO NOTHING",
                    &[&fresh],
                )
                .await?;
            // A second statement: it sees a secret another instance committed meanwhile.
            let row = client
                .fetch_one("SELECT value FROM settings WHERE key = 'jwt_secret'", &[])
                .await?;
            Ok(row.get(0))
        })
        .await
    }

    /// Totals over the whole database, counted now.
    pub async fn totals(&self) -> Result<Totals, StoreError> {
        self.timed(async {
            let row = self
                .client()
                .await?
                .fetch_one(
                    "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM devices), \
                     (SELECT count(*) FROM messages), (SELECT count(*) FROM prekeys), \
                     (SELECT count(*) FROM kyber_prekeys WHERE NOT last_resort), \
                     (SELECT count(*) FROM invites)",
                    &[],
                )
                .await?;
            let n = |i: usize| row.get::<_, i64>(i).max(0) as u64;
            Ok(Totals {
                users: n(0),
                devices: n(1),
                queued_messages: n(2),
                prekeys: n(3),
                kyber_prekeys: n(4),
                invites: n(5),
            })
        })
        .await
    }
}

/// Statements through the connection's statement cache: each one is parsed once per connection,
/// then runs in one round trip. For pooled connections and their transactions alike.
trait Cached: deadpool_postgres::GenericClient {
    async fn fetch_all(&self, sql: &str, params: &[&Param<'_>]) -> Result<Vec<Row>, StoreError> {
        let statement = self.prepare_cached(sql).await?;
        crate::round_trips::add(1);
        Ok(self.query(&statement, params).await?)
    }

    async fn fetch_one(&self, sql: &str, params: &[&Param<'_>]) -> Result<Row, StoreError> {
        let statement = self.prepare_cached(sql).await?;
        crate::round_trips::add(1);
        Ok(self.query_one(&statement, params).await?)
    }

    async fn fetch_opt(&self, sql: &str, params: &[&Param<'_>]) -> Result<Option<Row>, StoreError> {
        let statement = self.prepare_cached(sql).await?;
        crate::round_trips::add(1);
        Ok(self.query_opt(&statement, params).await?)
    }

    /// Runs a statement; tells how many rows it changed.
    async fn exec(&self, sql: &str, params: &[&Param<'_>]) -> Result<u64, StoreError> {
        let statement = self.prepare_cached(sql).await?;
        crate::round_trips::add(1);
        Ok(self.execute(&statement, params).await?)
    }
}

impl<C: deadpool_postgres::GenericClient> Cached for C {}

/// Starts a transaction (its `BEGIN` is one round trip).
async fn begin(
    client: &mut deadpool_postgres::Object,
) -> Result<deadpool_postgres::Transaction<'_>, StoreError> {
    crate::round_trips::add(1);
    Ok(client.transaction().await?)
}

/// Commits a transaction (one round trip).
async fn commit(tx: deadpool_postgres::Transaction<'_>) -> Result<(), StoreError> {
    crate::round_trips::add(1);
    Ok(tx.commit().await?)
}

/// A statement parameter.
type Param<'a> = dyn tokio_postgres::types::ToSql + Sync + 'a;

/// Client TLS for `sslmode=require`: rustls with the web's root certificates.
fn tls() -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::Db(Box::new(e)))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// An id as the database keeps it (`bigint`); ids above its range name nothing stored.
fn db_id(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

/// A device id as the database keeps it (`integer`); ids above its range name nothing stored.
fn device_id(id: u32) -> i32 {
    i32::try_from(id).unwrap_or(i32::MAX)
}

/// A `u32` field the store wrote as `bigint`.
fn to_u32(v: i64, what: &str) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} out of range: {v}")))
}

/// A row id read back (never negative: sequences start at 1).
fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or_default()
}

fn pool_error(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => match StoreError::from(e) {
            e @ StoreError::Unavailable(_) => e,
            // Refused at login (a wrong password, no such database): still "cannot serve".
            e => StoreError::Unavailable(format!("cannot connect to the database: {e}")),
        },
        e => StoreError::Unavailable(format!("no database connection: {e}")),
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        let Some(db) = e.as_db_error() else {
            return if is_connection_failure(&e) {
                StoreError::Unavailable(format!("the database connection failed: {e}"))
            } else {
                StoreError::Db(Box::new(e))
            };
        };
        let code = db.code();
        if *code == SqlState::UNIQUE_VIOLATION {
            match db.constraint() {
                Some(schema::USERNAME_KEY) => return StoreError::UsernameTaken,
                Some(schema::EMAIL_KEY) => return StoreError::EmailTaken,
                Some(schema::DEVICE_KEY | schema::PRIMARY_KEY) => return StoreError::DeviceExists,
                _ => {}
            }
        }
        // A device or an attachment for a user that is gone; a keyed send from a device that
        // is gone (its token with it).
        if *code == SqlState::FOREIGN_KEY_VIOLATION
            && matches!(
                db.constraint(),
                Some(schema::DEVICE_USER | schema::IDEMPOTENCY_SENDER | schema::ATTACHMENT_OWNER)
            )
        {
            return StoreError::NoUser;
        }
        // Connection exceptions, insufficient resources, operator intervention (a shutdown,
        // a statement cancelled by `statement_timeout`): the database cannot serve right now.
        if matches!(&code.code()[..2], "08" | "53" | "57") || *code == SqlState::LOCK_NOT_AVAILABLE
        {
            return StoreError::Unavailable(format!("the database cannot serve: {}", db.message()));
        }
        StoreError::Db(Box::new(e))
    }
}

/// A failure of the connection itself (not of a statement): the database is gone or stalled.
fn is_connection_failure(e: &tokio_postgres::Error) -> bool {
    use std::error::Error;
    let text = e.to_string();
    e.is_closed()
        || e.source().is_some_and(|s| s.is::<std::io::Error>())
        || text.starts_with("error connecting")
        || text.starts_with("timeout")
}

/// A transaction worth running again: it lost a deadlock or a serialization check.
fn retryable(e: &StoreError) -> bool {
    let StoreError::Db(source) = e else {
        return false;
    };
    source
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(tokio_postgres::Error::code)
        .is_some_and(|c| {
            *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
        })
}
