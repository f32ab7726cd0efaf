//! Attachments in operations: `stats` counts them; `fsck` finds a record whose blob is gone or
//! cut short, and a blob without a record; a backup carries the records, not the blobs, so a
//! restore without the blob store's copy serves 404 (and fsck lists what is missing) and one
//! with it serves every attachment and resumes every upload.
//!
//! They read and write the directory store's files (`<data-dir>/attachments`), so the module is
//! not named `attachments`: the suite's run with blobs on S3 (`attachments::`) leaves it out.

use std::path::{Path, PathBuf};

use super::{copy_dir, restore_summary, stats_of};
use crate::attachments::{self, bytes, id_of};
use crate::helpers::{fresh_data_dir, operator, operator_ok, stop_closed, TestServer, PASSWORD};
use reqwest::StatusCode;

/// Where the directory store keeps the blob of `path` (`/attachments/<id>`) in `data_dir`.
fn blob_file(data_dir: &Path, path: &str) -> PathBuf {
    let id = id_of(path);
    data_dir.join("attachments").join(&id[..2]).join(id)
}

/// `fsck` on `dir` (through the admin socket of a server running there, or offline): its
/// output when it passes, or its error when it fails; and whether it passed.
async fn fsck(dir: &Path) -> (bool, String) {
    let run = operator(dir, &["fsck"], None).await;
    match run.success() {
        true => (true, run.stdout),
        false => (false, run.stderr),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stats_counts_complete_attachments_uploads_under_way_and_their_bytes() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    attachments::upload(&s, &alice.token, &bytes(3000, 1), 1000).await;
    let half = attachments::create(&s, &alice.token, 5000).await;
    attachments::patch(&s, &alice.token, &half, 0, &bytes(1200, 2)).await;
    attachments::create(&s, &bob.token, 10).await;
    let stats = stats_of(&operator_ok(s.dir.path(), &["stats"], None).await);
    let counts = [
        "attachments",
        "attachment_uploads_in_progress",
        "attachment_bytes",
    ];
    let got: Vec<u64> = counts.iter().map(|k| stats[*k]).collect();
    assert_eq!(got, [1, 2, 4200], "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fsck_finds_records_without_their_bytes_and_blobs_without_a_record() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let done = attachments::upload(&s, &alice.token, &bytes(3000, 1), 1000).await;
    let half = attachments::create(&s, &alice.token, 5000).await;
    attachments::patch(&s, &alice.token, &half, 0, &bytes(2000, 2)).await;
    // Created, nothing written yet: no blob, and none needed.
    attachments::create(&s, &alice.token, 10).await;
    let dir = s.dir.path().to_path_buf();
    let (passed, out) = fsck(&dir).await;
    assert!(passed, "{out}");
    assert!(out.contains("attachment records\tok, 3 records\n"), "{out}");
    assert!(out.contains("attachment blobs\tok, 2 blobs\n"), "{out}");

    // A stray blob (named as one, with no record) is listed; fsck still passes.
    let stray = "AAAAAAAAAAAAAAAAAAAAAA";
    let stray_file = blob_file(&dir, &format!("/attachments/{stray}"));
    std::fs::create_dir_all(stray_file.parent().unwrap()).unwrap();
    std::fs::write(&stray_file, b"left over").unwrap();
    let (passed, out) = fsck(&dir).await;
    assert!(passed, "{out}");
    let leftover = format!("attachment blobs\t3 blobs, 1 without a record (left over; the hourly sweep removes them): {stray}");
    assert!(out.contains(&leftover), "{out}");

    // Offline: a blob deleted by hand, and one cut short, fail it and are named.
    let dir = stop_closed(s).await;
    std::fs::remove_file(blob_file(dir.path(), &done)).unwrap();
    let (passed, err) = fsck(dir.path()).await;
    assert!(!passed, "fsck passed without a blob: {err}");
    let missing = format!(
        "attachment records\tDAMAGED: 2 records ok, 1 without their blob: {}",
        id_of(&done)
    );
    assert!(err.contains(&missing), "{err}");
    assert!(err.contains("attachments are missing bytes"), "{err}");
    let cut = std::fs::OpenOptions::new()
        .write(true)
        .open(blob_file(dir.path(), &half))
        .unwrap();
    cut.set_len(1500).unwrap();
    drop(cut);
    let (passed, err) = fsck(dir.path()).await;
    assert!(!passed, "{err}");
    let short = format!(
        "1 without their blob: {}, 1 with a blob shorter than their offset: {} (1500 of 2000 \
         bytes)",
        id_of(&done),
        id_of(&half)
    );
    assert!(err.contains(&short), "{err}");
    assert!(err.contains("without a record"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restore_without_the_blob_copy_serves_404_and_with_it_serves_and_resumes() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let picture = bytes(3000, 1);
    let done = attachments::upload(&s, &alice.token, &picture, 1000).await;
    let half = attachments::create(&s, &alice.token, 5000).await;
    let long = bytes(5000, 2);
    attachments::patch(&s, &alice.token, &half, 0, &long[..2000]).await;
    attachments::upload(&s, &bob.token, &bytes(10, 3), 10).await;
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("backup.jsonl");
    let file_arg = file.display().to_string();
    operator_ok(s.dir.path(), &["backup", &file_arg], None).await;
    // The blob store, copied after the records.
    let blobs = work.path().join("blobs");
    copy_dir(&s.dir.path().join("attachments"), &blobs);
    stop_closed(s).await;

    let fresh = fresh_data_dir().await;
    let run = operator_ok(fresh.path(), &["restore", &file_arg], None).await;
    assert_eq!(restore_summary(&run)["attachments"], 3);
    let again = work.path().join("again.jsonl");
    operator_ok(
        fresh.path(),
        &["backup", &again.display().to_string()],
        None,
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        std::fs::read_to_string(&again).unwrap()
    );

    // Without the blobs: the records are there (HEAD), the bytes are not (404), fsck says so.
    let r = TestServer::start_in(fresh).await;
    let token = r.login("alice", PASSWORD).await;
    attachments::download(&r, &token, &done).await.refused(
        404,
        "no_such_attachment",
        "a download without its blob",
    );
    assert_eq!(attachments::offset_of(&r, &token, &half).await, 2000);
    let fresh = stop_closed(r).await;
    let (passed, err) = fsck(fresh.path()).await;
    assert!(!passed, "{err}");
    assert!(err.contains("0 records ok, 3 without their blob"), "{err}");

    // With them: fsck passes, downloads are served, the upload under way finishes.
    copy_dir(&blobs, &fresh.path().join("attachments"));
    let (passed, out) = fsck(fresh.path()).await;
    assert!(passed, "{out}");
    let r = TestServer::start_in(fresh).await;
    let token = r.login("alice", PASSWORD).await;
    let got = attachments::download(&r, &token, &done).await;
    assert_eq!((got.status, got.body), (StatusCode::OK, picture));
    let rest = attachments::patch(&r, &token, &half, 2000, &long[2000..]).await;
    assert_eq!((rest.status, rest.offset()), (StatusCode::NO_CONTENT, 5000));
    let got = attachments::download(&r, &token, &half).await;
    assert_eq!((got.status, got.body), (StatusCode::OK, long));
    stop_closed(r).await;
}
