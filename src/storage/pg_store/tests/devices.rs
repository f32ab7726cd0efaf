//! Several devices per account: links, unlinks, sends to every device, and migration 2.

use super::*;
use crate::models::Outgoing;
use crate::storage::Mismatch;

/// A device to link (its address is the store's to choose).
fn linked(registration_id: u32) -> Device {
    Device {
        address: "ignored.9".into(),
        registration_id,
        ..with_last_resort("x.1")
    }
}

fn at(user: u64, device: u32) -> DeviceRef {
    DeviceRef { user, device }
}

fn ids(devices: &[Device]) -> Vec<u32> {
    devices.iter().map(Device::id).collect()
}

/// One ciphertext for device `device` believed to have `registration_id`.
fn to(device: u32, registration_id: u32, content: &str) -> Outgoing {
    Outgoing {
        device,
        registration_id,
        message: message(content, 1),
    }
}

/// Rows still stored for device `device` of `user`: prekeys, Kyber prekeys (with the last
/// resort), messages.
async fn rows_of(s: &PgStore, user: u64, device: i32) -> (i64, i64, i64) {
    let client = s.client().await.unwrap();
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM prekeys WHERE user_id = $1 AND device_id = $2), \
             (SELECT count(*) FROM kyber_prekeys WHERE user_id = $1 AND device_id = $2), \
             (SELECT count(*) FROM messages WHERE user_id = $1 AND device_id = $2)",
            &[&(user as i64), &device],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

