//! Which store the in-process servers use. Without `SIGNAL_SERVER_TEST_DATABASE_URL` every
//! server keeps its data in sled in its data dir. With it (a PostgreSQL server the caller
//! started, e.g. with `tools/pg-test-cluster.sh`), each new data dir gets a fresh database of its
//! own on that server, remembered in the data dir so that a restart on the same dir finds its
//! data again. Likewise for blobs: with `SIGNAL_SERVER_TEST_S3_ENDPOINT` (an S3-protocol server,
//! e.g. from `tools/s3-test-server.sh`) a server given no blob store keeps its attachments under
//! a prefix of its own in that server's bucket, remembered in the data dir.

use std::path::Path;

/// The variable naming the PostgreSQL server to test against.
pub const DATABASE_ENV: &str = "SIGNAL_SERVER_TEST_DATABASE_URL";

/// Where a data dir remembers its database.
const REMEMBERED: &str = "test-database-url";

/// Set (by `.ci/run`) where running without PostgreSQL must fail rather than skip.
const REQUIRE_ENV: &str = "SIGNAL_SERVER_TEST_REQUIRE_DATABASE";

/// Whether the suite runs on PostgreSQL; panics when it must and cannot.
pub fn on_postgres() -> bool {
    let on = std::env::var_os(DATABASE_ENV).is_some();
    assert!(
        on || std::env::var_os(REQUIRE_ENV).is_none(),
        "{REQUIRE_ENV} is set but {DATABASE_ENV} is not: the PostgreSQL run has no database"
    );
    on
}

/// Makes the servers on `data_dir` use the database at `url` (several instances, one database).
pub fn share_database(data_dir: &Path, url: &str) {
    std::fs::write(data_dir.join(REMEMBERED), url).expect("remember the shared database");
}

/// The database a data dir's in-process server used, for the binary started on the same dir.
pub fn remembered_database(data_dir: &Path) -> Option<String> {
    std::fs::read_to_string(data_dir.join(REMEMBERED)).ok()
}

/// The variables naming the S3-protocol server and its bucket.
const S3_ENDPOINT_ENV: &str = "SIGNAL_SERVER_TEST_S3_ENDPOINT";
const S3_BUCKET_ENV: &str = "SIGNAL_SERVER_TEST_S3_BUCKET";

/// Where a data dir remembers its blobs' `s3://bucket/prefix`.
const REMEMBERED_S3: &str = "test-s3-url";

/// The blob store for the server on `data_dir`, as `--attachments-s3` and its endpoint: none
/// (the data dir's) without an S3 server; with one, the prefix this dir had before or a new one.
pub fn s3_for(data_dir: &Path) -> Option<(String, String)> {
    let endpoint = std::env::var(S3_ENDPOINT_ENV).ok()?;
    if let Some(remembered) = remembered_s3(data_dir) {
        return Some(remembered);
    }
    let bucket = std::env::var(S3_BUCKET_ENV)
        .unwrap_or_else(|_| panic!("{S3_ENDPOINT_ENV} is set but {S3_BUCKET_ENV} is not"));
    let url = format!("s3://{bucket}/t-{:016x}", rand::random::<u64>());
    std::fs::write(data_dir.join(REMEMBERED_S3), &url).expect("remember the test prefix");
    Some((url, endpoint))
}

/// The blob store a data dir's in-process server used, for the binary started on the same dir.
pub fn remembered_s3(data_dir: &Path) -> Option<(String, String)> {
    let url = std::fs::read_to_string(data_dir.join(REMEMBERED_S3)).ok()?;
    Some((url, std::env::var(S3_ENDPOINT_ENV).ok()?))
}

/// The database URL for the server on `data_dir`: none on sled; on PostgreSQL the one this dir
/// had before, or a new empty database.
pub async fn database_for(data_dir: &Path) -> Option<String> {
    let base = std::env::var(DATABASE_ENV).ok()?;
    if let Some(url) = remembered_database(data_dir) {
        return Some(url);
    }
    let name = format!("t_{:016x}", rand::random::<u64>());
    let (client, driver) = connect(&base).await;
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create a test database");
    drop(client);
    let _ = driver.await;
    let url = with_database(&base, &name);
    std::fs::write(data_dir.join(REMEMBERED), &url).expect("remember the test database");
    Some(url)
}

