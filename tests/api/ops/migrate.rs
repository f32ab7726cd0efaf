//! Moving a deployment from sled to PostgreSQL: `backup` on the sled server, `restore
//! --database-url` into an empty database, then the binary serves that database, and every
//! account, key, queued message and attachment (its record moved, its blob copied) is there. Runs only on PostgreSQL
//! (`SIGNAL_SERVER_TEST_DATABASE_URL`).

use std::path::Path;

use super::{copy_dir, path, pop_bundle, restore_summary};
use crate::attachments;
use crate::helpers::{
    database_rows, deliver, fresh_data_dir, on_postgres, operator_ok, Binary, BinaryApi, TestUser,
    DATABASE_ENV,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The messages queued for `user`, as served (every field).
async fn queue(api: &BinaryApi, user: &TestUser) -> Vec<Value> {
    let (status, queue) = api
        .get(&format!("/messages/{}", user.reg_id), &user.token)
        .await;
    assert_eq!(status, StatusCode::OK, "queue: {queue}");
    queue.as_array().expect("array").clone()
}

/// Sled data: alice (3 EC, 2 Kyber prekeys, one bundle taken by bob, an attachment) with two
/// messages from bob queued, and bob (1 and 1). Backed up through the running sled server's admin
/// socket into `file`; answers the users, alice's queue as the sled server served it, and the
/// attachment's path.
async fn sled_deployment(dir: &Path, file: &Path) -> (TestUser, TestUser, Vec<Value>, String) {
    let sled = Binary::start(dir, &[]).await;
    let alice = sled.user_with_device("alice", 7, 3, 2).await;
    let bob = sled.user_with_device("bob", 8, 1, 1).await;
    deliver(&*sled, &bob, &alice, "one").await;
    deliver(&*sled, &bob, &alice, "two").await;
    assert_eq!(pop_bundle(&*sled, &bob, &alice).await, (Some(1), Some(1)));
    let queued = queue(&sled, &alice).await;
    assert_eq!(queued.len(), 2);
    assert!(
        queued.iter().all(|m| m["content"].is_string()),
        "{queued:?}"
    );
    let bytes = attachments::bytes(3000, 1);
    let picture = attachments::upload(&*sled, &alice.token, &bytes, 1000).await;
    operator_ok(dir, &["backup", path(file)], None).await;
    sled.stop().await;
    assert!(
        dir.join("db").exists(),
        "the old server did not run on sled"
    );
    (alice, bob, queued, picture)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_deployment_backed_up_and_restored_into_postgresql_is_served_from_there() {
    if !on_postgres() {
        eprintln!("skipped: {DATABASE_ENV} is not set (this test moves data into PostgreSQL)");
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let file = work.path().join("sled.jsonl");
    // A data dir that no in-process server made: the binary runs on sled there.
    let old = tempfile::tempdir().expect("tempdir");
    let (mut alice, mut bob, queued, picture) = sled_deployment(old.path(), &file).await;

    let new = fresh_data_dir().await;
    let run = operator_ok(new.path(), &["restore", path(&file)], None).await;
    let summary = restore_summary(&run);
    assert_eq!(
        (
            &summary["users"],
            &summary["prekeys"],
            &summary["kyber_prekeys"]
        ),
        (&json!(2), &json!(3), &json!(2))
    );
    assert_eq!(
        (&summary["messages"], &summary["attachments"]),
        (&json!(2), &json!(1))
    );
    assert!(database_rows(new.path()).await > 0);
    // The blobs go where the new instances reach them: here, the new data dir's default.
    copy_dir(
        &old.path().join("attachments"),
        &new.path().join("attachments"),
    );

    let pg = Binary::start(new.path(), &[]).await;
    assert!(
        !new.path().join("db").exists(),
        "the new server opened a sled database"
    );
    alice.token = pg.login("alice").await;
    bob.token = pg.login("bob").await;
    assert_eq!(queue(&pg, &alice).await, queued, "alice's queue moved");
    let got = attachments::download(&*pg, &bob.token, &picture).await;
    assert_eq!(
        (got.status, got.body),
        (StatusCode::OK, attachments::bytes(3000, 1)),
        "alice's attachment moved"
    );
    // The keys left after the bundle taken on sled are handed out, each once, then none.
    assert_eq!(pop_bundle(&*pg, &bob, &alice).await, (Some(2), Some(2)));
    assert_eq!(pop_bundle(&*pg, &bob, &alice).await, (Some(3), None));
    assert_eq!(pop_bundle(&*pg, &bob, &alice).await, (None, None));
    assert_eq!(pop_bundle(&*pg, &alice, &bob).await, (Some(1), Some(1)));
    // New ids continue above the moved ones.
    let ids = queued.iter().map(|m| m["id"].as_u64().expect("id"));
    let last = ids.max().expect("ids");
    let id = deliver(&*pg, &alice, &bob, "on postgres").await;
    assert!(id > last, "message id {id} is not above {last}");
    let carol = pg.register("carol").await;
    assert!(carol > last, "user id {carol} is not above {last}");
    pg.stop().await;
}
