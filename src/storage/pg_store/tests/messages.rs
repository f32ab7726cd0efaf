//! Message queues.

use super::*;

#[tokio::test]
async fn a_queue_pages_oldest_first_within_its_byte_budget() {
    let Some((s, _)) = store().await else { return };
    let a = user_with_device(&s, "a").await;
    assert!(matches!(
        s.enqueue(one(a + 1), message("x", 1), 5).await,
        Err(StoreError::NoDevice)
    ));
    let mut sent: Vec<Message> = Vec::new();
    for i in 0..5 {
        let m = message(&"x".repeat(1000), i);
        sent.push(s.enqueue(one(a), m, 5).await.unwrap());
    }
    assert!(sent.windows(2).all(|w| w[0].id < w[1].id));
    assert!(matches!(
        s.enqueue(one(a), message("y", 9), 5).await,
        Err(StoreError::QueueFull)
    ));
    assert_eq!(s.messages(one(a), 0, 10).await.unwrap(), sent);
    assert_eq!(s.messages(one(a), sent[1].id, 2).await.unwrap(), sent[2..4]);
    assert_eq!(s.messages_page(one(a), 0, 10, 2500).await.unwrap().len(), 2);
    assert_eq!(s.messages_page(one(a), 0, 10, 10).await.unwrap().len(), 1);
    assert_eq!(
        s.messages_page(one(a), 0, 3, usize::MAX)
            .await
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        s.message(one(a), sent[0].id).await.unwrap().as_ref(),
        Some(&sent[0])
    );
    assert_eq!(s.message(one(a + 1), sent[0].id).await.unwrap(), None);
    assert_eq!(s.messages(one(a), u64::MAX, 10).await.unwrap(), []);
    let ids: Vec<u64> = sent.iter().map(|m| m.id).collect();
    assert_eq!(s.queued_ids(one(a), 0, 10).await.unwrap(), ids);
    assert_eq!(s.queued_ids(one(a), ids[1], 2).await.unwrap(), ids[2..4]);
    assert!(s.queued_ids(one(a + 1), 0, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn only_the_recipient_deletes_a_message_and_once() {
    let Some((s, _)) = store().await else { return };
    let a = user_with_device(&s, "a").await;
    let b = user_with_device(&s, "b").await;
    let m = s.enqueue(one(a), message("x", 1), 10).await.unwrap();
    let out = s
        .delete_messages(one(b), &[m.id, 999_999, u64::MAX])
        .await
        .unwrap();
    use DeleteOutcome::*;
    assert_eq!(out, [NotOwner, NotFound, NotFound]);
    assert_eq!(
        s.delete_messages(one(a), &[m.id, m.id]).await.unwrap(),
        [Deleted, NotFound]
    );
    assert_eq!(
        s.delete_messages(one(a), &[m.id]).await.unwrap(),
        [NotFound]
    );
    assert_eq!(s.queue_len(one(a)).await.unwrap(), 0);
}

#[tokio::test]
async fn sweeps_remove_only_what_expired() {
    let Some((s, _)) = store().await else { return };
    let a = user_with_device(&s, "a").await;
    s.enqueue(one(a), message("old", 10), 10).await.unwrap();
    s.enqueue(one(a), message("new", 1000), 10).await.unwrap();
    assert_eq!(s.sweep_expired(500).await.unwrap(), 1);
    assert_eq!(s.messages(one(a), 0, 10).await.unwrap()[0].content, "new");
    assert_eq!(s.queue_len(one(a)).await.unwrap(), 1);

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

#[tokio::test]
async fn a_large_backlog_is_swept_in_batches() {
    let Some((s, _)) = store().await else { return };
    let a = user_with_device(&s, "a").await;
    s.enqueue(one(a), message("new", 1000), 10).await.unwrap();
    // More than one batch of expired messages, written directly.
    s.client()
        .await
        .unwrap()
        .execute(
            "INSERT INTO messages (user_id, device_id, sender_address, sender_registration_id, \
             content, recipient_address, timestamp) \
             SELECT $1, 1, 's.1', 3, 'old', 'a.1', 10 FROM generate_series(1, 12000)",
            &[&(a as i64)],
        )
        .await
        .unwrap();
    assert_eq!(s.sweep_expired(500).await.unwrap(), 12000);
    assert_eq!(s.queue_len(one(a)).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_stays_queued_for_a_device_deleted_during_sends_on_two_instances() {
    let Some((s1, url)) = store().await else {
        return;
    };
    let s2 = PgStore::connect(&url).await.unwrap();
    let a = user_with_device(&s1, "a").await;
    let sends: Vec<_> = (0..32)
        .map(|i| {
            let s = if i % 2 == 0 { s1.clone() } else { s2.clone() };
            tokio::spawn(async move { s.enqueue(one(a), message("m", 1), 100).await })
        })
        .collect();
    s2.delete_device(a).await.unwrap();
    for t in sends {
        match t.await.unwrap() {
            Ok(_) | Err(StoreError::NoDevice) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(s1.queue_len(one(a)).await.unwrap(), 0);
    assert_eq!(s1.totals().await.unwrap().queued_messages, 0);
}

#[tokio::test]
async fn a_keyed_send_is_stored_once() {
    let Some((s, _)) = store().await else { return };
    crate::storage::idempotency::conformance::a_keyed_send_is_stored_once(
        &crate::storage::Storage::Postgres(s),
    )
    .await;
}

/// Two stores on one database are two instances: the second commit under a key waits for the
/// first, finds its row, and rolls its messages back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keyed_sends_racing_on_two_instances_queue_one() {
    let Some((s1, url)) = store().await else {
        return;
    };
    let s2 = PgStore::connect(&url).await.unwrap();
    let stores = [s1, s2].map(crate::storage::Storage::Postgres);
    crate::storage::idempotency::conformance::racing_keyed_sends_queue_one(&stores).await;
}