/// A new data dir; on PostgreSQL with a new empty database of its own (what a restore fills),
/// which the binary started on the dir is given.
pub async fn fresh_data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    database_for(dir.path()).await;
    dir
}

/// The tables whose rows a backup carries.
const DATA_TABLES: [&str; 8] = [
    "users",
    "devices",
    "prekeys",
    "kyber_prekeys",
    "messages",
    "reset_tokens",
    "invites",
    "attachments",
];

/// The rows of data (users, devices, keys, messages, tokens, invites, attachments) the data
/// dir's PostgreSQL database holds; 0 before its schema was created. Only on PostgreSQL.
pub async fn database_rows(data_dir: &Path) -> i64 {
    let url = remembered_database(data_dir).expect("a data dir with a test database");
    let (client, driver) = connect(&url).await;
    let created: bool = client
        .query_one("SELECT to_regclass('users') IS NOT NULL", &[])
        .await
        .expect("look for the schema")
        .get(0);
    let mut rows = 0;
    if created {
        for table in DATA_TABLES {
            let sql = format!("SELECT count(*) FROM {table}");
            let n: i64 = client.query_one(&sql, &[]).await.expect("count").get(0);
            rows += n;
        }
    }
    drop(client);
    let _ = driver.await;
    rows
}

/// Terminates the other sessions on the data dir's database whose last query is `LIKE` `query`
/// (`LISTEN%`: the instances' listeners; `%`: every one); answers how many. Only on PostgreSQL.
pub async fn terminate_sessions(data_dir: &Path, query: &str) -> u64 {
    let url = remembered_database(data_dir).expect("a data dir with a test database");
    let (client, driver) = connect(&url).await;
    let cut = client
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
             AND query ILIKE $1",
            &[&query],
        )
        .await
        .expect("terminate the sessions")
        .len() as u64;
    drop(client);
    let _ = driver.await;
    cut
}

/// Blocks of the `messages` table's out-of-line values (TOAST: large contents) read so far on
/// the data dir's database, from cache or disk. Only on PostgreSQL.
pub async fn content_blocks_read(data_dir: &Path) -> i64 {
    let url = remembered_database(data_dir).expect("a data dir with a test database");
    let (client, driver) = connect(&url).await;
    let n: i64 = client
        .query_one(
            "SELECT coalesce(toast_blks_hit, 0) + coalesce(toast_blks_read, 0) \
             FROM pg_statio_user_tables WHERE relname = 'messages'",
            &[],
        )
        .await
        .expect("the messages table's statistics")
        .get(0);
    drop(client);
    let _ = driver.await;
    n
}

/// How many sessions on the data dir's database `LISTEN` for signals. Only on PostgreSQL.
pub async fn count_listeners(data_dir: &Path) -> u64 {
    let url = remembered_database(data_dir).expect("a data dir with a test database");
    let (client, driver) = connect(&url).await;
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND pid <> pg_backend_pid() AND query ILIKE 'LISTEN%'",
            &[],
        )
        .await
        .expect("count the listeners")
        .get(0);
    drop(client);
    let _ = driver.await;
    n as u64
}

/// Whether a session other than the caller's is inside a transaction on the data dir's database
/// (a restore under way). Only on PostgreSQL.
pub async fn transaction_open(data_dir: &Path) -> bool {
    let url = remembered_database(data_dir).expect("a data dir with a test database");
    let (client, driver) = connect(&url).await;
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND pid <> pg_backend_pid() AND xact_start IS NOT NULL",
            &[],
        )
        .await
        .expect("sessions")
        .get(0);
    drop(client);
    let _ = driver.await;
    n > 0
}

/// A client on `url`, and its connection's task (ends once the client is dropped).
async fn connect(
    url: &str,
) -> (
    tokio_postgres::Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    (client, tokio::spawn(connection))
}

/// `base` (postgres://user@host:port/db?params) with another database name.
fn with_database(base: &str, name: &str) -> String {
    let (head, query) = base
        .split_once('?')
        .map_or((base, None), |(h, q)| (h, Some(q)));
    let authority_end = head.find("://").map_or(0, |i| i + 3);
    let server = match head[authority_end..].find('/') {
        Some(slash) => &head[..authority_end + slash],
        None => head,
    };
    match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    }
}