#[tokio::test]
async fn links_take_the_lowest_free_ids_up_to_the_most_devices() {
    let Some((s, _)) = store().await else { return };
    let a = user_with_device(&s, "a").await;
    assert!(matches!(
        s.link_device(a + 1, &linked(20), &[], &[], 6).await,
        Err(StoreError::NoDevice)
    ));
    for (registration_id, want) in [(20, "a.2"), (21, "a.3"), (22, "a.4")] {
        let d = s
            .link_device(a, &linked(registration_id), &[], &[], 4)
            .await
            .unwrap();
        assert_eq!(d.address, want);
        assert_eq!(d.registration_id, registration_id);
    }
    assert!(matches!(
        s.link_device(a, &linked(23), &[], &[], 4).await,
        Err(StoreError::TooManyDevices)
    ));
    // The checks in the API's order: identity key, registration id, room.
    let stranger = Device {
        identity_key: vec![6; 33],
        ..linked(24)
    };
    assert!(matches!(
        s.link_device(a, &stranger, &[], &[], 4).await,
        Err(StoreError::IdentityKeyMismatch)
    ));
    assert!(matches!(
        s.link_device(a, &linked(21), &[], &[], 10).await,
        Err(StoreError::RegistrationIdTaken)
    ));

    s.unlink_device(at(a, 3)).await.unwrap();
    assert!(matches!(
        s.unlink_device(at(a, 3)).await,
        Err(StoreError::NoSuchDevice)
    ));
    assert_eq!(
        s.link_device(a, &linked(25), &[], &[], 4)
            .await
            .unwrap()
            .address,
        "a.3"
    );
    let devices = s.devices(a).await.unwrap();
    assert_eq!(ids(&devices), [1, 2, 3, 4]);
    assert_eq!(devices[2].registration_id, 25);
    assert_eq!(s.device(a).await.unwrap().unwrap().address, "a.1");
    assert_eq!(s.totals().await.unwrap().devices, 4);
    assert!(s.devices(a + 1).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_primary_has_the_id_in_its_address_and_is_listed_first() {
    let Some((s, _)) = store().await else { return };
    let b = s.create_user("b", "", "h".into(), None).await.unwrap().id;
    s.create_device(b, &device("b.5"), &ec(1..=2), &[])
        .await
        .unwrap();
    assert_eq!(s.stock(at(b, 5)).await.unwrap().prekeys, 2);
    assert!(matches!(
        s.add_prekeys(at(b, 1), &ec(3..=4), 10).await,
        Err(StoreError::NoDevice)
    ));
    // Linked ids start at 2 whatever the primary's is, and skip the primary's.
    for _ in 0..4 {
        let n = s.devices(b).await.unwrap().len() as u32;
        s.link_device(b, &linked(30 + n), &[], &[], 10)
            .await
            .unwrap();
    }
    assert_eq!(ids(&s.devices(b).await.unwrap()), [5, 2, 3, 4, 6]);
    assert_eq!(s.device(b).await.unwrap().unwrap().address, "b.5");
    // A second primary is refused however it is named.
    assert!(matches!(
        s.create_device(b, &device("b.9"), &[], &[]).await,
        Err(StoreError::DeviceExists)
    ));
    assert!(matches!(
        s.unlink_device(at(b, 5)).await,
        Err(StoreError::PrimaryDevice)
    ));
    assert_eq!(s.stock(at(b, 5)).await.unwrap().prekeys, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_links_on_two_instances_never_pass_the_most_nor_share_an_id() {
    let Some((s1, url)) = store().await else {
        return;
    };
    let s2 = PgStore::connect(&url).await.unwrap();
    let a = user_with_device(&s1, "a").await;
    let tasks: Vec<_> = (0..16u32)
        .map(|i| {
            let s = if i % 2 == 0 { s1.clone() } else { s2.clone() };
            tokio::spawn(async move {
                s.link_device(a, &linked(100 + i), &ec([i]), &kyber([i]), 6)
                    .await
            })
        })
        .collect();
    let mut taken = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(d) => taken.push(d.id()),
            Err(StoreError::TooManyDevices) => {}
            Err(e) => panic!("{e}"),
        }
    }
    taken.sort_unstable();
    assert_eq!(taken, [2, 3, 4, 5, 6]);
    let devices = s2.devices(a).await.unwrap();
    assert_eq!(ids(&devices), [1, 2, 3, 4, 5, 6]);
    // Each device has the keys of the link that made it, and no other's.
    for d in &devices[1..] {
        let stock = s1.stock(d.of(a)).await.unwrap();
        assert_eq!((stock.prekeys, stock.kyber_prekeys), (1, 1));
        let popped = s1.pop_prekeys(d.of(a)).await.unwrap();
        assert_eq!(popped.prekey.unwrap().key_id, d.registration_id - 100);
    }
}

#[tokio::test]
async fn a_reused_id_starts_empty() {
    let Some((s, _)) = store().await else { return };
    let a = user_with_device(&s, "a").await;
    let old = s
        .link_device(a, &linked(20), &ec(1..=3), &kyber(1..=2), 6)
        .await
        .unwrap();
    assert_eq!(old.id(), 2);
    let queued = s.enqueue(at(a, 2), message("old", 1), 10).await.unwrap();
    assert_eq!(rows_of(&s, a, 2).await, (3, 3, 1));
    s.unlink_device(at(a, 2)).await.unwrap();
    assert_eq!(rows_of(&s, a, 2).await, (0, 0, 0));
    assert!(matches!(
        s.enqueue(at(a, 2), message("late", 1), 10).await,
        Err(StoreError::NoDevice)
    ));
    assert!(matches!(
        s.add_prekeys(at(a, 2), &ec([9]), 10).await,
        Err(StoreError::NoDevice)
    ));
    assert!(matches!(
        s.set_signed_prekey(at(a, 2), &kyber([3]).pop().unwrap())
            .await,
        Err(StoreError::NoDevice)
    ));

    let new = Device {
        last_resort_kyber: None,
        ..linked(21)
    };
    assert_eq!(s.link_device(a, &new, &[], &[], 6).await.unwrap().id(), 2);
    let stock = s.stock(at(a, 2)).await.unwrap();
    assert_eq!((stock.prekeys, stock.kyber_prekeys), (0, 0));
    assert_eq!(s.queue_len(at(a, 2)).await.unwrap(), 0);
    assert!(s.message(at(a, 2), queued.id).await.unwrap().is_none());
    let popped = s.pop_prekeys(at(a, 2)).await.unwrap();
    assert!(popped.prekey.is_none() && popped.kyber.is_none());
    let listed = s.devices(a).await.unwrap();
    assert_eq!(listed[1].registration_id, 21);
    assert_eq!(listed[1].last_resort_kyber, None);
    assert_eq!(rows_of(&s, a, 2).await, (0, 0, 0));
}

#[tokio::test]
async fn each_device_has_its_own_keys_and_queue() {
    let Some((s, _)) = store().await else { return };
    let a = s.create_user("a", "", "h".into(), None).await.unwrap().id;
    s.create_device(a, &with_last_resort("a.1"), &ec(1..=3), &kyber(1..=3))
        .await
        .unwrap();
    s.link_device(a, &linked(20), &ec(10..=11), &kyber([10]), 6)
        .await
        .unwrap();
    for want in [Some(10), Some(11), None] {
        let popped = s.pop_prekeys(at(a, 2)).await.unwrap();
        assert_eq!(popped.prekey.map(|k| k.key_id), want);
    }
    let stock = s.stock(at(a, 1)).await.unwrap();
    assert_eq!((stock.prekeys, stock.kyber_prekeys), (3, 3));
    assert_eq!(
        s.pop_prekeys(at(a, 1))
            .await
            .unwrap()
            .prekey
            .unwrap()
            .key_id,
        1
    );
    // The last-resort key is never popped; each device has its own.
    let popped = s.pop_prekeys(at(a, 2)).await.unwrap();
    assert!(popped.kyber.is_none());
    let devices = s.devices(a).await.unwrap();
    assert!(devices.iter().all(|d| d.last_resort_kyber.is_some()));

    s.add_prekeys(at(a, 2), &ec(20..=24), 5).await.unwrap();
    assert!(matches!(
        s.add_prekeys(at(a, 2), &ec([25]), 5).await,
        Err(StoreError::TooManyPrekeys)
    ));
    assert_eq!(s.add_prekeys(at(a, 1), &ec([25]), 5).await.unwrap(), 3);

    let new_key = SignedPreKey {
        key_id: 77,
        ..kyber([0]).pop().unwrap()
    };
    s.set_signed_prekey(at(a, 2), &new_key).await.unwrap();
    let devices = s.devices(a).await.unwrap();
    assert_eq!(
        (
            devices[0].signed_prekey.key_id,
            devices[1].signed_prekey.key_id
        ),
        (1, 77)
    );

    let m = s.enqueue(at(a, 2), message("for 2", 1), 1).await.unwrap();
    assert!(matches!(
        s.enqueue(at(a, 2), message("more", 1), 1).await,
        Err(StoreError::QueueFull)
    ));
    s.enqueue(at(a, 1), message("for 1", 1), 1).await.unwrap();
    assert_eq!(
        s.messages(at(a, 2), 0, 10).await.unwrap(),
        std::slice::from_ref(&m)
    );
    assert_eq!(s.message(at(a, 1), m.id).await.unwrap(), None);
    use DeleteOutcome::*;
    assert_eq!(
        s.delete_messages(at(a, 1), &[m.id]).await.unwrap(),
        [NotOwner]
    );
    assert_eq!(
        s.delete_messages(at(a, 2), &[m.id]).await.unwrap(),
        [Deleted]
    );
    assert_eq!(s.queue_len(at(a, 1)).await.unwrap(), 1);
}

#[tokio::test]
async fn a_send_to_every_device_is_stored_whole_or_not_at_all() {
    let Some((s, _)) = store().await else { return };
    let a = user_with_device(&s, "a").await;
    for registration_id in [20, 21] {
        s.link_device(a, &linked(registration_id), &[], &[], 6)
            .await
            .unwrap();
    }
    s.enqueue(at(a, 3), message("early", 1), 10).await.unwrap();
    s.enqueue(at(a, 3), message("early", 2), 10).await.unwrap();
    let all = || vec![to(3, 21, "c"), to(1, 7, "a"), to(2, 20, "b")];

    // One full queue: nothing is stored anywhere.
    assert!(matches!(
        s.enqueue_all(a, None, all(), 2).await,
        Err(StoreError::QueueFull)
    ));
    let mut lens = Vec::new();
    for device in [1, 2, 3] {
        lens.push(s.queue_len(at(a, device)).await.unwrap());
    }
    assert_eq!(lens, [0, 0, 2]);

    let stored = s.enqueue_all(a, None, all(), 3).await.unwrap();
    let seen: Vec<(&str, &str)> = stored
        .iter()
        .map(|m| (m.content.as_str(), m.recipient_address.as_str()))
        .collect();
    assert_eq!(seen, [("c", "a.3"), ("a", "a.1"), ("b", "a.2")]);
    assert!(stored.windows(2).all(|w| w[0].id < w[1].id));
    for (m, device) in stored.iter().zip([3, 1, 2]) {
        assert_eq!(
            s.message(at(a, device), m.id).await.unwrap().as_ref(),
            Some(m)
        );
    }
    assert_eq!(s.queue_len(at(a, 3)).await.unwrap(), 3);
    assert_eq!(s.totals().await.unwrap().queued_messages, 5);
}

#[tokio::test]
async fn a_send_naming_other_devices_is_refused_with_the_difference() {
    let Some((s, _)) = store().await else { return };
    let a = user_with_device(&s, "a").await;
    for registration_id in [20, 21] {
        s.link_device(a, &linked(registration_id), &[], &[], 6)
            .await
            .unwrap();
    }
    let refused = |r: Result<Vec<Message>, StoreError>| match r {
        Err(StoreError::DevicesChanged(m)) => m,
        other => panic!("{other:?}"),
    };
    let m = refused(
        s.enqueue_all(a, None, vec![to(1, 7, "x"), to(9, 1, "x")], 10)
            .await,
    );
    assert_eq!(
        m,
        Mismatch {
            stale: vec![],
            missing: vec![2, 3],
            extra: vec![9],
        }
    );
    let m = refused(
        s.enqueue_all(
            a,
            None,
            vec![to(1, 7, "x"), to(2, 99, "x"), to(3, 21, "x")],
            10,
        )
        .await,
    );
    assert_eq!(m.stale, [2]);
    // A sync copy leaves out the sending device, and naming it is an extra.
    let m = refused(
        s.enqueue_all(
            a,
            Some(2),
            vec![to(1, 7, "x"), to(2, 20, "x"), to(3, 21, "x")],
            10,
        )
        .await,
    );
    assert_eq!((m.missing, m.extra), (vec![], vec![2]));
    assert_eq!(s.totals().await.unwrap().queued_messages, 0);

    let sent = s
        .enqueue_all(a, Some(2), vec![to(1, 7, "x"), to(3, 21, "x")], 10)
        .await
        .unwrap();
    assert_eq!(sent.len(), 2);
    assert_eq!(s.queue_len(at(a, 2)).await.unwrap(), 0);
    // An account without devices has none to send to.
    assert!(matches!(
        s.enqueue_all(a + 1, None, vec![to(1, 7, "x")], 10).await,
        Err(StoreError::NoDevice)
    ));
}

#[tokio::test]
async fn deleting_the_device_removes_every_device_of_the_account() {
    let Some((s, _)) = store().await else { return };
    let a = user_with_device(&s, "a").await;
    s.link_device(a, &linked(20), &ec(1..=2), &[], 6)
        .await
        .unwrap();
    s.enqueue(at(a, 2), message("m", 1), 10).await.unwrap();
    s.delete_device(a).await.unwrap();
    assert!(s.devices(a).await.unwrap().is_empty());
    assert_eq!(rows_of(&s, a, 2).await, (0, 0, 0));
    assert!(matches!(
        s.delete_device(a).await,
        Err(StoreError::NoDevice)
    ));
    // The account starts over with a new primary.
    s.create_device(a, &device("a.1"), &[], &[]).await.unwrap();
    assert_eq!(
        s.link_device(a, &linked(20), &[], &[], 6)
            .await
            .unwrap()
            .address,
        "a.2"
    );
    s.delete_user(a).await.unwrap();
    assert_eq!(s.totals().await.unwrap().devices, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sends_links_and_unlinks_on_two_instances_neither_deadlock_nor_lose_a_device() {
    let Some((s1, url)) = store().await else {
        return;
    };
    let s2 = PgStore::connect(&url).await.unwrap();
    let a = user_with_device(&s1, "a").await;
    s1.link_device(a, &linked(20), &[], &[], 10).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..24u32 {
        let s = if i % 2 == 0 { s1.clone() } else { s2.clone() };
        tasks.spawn(async move {
            match i % 4 {
                // Sends to the devices as they are at the start: refused once they change.
                0 => match s
                    .enqueue_all(a, None, vec![to(1, 7, "x"), to(2, 20, "x")], 1000)
                    .await
                {
                    Ok(stored) => assert_eq!(stored.len(), 2),
                    Err(StoreError::DevicesChanged(_)) => {}
                    Err(e) => panic!("send: {e}"),
                },
                1 => {
                    s.enqueue(at(a, 1), message("one", 1), 1000).await.unwrap();
                }
                2 => match s.link_device(a, &linked(100 + i), &[], &[], 10).await {
                    Ok(_) | Err(StoreError::TooManyDevices) => {}
                    Err(e) => panic!("link: {e}"),
                },
                _ => match s.unlink_device(at(a, 2 + i % 5)).await {
                    Ok(()) | Err(StoreError::NoSuchDevice) => {}
                    Err(e) => panic!("unlink: {e}"),
                },
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    // Every message stored went to a device the account has, at its address.
    let client = s1.client().await.unwrap();
    let strays: i64 = client
        .query_one(
            "SELECT count(*) FROM messages m WHERE NOT EXISTS (SELECT 1 FROM devices d \
             WHERE (d.user_id, d.device_id) = (m.user_id, m.device_id) \
             AND d.address = m.recipient_address) AND m.content = 'x'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(strays, 0);
    let deadlocks: i64 = client
        .query_one(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(deadlocks, 0);
    assert_eq!(s2.device(a).await.unwrap().unwrap().address, "a.1");
}

#[tokio::test]
async fn migration_2_keeps_a_version_1_database_and_rekeys_primaries_by_address() {
    let Some(url) = fresh_database().await else {
        return;
    };
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(super::super::schema::MIGRATIONS[0])
        .await
        .unwrap();
    client
        .batch_execute(
            "CREATE TABLE schema_version (version integer NOT NULL);
             INSERT INTO schema_version VALUES (1);
             INSERT INTO users (id, username, password_hash) VALUES (1, 'a', 'h'), (2, 'b', 'h');
             INSERT INTO devices VALUES
               (1, 1, 'a.1', 7, '\\x05', 1, '\\x05', '\\x00'),
               (2, 1, 'b.3', 8, '\\x05', 1, '\\x05', '\\x00');
             INSERT INTO prekeys VALUES (1, 1, 1, '\\x05'), (1, 1, 2, '\\x05'), (2, 1, 5, '\\x05');
             INSERT INTO kyber_prekeys VALUES (1, 1, false, 1, '\\x07', '\\x01'),
               (2, 1, true, 9, '\\x07', '\\x01');
             INSERT INTO messages (user_id, device_id, sender_address, sender_registration_id,
               content, recipient_address, timestamp)
               VALUES (1, 1, 's.1', 3, 'to a', 'a.1', 1), (2, 1, 's.1', 3, 'to b', 'b.3', 1);",
        )
        .await
        .unwrap();

    let s = PgStore::connect(&url).await.unwrap();
    let version: i32 = client
        .query_one("SELECT version FROM schema_version", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, super::super::schema::VERSION);
    assert_eq!(s.device(1).await.unwrap().unwrap().address, "a.1");
    let stock = s.stock(at(1, 1)).await.unwrap();
    assert_eq!((stock.prekeys, stock.kyber_prekeys), (2, 1));
    assert_eq!(
        s.messages(at(1, 1), 0, 10).await.unwrap()[0].content,
        "to a"
    );

    // A primary whose address names another id moves there with its keys and queue.
    let b = s.devices(2).await.unwrap();
    assert_eq!(ids(&b), [3]);
    assert_eq!(b[0].last_resort_kyber.as_ref().unwrap().key_id, 9);
    assert_eq!(s.stock(at(2, 3)).await.unwrap().prekeys, 1);
    assert_eq!(
        s.messages(at(2, 3), 0, 10).await.unwrap()[0].content,
        "to b"
    );
    assert_eq!(rows_of(&s, 2, 1).await, (0, 0, 0));

    // Both are primaries: links get the next ids, a second primary is refused.
    let linked_b = Device {
        identity_key: vec![5],
        ..linked(20)
    };
    assert_eq!(
        s.link_device(2, &linked_b, &[], &[], 6)
            .await
            .unwrap()
            .address,
        "b.2"
    );
    assert!(matches!(
        s.create_device(1, &device("a.4"), &[], &[]).await,
        Err(StoreError::DeviceExists)
    ));
    assert!(matches!(
        s.unlink_device(at(1, 1)).await,
        Err(StoreError::PrimaryDevice)
    ));
    // An instance of the version before, still running, creates primaries as it did.
    client
        .batch_execute(
            "INSERT INTO users (id, username, password_hash) VALUES (3, 'c', 'h');
             INSERT INTO devices (user_id, device_id, address, registration_id, identity_key,
               signed_prekey_id, signed_prekey, signed_prekey_signature)
               VALUES (3, 1, 'c.1', 7, '\\x05', 1, '\\x05', '\\x00');",
        )
        .await
        .unwrap();
    assert_eq!(s.device(3).await.unwrap().unwrap().address, "c.1");
    // The sequences go on above the rows kept.
    let m = s.enqueue(at(1, 1), message("new", 2), 10).await.unwrap();
    assert!(m.id > 2);
}
