//! Devices and their keys: creation, caps, and the pop.

use super::*;

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
    let stock = s.stock(one(a.id)).await.unwrap();
    assert_eq!((stock.prekeys, stock.kyber_prekeys), (3, 2));

    // A second create is refused and changes nothing.
    assert!(matches!(
        s.create_device(a.id, &device("a.1"), &ec(10..=20), &[])
            .await,
        Err(StoreError::DeviceExists)
    ));
    assert_eq!(s.stock(one(a.id)).await.unwrap().prekeys, 3);
    assert!(matches!(
        s.create_device(a.id + 1, &device("x.1"), &ec(1..=3), &[])
            .await,
        Err(StoreError::NoUser)
    ));

    let new_key = kyber([42]).pop().unwrap();
    s.set_signed_prekey(one(a.id), &new_key).await.unwrap();
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
        s.set_signed_prekey(one(a.id), &new_key).await,
        Err(StoreError::NoDevice)
    ));
    // A new device starts from nothing.
    s.create_device(a.id, &device("a.1"), &[], &[])
        .await
        .unwrap();
    let stock = s.stock(one(a.id)).await.unwrap();
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
        s.add_prekeys(one(1), &ec(0..5), 10).await,
        Err(StoreError::NoDevice)
    ));
    let a = user_with_device(&s, "a").await;
    s.add_prekeys(one(a), &ec(0..5), 10).await.unwrap();
    assert!(matches!(
        s.add_prekeys(one(a), &ec(10..20), 10).await,
        Err(StoreError::TooManyPrekeys)
    ));
    assert_eq!(s.stock(one(a)).await.unwrap().prekeys, 5);
    // Replacing stored ids does not count twice, nor does an id repeated in one upload.
    assert_eq!(
        s.add_prekeys(one(a), &ec((0..10).chain(0..3)), 10)
            .await
            .unwrap(),
        10
    );

    // The last-resort key is not counted, and a refused upload does not replace it.
    let last = kyber([500]).pop().unwrap();
    assert_eq!(
        s.add_kyber_prekeys(one(a), &kyber(1..=4), Some(&last), 4)
            .await
            .unwrap(),
        4
    );
    let other = kyber([501]).pop().unwrap();
    assert!(matches!(
        s.add_kyber_prekeys(one(a), &kyber([9]), Some(&other), 4)
            .await,
        Err(StoreError::TooManyPrekeys)
    ));
    assert_eq!(
        s.device(a).await.unwrap().unwrap().last_resort_kyber,
        Some(last)
    );
    assert_eq!(
        s.add_kyber_prekeys(one(a), &[], Some(&other), 4)
            .await
            .unwrap(),
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
            let keys = s.add_prekeys(one(a), &ec(i * 10..i * 10 + 10), 100).await;
            let kyber = s
                .add_kyber_prekeys(one(a), &kyber(i * 5..i * 5 + 5), None, 50)
                .await;
            let sent = s.enqueue(one(a), message("m", 1), 20).await;
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
    let stock = s2.stock(one(a)).await.unwrap();
    assert_eq!((stock.prekeys, stock.kyber_prekeys), (100, 50));
    assert_eq!(s1.queue_len(one(a)).await.unwrap(), 20);
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
            // 4 × 4 + 28 × 3 = 100 takes: every one must get a key of each kind, even while
            // the others' takes hold the lowest keys.
            let mut got = (Vec::new(), Vec::new());
            for _ in 0..if i < 4 { 4 } else { 3 } {
                let popped = s.pop_prekeys(one(a)).await.unwrap();
                got.0.push(popped.prekey.expect("an EC prekey").key_id);
                got.1.push(popped.kyber.expect("a Kyber prekey").key_id);
            }
            got
        }));
    }
    let (mut ecs, mut kybers) = (Vec::new(), Vec::new());
    for t in tasks {
        let (ec, ky) = t.await.unwrap();
        ecs.extend(ec);
        kybers.extend(ky);
    }
    ecs.sort_unstable();
    kybers.sort_unstable();
    assert_eq!(ecs, (1..=100).collect::<Vec<_>>());
    assert_eq!(kybers, (1..=100).collect::<Vec<_>>());
    // Then nothing is left to take; the last-resort key stays with the device.
    let popped = s2.pop_prekeys(one(a)).await.unwrap();
    assert!(popped.prekey.is_none() && popped.kyber.is_none());
    assert_eq!(
        s1.device(a).await.unwrap().unwrap().last_resort_kyber,
        d.last_resort_kyber
    );
    // One kind can run out before the other.
    s1.add_prekeys(one(a), &ec([7]), 100).await.unwrap();
    let popped = s1.pop_prekeys(one(a)).await.unwrap();
    assert_eq!(
        (popped.prekey.map(|k| k.key_id), popped.kyber),
        (Some(7), None)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_concurrent_device_creations_on_two_instances_one_wins_with_its_keys() {
    let Some((s1, url)) = store().await else {
        return;
    };
    let s2 = PgStore::connect(&url).await.unwrap();
    let a = s1.create_user("a", "", "h".into(), None).await.unwrap().id;
    let tasks: Vec<_> = (0..16u32)
        .map(|i| {
            let s = if i % 2 == 0 { s1.clone() } else { s2.clone() };
            tokio::spawn(async move {
                let keys = ec(i * 10..i * 10 + 1 + i);
                s.create_device(a, &device("a.1"), &keys, &[])
                    .await
                    .map(|()| i)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(i) => winners.push(i),
            Err(StoreError::DeviceExists) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(winners.len(), 1);
    // Only the winner's keys are stored.
    assert_eq!(s2.stock(one(a)).await.unwrap().prekeys, 1 + winners[0]);
}
