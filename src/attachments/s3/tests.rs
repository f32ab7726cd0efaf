//! Tests against a real S3-protocol server (`SIGNAL_SERVER_TEST_S3_ENDPOINT` and
//! `SIGNAL_SERVER_TEST_S3_BUCKET`, with the `AWS_*` credentials: see `tools/s3-test-server.sh`).
//! Each test works under a prefix of its own, with segments of a few bytes so that short blobs
//! span several. Without the endpoint they are skipped, except when
//! `SIGNAL_SERVER_TEST_REQUIRE_S3` is set (as `.ci/run` does), where that is a failure.

use super::*;
use crate::attachments::new_id;

const ENDPOINT_VAR: &str = "SIGNAL_SERVER_TEST_S3_ENDPOINT";
const BUCKET_VAR: &str = "SIGNAL_SERVER_TEST_S3_BUCKET";

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// A store under a fresh prefix with segments of `segment` bytes, or `None` (test skipped)
/// without a server to test on.
async fn store(segment: usize) -> Option<S3Blobs> {
    let Some(endpoint) = env(ENDPOINT_VAR) else {
        assert!(
            env("SIGNAL_SERVER_TEST_REQUIRE_S3").is_none(),
            "{ENDPOINT_VAR} is not set: CI must run the S3 blob store's tests \
             (eval \"$(tools/s3-test-server.sh start)\")"
        );
        eprintln!("skipped: {ENDPOINT_VAR} is not set");
        return None;
    };
    let bucket = env(BUCKET_VAR).expect("SIGNAL_SERVER_TEST_S3_BUCKET");
    let url = format!("s3://{bucket}/unit/{:016x}", rand::random::<u64>());
    let settings = Settings::new(&url, Some(&endpoint), env).expect("settings");
    let mut blobs = S3Blobs::open(&settings).await.expect("open");
    blobs.segment = segment;
    blobs.read_chunk = 7;
    Some(blobs)
}

/// Writes `bytes` in chunks of `chunk` from `offset`, syncs, and answers the offset reached.
async fn write(blobs: &S3Blobs, id: &AttachmentId, offset: u64, bytes: &[u8], chunk: usize) -> u64 {
    let mut w = blobs.writer(id, offset).await.expect("writer");
    for part in bytes.chunks(chunk) {
        w.write(Bytes::copy_from_slice(part)).await.expect("write");
    }
    w.sync().await.expect("sync")
}

async fn read(blobs: &S3Blobs, id: &AttachmentId, start: u64, end: u64) -> Vec<u8> {
    let chunks: Vec<Bytes> = blobs
        .read(id, start, end)
        .await
        .expect("read")
        .try_collect()
        .await
        .expect("stream");
    chunks.concat()
}

