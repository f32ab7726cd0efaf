//! Tests against a real PostgreSQL (`SIGNAL_SERVER_TEST_DATABASE_URL`, see
//! `tools/pg-test-cluster.sh`); each test works in a database of its own, so they run in
//! parallel. Without the URL they are skipped, except when `SIGNAL_SERVER_TEST_REQUIRE_DATABASE`
//! is set (as `.ci/run` does), where that is a failure.

mod accounts;
mod attachments;
mod backup;
mod devices;
mod keys;
mod messages;
mod outage;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::PgStore;
use crate::models::{Device, DeviceRef, Message, SignedPreKey};
use crate::storage::fixtures::{device, ec, message};
use crate::storage::{DeleteOutcome, ResetGrant, StoreError, Totals};

const URL_VAR: &str = "SIGNAL_SERVER_TEST_DATABASE_URL";

/// The URL of a new, empty database, or `None` (test skipped) without a server to test on.
async fn fresh_database() -> Option<String> {
    let Ok(base) = std::env::var(URL_VAR) else {
        assert!(
            std::env::var_os("SIGNAL_SERVER_TEST_REQUIRE_DATABASE").is_none(),
            "{URL_VAR} is not set: CI must run the PostgreSQL store's tests \
             (eval \"$(tools/pg-test-cluster.sh start)\")"
        );
        eprintln!("skipped: {URL_VAR} is not set");
        return None;
    };
    let name = format!("t_{:016x}", rand::random::<u64>());
    let (client, connection) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .expect("connect to the test server");
    tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create a test database");
    let (head, query) = base.split_once('?').unwrap_or((&base, ""));
    let server = match head.rsplit_once('/') {
        Some((server, _db)) if server.matches('/').count() >= 2 && !server.ends_with('/') => server,
        _ => head,
    };
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    Some(format!("{server}/{name}{query}"))
}

/// A store on a fresh database, and the URL for a second store (another process's pool).
async fn store() -> Option<(PgStore, String)> {
    let url = fresh_database().await?;
    Some((PgStore::connect(&url).await.expect("connect"), url))
}

fn kyber(ids: impl IntoIterator<Item = u32>) -> Vec<SignedPreKey> {
    ids.into_iter()
        .map(|key_id| SignedPreKey {
            key_id,
            public_key: vec![7; 1569],
            signature: vec![1; 64],
        })
        .collect()
}

fn with_last_resort(address: &str) -> Device {
    Device {
        last_resort_kyber: kyber([999]).pop(),
        ..device(address)
    }
}

/// Device 1 of `user`: the primary of every account these tests make with `user_with_device`.
fn one(user: u64) -> DeviceRef {
    DeviceRef { user, device: 1 }
}

/// A user `name` with a device and no keys; returns the user id.
async fn user_with_device(s: &PgStore, name: &str) -> u64 {
    let user = s.create_user(name, "", "h".into(), None).await.unwrap();
    let d = device(&format!("{name}.1"));
    s.create_device(user.id, &d, &[], &[]).await.unwrap();
    user.id
}

#[test]
fn the_verbs_futures_can_run_on_any_runtime_thread() {
    fn send<T: Send>(_: T) {}
    let s: Option<PgStore> = None;
    if let Some(s) = s {
        send(s.create_user("a", "", "h".into(), None));
        send(s.create_device(1, &device("a.1"), &[], &[]));
        send(s.add_prekeys(one(1), &[], 1));
        send(s.pop_prekeys(one(1)));
        send(s.link_device(1, &device("a.2"), &[], &[], 6));
        send(s.unlink_device(one(1)));
        send(s.enqueue(one(1), message("x", 1), 1));
        send(s.enqueue_all(1, None, Vec::new(), 1));
        send(s.delete_messages(one(1), &[]));
        send(s.messages_page(one(1), 0, 1, 1));
        send(s.totals());
    }
}

#[tokio::test]
async fn the_jwt_secret_is_kept_for_every_instance() {
    let Some((s1, url)) = store().await else {
        return;
    };
    let s2 = PgStore::connect(&url).await.unwrap();
    assert_eq!(s1.jwt_secret(b"first").await.unwrap(), b"first");
    assert_eq!(s2.jwt_secret(b"second").await.unwrap(), b"first");
    let s3 = PgStore::connect(&url).await.unwrap();
    assert_eq!(s3.jwt_secret(b"third").await.unwrap(), b"first");
}

#[tokio::test]
async fn totals_count_what_is_stored() {
    let Some((s, _)) = store().await else { return };
    s.create_invite(b"inv", 1).await.unwrap();
    let a = s.create_user("a", "", "h".into(), None).await.unwrap().id;
    s.create_device(a, &with_last_resort("a.1"), &ec(1..=3), &kyber(1..=2))
        .await
        .unwrap();
    s.enqueue(one(a), message("m", 1), 10).await.unwrap();
    s.pop_prekeys(one(a)).await.unwrap();
    let want = Totals {
        users: 1,
        devices: 1,
        queued_messages: 1,
        prekeys: 2,
        kyber_prekeys: 1,
        invites: 1,
    };
    assert_eq!(s.totals().await.unwrap(), want);
    s.health().await.unwrap();
}

#[tokio::test]
async fn a_schema_newer_than_this_build_is_refused() {
    let Some((s, url)) = store().await else {
        return;
    };
    // Connecting again to an up-to-date schema changes nothing.
    PgStore::connect(&url).await.unwrap();
    let client = s.client().await.unwrap();
    client
        .execute("UPDATE schema_version SET version = version + 1", &[])
        .await
        .unwrap();
    assert!(matches!(
        PgStore::connect(&url).await,
        Err(StoreError::Corrupt(_))
    ));
}
