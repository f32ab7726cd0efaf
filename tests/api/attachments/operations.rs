//! The operator's view of attachments on whichever blob store the suite runs on (a directory or
//! S3): `fsck` through a running server's admin socket names a record whose blob is gone and a
//! blob without a record, and `stats` counts what is stored. (What only the directory store can
//! show, files cut short or dropped in by hand, is in `ops::blob_store`.)

use signal_server::attachments::{encode_id, parse_id};
use warp::hyper::body::Bytes;

use super::*;

/// `fsck` through the admin socket of the server on `dir`: (whether it passed, what it printed).
async fn fsck(dir: &std::path::Path) -> (bool, String) {
    let run = operator(dir, &["fsck"], None).await;
    match run.success() {
        true => (true, run.stdout),
        false => (false, run.stderr),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fsck_names_a_record_whose_blob_is_gone_and_a_blob_without_a_record() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let done = upload(&s, &alice.token, &bytes(3000, 1), 1000).await;
    let half = create(&s, &alice.token, 5000).await;
    let a = patch(&s, &alice.token, &half, 0, &bytes(2000, 2)).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let dir = s.dir.path();
    let (passed, out) = fsck(dir).await;
    assert!(passed, "{out}");
    assert!(out.contains("attachment records\tok, 2 records\n"), "{out}");
    assert!(out.contains("attachment blobs\tok, 2 blobs\n"), "{out}");
    let stats = operator_ok(dir, &["stats"], None).await.stdout;
    for line in [
        "attachments\t1\n",
        "attachment_uploads_in_progress\t1\n",
        "attachment_bytes\t5000\n",
    ] {
        assert!(stats.contains(line), "{line:?} in {stats}");
    }

    // A blob written as the server writes one, with no record: listed, not a failure.
    let stray = parse_id("AAAAAAAAAAAAAAAAAAAAAA").expect("an id");
    let mut writer = s.app.blobs.writer(&stray, 0).await.expect("writer");
    writer
        .write(Bytes::from_static(b"left over"))
        .await
        .expect("write");
    writer.sync().await.expect("sync");
    let (passed, out) = fsck(dir).await;
    assert!(passed, "{out}");
    assert!(
        out.contains(&format!(
            "3 blobs, 1 without a record (left over; the hourly sweep removes them): {}",
            encode_id(&stray)
        )),
        "{out}"
    );

    // A complete attachment's blob gone: fsck fails and names it; its download is a 404.
    let gone = parse_id(id_of(&done)).expect("an id");
    s.app.blobs.delete(&gone).await.expect("delete");
    let (passed, err) = fsck(dir).await;
    assert!(!passed, "fsck passed without a blob: {err}");
    let named = format!(
        "DAMAGED: 1 record ok, 1 without their blob: {}",
        id_of(&done)
    );
    assert!(err.contains(&named), "{err}");
    download(&s, &alice.token, &done).await.refused(
        404,
        "no_such_attachment",
        "a download without its blob",
    );
}