/// The segment starts under `id`, in order.
async fn starts(blobs: &S3Blobs, id: &AttachmentId) -> Vec<u64> {
    blobs
        .segments(id)
        .await
        .expect("list")
        .into_keys()
        .collect()
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[tokio::test]
async fn a_blob_is_read_back_across_segments_and_ranges_span_two() {
    let Some(blobs) = store(10).await else { return };
    let id = new_id();
    let data = pattern(45);
    // Chunks of 4: segments of 12 bytes (the chunk reaching 10 bytes sends them), and what is
    // left at each sync.
    assert_eq!(write(&blobs, &id, 0, &data[..30], 4).await, 30);
    assert_eq!(write(&blobs, &id, 30, &data[30..], 4).await, 45);
    assert_eq!(starts(&blobs, &id).await, [0, 12, 24, 30, 42]);
    assert_eq!(read(&blobs, &id, 0, 45).await, data);
    // 10..14 spans the first two segments, 26..35 the two that two writers left; one byte;
    // all but the first segment.
    assert_eq!(read(&blobs, &id, 10, 14).await, &data[10..14]);
    assert_eq!(read(&blobs, &id, 26, 35).await, &data[26..35]);
    assert_eq!(read(&blobs, &id, 44, 45).await, &data[44..45]);
    assert_eq!(read(&blobs, &id, 12, 45).await, &data[12..]);
}

#[tokio::test]
async fn discard_removes_the_segments_written_since_the_last_sync() {
    let Some(blobs) = store(10).await else { return };
    let id = new_id();
    let data = pattern(40);
    assert_eq!(write(&blobs, &id, 0, &data[..15], 5).await, 15);
    let mut w = blobs.writer(&id, 15).await.expect("writer");
    w.write(Bytes::from(vec![1; 8])).await.unwrap();
    assert_eq!(w.sync().await.unwrap(), 23);
    // Two segments PUT and some bytes buffered, none of them synced: all of it goes.
    for _ in 0..5 {
        w.write(Bytes::from(vec![2; 6])).await.unwrap();
    }
    assert_eq!(starts(&blobs, &id).await, [0, 10, 15, 23, 35]);
    w.discard().await.unwrap();
    assert_eq!(starts(&blobs, &id).await, [0, 10, 15]);
    // The same writer goes on from its last sync.
    w.write(Bytes::copy_from_slice(&data[23..])).await.unwrap();
    assert_eq!(w.sync().await.unwrap(), 40);
    let mut expected = data[..15].to_vec();
    expected.extend([1; 8]);
    expected.extend(&data[23..]);
    assert_eq!(read(&blobs, &id, 0, 40).await, expected);
}

#[tokio::test]
async fn objects_off_the_chain_are_not_read() {
    let Some(blobs) = store(10).await else { return };
    let id = new_id();
    let data = pattern(30);
    // A writer that crashed after PUTting a segment: nothing of it was synced.
    let mut crashed = blobs.writer(&id, 0).await.expect("writer");
    crashed.write(Bytes::from(vec![9; 25])).await.unwrap();
    drop(crashed);
    // Leftovers at offsets the chain never starts at, and a name that is no offset.
    let dir = blobs.dir(&id);
    for name in [segment_name(3), segment_name(31), "notes".to_string()] {
        let location = dir.child(name);
        blobs
            .store
            .put(&location, vec![8; 12].into())
            .await
            .unwrap();
    }
    // The next writer starts at the record's offset, 0, and overwrites that segment.
    assert_eq!(write(&blobs, &id, 0, &data, 12).await, 30);
    assert_eq!(read(&blobs, &id, 0, 30).await, data);
    assert_eq!(read(&blobs, &id, 2, 29).await, &data[2..29]);
}

#[tokio::test]
async fn a_broken_chain_is_an_error_not_wrong_bytes() {
    let Some(blobs) = store(10).await else { return };
    let id = new_id();
    assert_eq!(write(&blobs, &id, 0, &pattern(25), 5).await, 25);
    let location = blobs.dir(&id).child(segment_name(10));
    blobs.store.delete(&location).await.unwrap();
    assert!(blobs.read(&id, 0, 25).await.is_err());
    assert!(blobs.read(&id, 20, 25).await.is_err());
    assert_eq!(read(&blobs, &id, 0, 10).await, &pattern(10)[..]);
}

#[tokio::test]
async fn delete_removes_every_object_of_a_blob_and_ids_lists_blobs() {
    let Some(blobs) = store(10).await else { return };
    assert!(blobs.ids().await.unwrap().is_empty());
    let (a, b) = (new_id(), new_id());
    write(&blobs, &a, 0, &pattern(25), 5).await;
    write(&blobs, &b, 0, &pattern(5), 5).await;
    // A leftover of a discarded writer goes with its blob.
    let leftover = blobs.dir(&a).child(segment_name(7));
    blobs.store.put(&leftover, vec![0; 3].into()).await.unwrap();
    let mut ids = blobs.ids().await.unwrap();
    ids.sort();
    let mut expected = vec![a, b];
    expected.sort();
    assert_eq!(ids, expected);
    blobs.delete(&a).await.unwrap();
    assert!(starts(&blobs, &a).await.is_empty());
    assert_eq!(blobs.ids().await.unwrap(), [b]);
    assert!(blobs.read(&a, 0, 25).await.is_err());
    // Deleting what is not there is not an error.
    blobs.delete(&a).await.unwrap();
    assert_eq!(read(&blobs, &b, 0, 5).await, pattern(5));
}

#[tokio::test]
async fn a_missing_bucket_stops_the_start() {
    let Some(blobs) = store(10).await else { return };
    let endpoint = env(ENDPOINT_VAR).unwrap();
    let settings = Settings::new("s3://no-such-bucket-here", Some(&endpoint), env).unwrap();
    let e = S3Blobs::open(&settings).await.err().expect("refused");
    assert!(e.contains("s3://no-such-bucket-here at http"), "{e}");
    let wrong = Settings {
        secret_access_key: "wrong".into(),
        ..settings
    };
    let wrong = Settings {
        bucket: env(BUCKET_VAR).unwrap(),
        ..wrong
    };
    let e = S3Blobs::open(&wrong).await.err().expect("refused");
    assert!(!e.contains("wrong"), "{e}");
    assert!(blobs.describe().contains(&endpoint));
}

#[tokio::test]
async fn an_endpoint_that_does_not_answer_stops_the_start() {
    let vars = |name: &str| match name {
        "AWS_ACCESS_KEY_ID" | "AWS_SECRET_ACCESS_KEY" => Some("key".to_string()),
        _ => None,
    };
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let settings = Settings::new("s3://bucket/p", Some(&endpoint), vars).unwrap();
    let e = S3Blobs::open(&settings).await.err().expect("refused");
    let expected = format!("attachments in s3://bucket/p at {endpoint}: ");
    assert!(e.starts_with(&expected), "{e}");
}

#[test]
fn urls_endpoints_and_the_environment_are_checked() {
    let vars = |name: &str| match name {
        "AWS_ACCESS_KEY_ID" => Some("AK".to_string()),
        "AWS_SECRET_ACCESS_KEY" => Some("SK".to_string()),
        _ => None,
    };
    let s = Settings::new("s3://my-bucket/a/b/", Some("http://127.0.0.1:9000/"), vars).unwrap();
    assert_eq!((s.bucket.as_str(), s.prefix.as_str()), ("my-bucket", "a/b"));
    assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
    assert_eq!(s.region, "us-east-1");
    assert_eq!(
        Settings::new("s3://bkt", None, vars).unwrap_err(),
        "--attachments-s3 on AWS needs AWS_REGION (the bucket's region)"
    );
    for bad in [
        "bkt",
        "s3://",
        "s3://Bkt",
        "s3://b",
        "s3://bkt/a//b",
        "s3://bkt/../x",
        "s3://bkt/a?x",
    ] {
        let e = Settings::new(bad, Some("http://h"), vars).unwrap_err();
        assert!(e.contains("expected s3://bucket[/prefix]"), "{bad}: {e}");
    }
    for bad in [
        "127.0.0.1:9000",
        "http://",
        "ftp://h",
        "http://h/path",
        "http://u:p@h",
    ] {
        let e = Settings::new("s3://bkt", Some(bad), vars).unwrap_err();
        assert!(e.contains("expected http(s)://host[:port]"), "{bad}: {e}");
    }
    let none = |_: &str| None;
    let e = Settings::new("s3://bkt", Some("http://h"), none).unwrap_err();
    assert_eq!(
        e,
        "--attachments-s3 needs AWS_ACCESS_KEY_ID in the environment"
    );
}

#[test]
fn the_chain_is_followed_from_zero() {
    let segments = BTreeMap::from([(0, 10), (3, 50), (10, 5), (15, 10), (40, 2)]);
    assert_eq!(
        chain(&segments, 0, 25).unwrap(),
        [(0, 0..10), (10, 0..5), (15, 0..10)]
    );
    assert_eq!(chain(&segments, 12, 17).unwrap(), [(10, 2..5), (15, 0..2)]);
    assert_eq!(chain(&segments, 20, 25).unwrap(), [(15, 5..10)]);
    assert!(chain(&segments, 0, 26).is_err());
    assert!(chain(&BTreeMap::from([(0, 0)]), 0, 1).is_err());
    // What fsck compares with a record's offset: as far as `chain` can read.
    assert_eq!(chained_len(&segments), 25);
    assert_eq!(chained_len(&BTreeMap::from([(3, 10)])), 0);
    assert_eq!(chained_len(&BTreeMap::from([(0, 0)])), 0);
    assert_eq!(segment_name(0x1234), "0000000000001234");
    assert_eq!(parse_start("0000000000001234"), Some(0x1234));
    assert_eq!(parse_start("000000000000123G"), None);
    assert_eq!(parse_start("00000000000012340"), None);
}
