//! Tests against a real PostgreSQL (`SIGNAL_SERVER_TEST_DATABASE_URL`, see
//! `tools/pg-test-cluster.sh`); each test works in a database of its own, so they run in
//! parallel. Without the URL they are skipped, except under CI, where that is a failure.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::PgStore;
use crate::models::{Device, Message, SignedPreKey};
use crate::storage::fixtures::{device, ec, message};
use crate::storage::{DeleteOutcome, ResetGrant, StoreError, Totals};

const URL_VAR: &str = "SIGNAL_SERVER_TEST_DATABASE_URL";

/// The URL of a new, empty database, or `None` (test skipped) without a server to test on.
async fn fresh_database() -> Option<String> {
    let Ok(base) = std::env::var(URL_VAR) else {
        assert!(
            std::env::var_os("CI").is_none(),
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
        send(s.add_prekeys(1, &[], 1));
        send(s.pop_prekeys(1));
        send(s.enqueue(1, message("x", 1), 1));
        send(s.delete_messages(1, &[]));
        send(s.messages_page(1, 0, 1, 1));
        send(s.totals());
    }
}

#[tokio::test]
async fn usernames_and_emails_are_unique_case_insensitively() {
    let Some((s, _)) = store().await else { return };
    let a = s
        .create_user("Alice", "a@x.org", "h".into(), None)
        .await
        .unwrap();
    assert!(matches!(
        s.create_user("alice", "", "h".into(), None).await,
        Err(StoreError::UsernameTaken)
    ));
    assert!(matches!(
        s.create_user("bob", "A@X.org", "h".into(), None).await,
        Err(StoreError::EmailTaken)
    ));
    // "No email" is not an email: many users have none.
    s.create_user("carol", "", "h".into(), None).await.unwrap();
    s.create_user("dave", "", "h".into(), None).await.unwrap();
    assert_eq!(s.user_by_name("ALICE").await.unwrap().unwrap().id, a.id);
    assert_eq!(
        s.user_by_email("a@X.ORG").await.unwrap().unwrap().username,
        "Alice"
    );
    assert!(s.user_by_email("").await.unwrap().is_none());
    assert_eq!(s.user(a.id).await.unwrap().unwrap().email, "a@x.org");
    assert!(s.user(a.id + 1000).await.unwrap().is_none());
    let page = s.users_page(0, 2).await.unwrap();
    assert_eq!(
        page.iter().map(|u| u.username.as_str()).collect::<Vec<_>>(),
        ["Alice", "carol"]
    );
    let rest = s.users_page(page[1].id, 10).await.unwrap();
    assert_eq!(
        rest.iter().map(|u| u.username.as_str()).collect::<Vec<_>>(),
        ["dave"]
    );
}

#[tokio::test]
async fn a_password_change_bumps_the_token_version() {
    let Some((s, _)) = store().await else { return };
    let a = s.create_user("a", "", "old".into(), None).await.unwrap();
    assert_eq!(a.token_version, 0);
    let changed = s.set_password(a.id, "new".into()).await.unwrap();
    assert_eq!(
        (changed.password_hash.as_str(), changed.token_version),
        ("new", 1)
    );
    assert_eq!(s.user(a.id).await.unwrap().unwrap().token_version, 1);
    assert!(matches!(
        s.set_password(a.id + 1, "x".into()).await,
        Err(StoreError::NoUser)
    ));
}

#[tokio::test]
async fn deleting_a_user_removes_their_device_keys_and_queue_but_not_what_they_sent() {
    let Some((s, _)) = store().await else { return };
    let a = s
        .create_user("a", "a@x.org", "h".into(), None)
        .await
        .unwrap();
    s.create_device(a.id, &with_last_resort("a.1"), &ec(1..=5), &kyber(1..=5))
        .await
        .unwrap();
    let b = user_with_device(&s, "b").await;
    s.enqueue(a.id, message("to a", 1), 10).await.unwrap();
    let sent = s.enqueue(b, message("from a", 1), 10).await.unwrap();

    s.delete_user(a.id).await.unwrap();
    assert!(s.user(a.id).await.unwrap().is_none());
    assert!(s.device(a.id).await.unwrap().is_none());
    assert_eq!(s.stock(a.id).await.unwrap().prekeys, 0);
    assert_eq!(s.queue_len(a.id).await.unwrap(), 0);
    assert_eq!(s.message(b, sent.id).await.unwrap(), Some(sent));
    let totals = s.totals().await.unwrap();
    assert_eq!(
        (totals.users, totals.prekeys, totals.kyber_prekeys),
        (1, 0, 0)
    );
    assert!(matches!(s.delete_user(a.id).await, Err(StoreError::NoUser)));
    // The name and email are free again; the id is never reused.
    let again = s
        .create_user("A", "A@x.org", "h".into(), None)
        .await
        .unwrap();
    assert!(again.id > b);
}

#[tokio::test]
async fn a_device_is_created_with_its_keys_once() {
    let Some((s, _)) = store().await else { return };
    let a = s.create_user("a", "", "h".into(), None).await.unwrap();
    let d = with_last_resort("a.1");
    s.create_device(a.id, &d, &ec(1..=3), &kyber(1..=2))
        .await
        .unwrap();
    let stored = s.device(a.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.address.as_str(), stored.registration_id),
        ("a.1", 7)
    );
    assert_eq!(stored.last_resort_kyber, d.last_resort_kyber);
    let stock = s.stock(a.id).await.unwrap();
    assert_eq!((stock.prekeys, stock.kyber_prekeys), (3, 2));

    // A second create is refused and changes nothing.
    assert!(matches!(
        s.create_device(a.id, &device("a.1"), &ec(10..=20), &[])
            .await,
        Err(StoreError::DeviceExists)
    ));
    assert_eq!(s.stock(a.id).await.unwrap().prekeys, 3);
    assert!(matches!(
        s.create_device(a.id + 1, &device("x.1"), &ec(1..=3), &[])
            .await,
        Err(StoreError::NoUser)
    ));

    let new_key = kyber([42]).pop().unwrap();
    s.set_signed_prekey(a.id, &new_key).await.unwrap();
    assert_eq!(
        s.device(a.id).await.unwrap().unwrap().signed_prekey,
        new_key
    );

    s.delete_device(a.id).await.unwrap();
    assert!(s.device(a.id).await.unwrap().is_none());
    assert!(matches!(
        s.delete_device(a.id).await,
        Err(StoreError::NoDevice)
    ));
    assert!(matches!(
        s.set_signed_prekey(a.id, &new_key).await,
        Err(StoreError::NoDevice)
    ));
    // A new device starts from nothing.
    s.create_device(a.id, &device("a.1"), &[], &[])
        .await
        .unwrap();
    let stock = s.stock(a.id).await.unwrap();
    assert_eq!((stock.prekeys, stock.kyber_prekeys), (0, 0));
    assert_eq!(
        s.device(a.id).await.unwrap().unwrap().last_resort_kyber,
        None
    );
}

#[tokio::test]
async fn uploads_over_the_cap_store_nothing() {
    let Some((s, _)) = store().await else { return };
    assert!(matches!(
        s.add_prekeys(1, &ec(0..5), 10).await,
        Err(StoreError::NoDevice)
    ));
    let a = user_with_device(&s, "a").await;
    s.add_prekeys(a, &ec(0..5), 10).await.unwrap();
    assert!(matches!(
        s.add_prekeys(a, &ec(10..20), 10).await,
        Err(StoreError::TooManyPrekeys)
    ));
    assert_eq!(s.stock(a).await.unwrap().prekeys, 5);
    // Replacing stored ids does not count twice, nor does an id repeated in one upload.
    assert_eq!(
        s.add_prekeys(a, &ec((0..10).chain(0..3)), 10)
            .await
            .unwrap(),
        10
    );

    // The last-resort key is not counted, and a refused upload does not replace it.
    let last = kyber([500]).pop().unwrap();
    assert_eq!(
        s.add_kyber_prekeys(a, &kyber(1..=4), Some(&last), 4)
            .await
            .unwrap(),
        4
    );
    let other = kyber([501]).pop().unwrap();
    assert!(matches!(
        s.add_kyber_prekeys(a, &kyber([9]), Some(&other), 4).await,
        Err(StoreError::TooManyPrekeys)
    ));
    assert_eq!(
        s.device(a).await.unwrap().unwrap().last_resort_kyber,
        Some(last)
    );
    assert_eq!(
        s.add_kyber_prekeys(a, &[], Some(&other), 4).await.unwrap(),
        4
    );
    assert_eq!(
        s.device(a).await.unwrap().unwrap().last_resort_kyber,
        Some(other)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn caps_hold_exactly_under_concurrent_uploads_and_sends_from_two_instances() {
    let Some((s1, url)) = store().await else {
        return;
    };
    let s2 = PgStore::connect(&url).await.unwrap();
    let a = user_with_device(&s1, "a").await;
    let mut tasks = Vec::new();
    for i in 0..32u32 {
        let s = if i % 2 == 0 { s1.clone() } else { s2.clone() };
        tasks.push(tokio::spawn(async move {
            let keys = s.add_prekeys(a, &ec(i * 10..i * 10 + 10), 100).await;
            let kyber = s
                .add_kyber_prekeys(a, &kyber(i * 5..i * 5 + 5), None, 50)
                .await;
            let sent = s.enqueue(a, message("m", 1), 20).await;
            (keys.is_ok(), kyber.is_ok(), sent.ok().map(|m| m.id))
        }));
    }
    let (mut keys, mut kybers, mut ids) = (0, 0, HashSet::new());
    for t in tasks {
        let (k, ky, id) = t.await.unwrap();
        keys += usize::from(k);
        kybers += usize::from(ky);
        ids.extend(id);
    }
    assert_eq!((keys, kybers, ids.len()), (10, 10, 20));
    let stock = s2.stock(a).await.unwrap();
    assert_eq!((stock.prekeys, stock.kyber_prekeys), (100, 50));
    assert_eq!(s1.queue_len(a).await.unwrap(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_of_100_prekeys_is_handed_out_once_to_concurrent_takers_on_two_instances() {
    let Some((s1, url)) = store().await else {
        return;
    };
    let s2 = PgStore::connect(&url).await.unwrap();
    let a = s1.create_user("a", "", "h".into(), None).await.unwrap().id;
    let d = with_last_resort("a.1");
    s1.create_device(a, &d, &ec(1..=100), &kyber(1..=100))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..32 {
        let s = if i % 2 == 0 { s1.clone() } else { s2.clone() };
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let popped = s.pop_prekeys(a).await.unwrap();
                let (Some(ec), Some(ky)) = (popped.prekey, popped.kyber) else {
                    return got;
                };
                got.push((ec.key_id, ky.key_id));
            }
        }));
    }
    let (mut ecs, mut kybers) = (Vec::new(), Vec::new());
    for t in tasks {
        for (ec, ky) in t.await.unwrap() {
            ecs.push(ec);
            kybers.push(ky);
        }
    }
    ecs.sort_unstable();
    kybers.sort_unstable();
    assert_eq!(ecs, (1..=100).collect::<Vec<_>>());
    assert_eq!(kybers, (1..=100).collect::<Vec<_>>());
    // Then nothing is left to take; the last-resort key stays with the device.
    let popped = s2.pop_prekeys(a).await.unwrap();
    assert!(popped.prekey.is_none() && popped.kyber.is_none());
    assert_eq!(
        s1.device(a).await.unwrap().unwrap().last_resort_kyber,
        d.last_resort_kyber
    );
    // One kind can run out before the other.
    s1.add_prekeys(a, &ec([7]), 100).await.unwrap();
    let popped = s1.pop_prekeys(a).await.unwrap();
    assert_eq!(
        (popped.prekey.map(|k| k.key_id), popped.kyber),
        (Some(7), None)
    );
}

#[tokio::test]
async fn a_queue_pages_oldest_first_within_its_byte_budget() {
    let Some((s, _)) = store().await else { return };
    let a = user_with_device(&s, "a").await;
    assert!(matches!(
        s.enqueue(a + 1, message("x", 1), 5).await,
        Err(StoreError::NoDevice)
    ));
    let mut sent: Vec<Message> = Vec::new();
    for i in 0..5 {
        let m = message(&"x".repeat(1000), i);
        sent.push(s.enqueue(a, m, 5).await.unwrap());
    }
    assert!(sent.windows(2).all(|w| w[0].id < w[1].id));
    assert!(matches!(
        s.enqueue(a, message("y", 9), 5).await,
        Err(StoreError::QueueFull)
    ));
    assert_eq!(s.messages(a, 0, 10).await.unwrap(), sent);
    assert_eq!(s.messages(a, sent[1].id, 2).await.unwrap(), sent[2..4]);
    assert_eq!(s.messages_page(a, 0, 10, 2500).await.unwrap().len(), 2);
    assert_eq!(s.messages_page(a, 0, 10, 10).await.unwrap().len(), 1);
    assert_eq!(s.messages_page(a, 0, 3, usize::MAX).await.unwrap().len(), 3);
    assert_eq!(
        s.message(a, sent[0].id).await.unwrap().as_ref(),
        Some(&sent[0])
    );
    assert_eq!(s.message(a + 1, sent[0].id).await.unwrap(), None);
    assert_eq!(s.messages(a, u64::MAX, 10).await.unwrap(), []);
}

#[tokio::test]
async fn only_the_recipient_deletes_a_message_and_once() {
    let Some((s, _)) = store().await else { return };
    let a = user_with_device(&s, "a").await;
    let b = user_with_device(&s, "b").await;
    let m = s.enqueue(a, message("x", 1), 10).await.unwrap();
    let out = s
        .delete_messages(b, &[m.id, 999_999, u64::MAX])
        .await
        .unwrap();
    use DeleteOutcome::*;
    assert_eq!(out, [NotOwner, NotFound, NotFound]);
    assert_eq!(
        s.delete_messages(a, &[m.id, m.id]).await.unwrap(),
        [Deleted, NotFound]
    );
    assert_eq!(s.delete_messages(a, &[m.id]).await.unwrap(), [NotFound]);
    assert_eq!(s.queue_len(a).await.unwrap(), 0);
}

#[tokio::test]
async fn sweeps_remove_only_what_expired() {
    let Some((s, _)) = store().await else { return };
    let a = user_with_device(&s, "a").await;
    s.enqueue(a, message("old", 10), 10).await.unwrap();
    s.enqueue(a, message("new", 1000), 10).await.unwrap();
    assert_eq!(s.sweep_expired(500).await.unwrap(), 1);
    assert_eq!(s.messages(a, 0, 10).await.unwrap()[0].content, "new");
    assert_eq!(s.queue_len(a).await.unwrap(), 1);

    for (hash, expires_at) in [(b"t1", 100), (b"t2", 200), (b"t3", 300)] {
        let grant = ResetGrant {
            user_id: a,
            token_version: 0,
            expires_at,
        };
        s.put_reset_token(hash, &grant).await.unwrap();
    }
    assert_eq!(s.sweep_reset_tokens(200).await.unwrap(), 2);
    assert!(s.reset_grant(b"t2").await.unwrap().is_none());
    assert!(s.reset_grant(b"t3").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reset_token_is_taken_once_even_by_concurrent_takers() {
    let Some((s, url)) = store().await else {
        return;
    };
    let s2 = PgStore::connect(&url).await.unwrap();
    let grant = ResetGrant {
        user_id: 9,
        token_version: 2,
        expires_at: 100,
    };
    s.put_reset_token(b"hash", &grant).await.unwrap();
    assert_eq!(s.reset_grant(b"hash").await.unwrap(), Some(grant.clone()));
    assert_eq!(s2.reset_grant(b"hash").await.unwrap(), Some(grant.clone()));
    let takers: Vec<_> = (0..8)
        .map(|i| {
            let s = if i % 2 == 0 { s.clone() } else { s2.clone() };
            tokio::spawn(async move { s.take_reset_token(b"hash").await.unwrap() })
        })
        .collect();
    let mut taken = Vec::new();
    for t in takers {
        taken.extend(t.await.unwrap());
    }
    assert_eq!(taken, [grant]);
    assert_eq!(s.take_reset_token(b"hash").await.unwrap(), None);
}

#[tokio::test]
async fn an_invite_registers_one_user_only() {
    let Some((s, _)) = store().await else { return };
    s.create_user("taken", "", "h".into(), None).await.unwrap();
    s.create_invite(b"inv", 1).await.unwrap();
    // A refused registration does not use the invite up.
    assert!(matches!(
        s.create_user("Taken", "", "h".into(), Some(b"inv")).await,
        Err(StoreError::UsernameTaken)
    ));
    s.create_user("one", "", "h".into(), Some(b"inv"))
        .await
        .unwrap();
    assert!(matches!(
        s.create_user("two", "", "h".into(), Some(b"inv")).await,
        Err(StoreError::InvalidInvite)
    ));
    assert!(s.user_by_name("two").await.unwrap().is_none());
    assert_eq!(s.totals().await.unwrap().invites, 0);
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
    s.enqueue(a, message("m", 1), 10).await.unwrap();
    s.pop_prekeys(a).await.unwrap();
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

#[tokio::test]
async fn a_database_that_does_not_answer_is_unavailable_within_5_s() {
    if fresh_database().await.is_none() {
        return;
    }
    // Accepts connections and never says a word: a stalled server.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let started = Instant::now();
    let outcome = PgStore::connect(&format!("postgres://u@127.0.0.1:{port}/db")).await;
    assert!(
        matches!(outcome, Err(StoreError::Unavailable(_))),
        "{:?}",
        outcome.err()
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    hold.abort();

    // Nobody listening at all: refused at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let outcome = PgStore::connect(&format!("postgres://u@127.0.0.1:{port}/db")).await;
    assert!(
        matches!(outcome, Err(StoreError::Unavailable(_))),
        "{:?}",
        outcome.err()
    );
}
