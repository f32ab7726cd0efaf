//! Several instances on one PostgreSQL database and one blob store (the S3 bucket the suite is
//! pointed at, else a directory they share): an upload started on one instance is finished on
//! another and downloads whole from a third; a PATCH on one while another writes is refused.

use reqwest::StatusCode;

use super::*;

/// The flags that give every instance the same blob store; the directory (if any) must live as
/// long as they do.
fn shared_blobs() -> (Vec<String>, Option<tempfile::TempDir>) {
    match (
        std::env::var("SIGNAL_SERVER_TEST_S3_ENDPOINT"),
        std::env::var("SIGNAL_SERVER_TEST_S3_BUCKET"),
    ) {
        (Ok(endpoint), Ok(bucket)) => {
            let prefix = format!("instances-{}", encode_hex(&rand::random::<[u8; 8]>()));
            let flags = vec![
                "--attachments-s3".into(),
                format!("s3://{bucket}/{prefix}"),
                "--attachments-s3-endpoint".into(),
                endpoint,
            ];
            (flags, None)
        }
        _ => {
            let dir = tempfile::tempdir().expect("tempdir");
            let flags = vec!["--attachments-dir".into(), dir.path().display().to_string()];
            (flags, Some(dir))
        }
    }
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn an_upload_started_on_one_instance_is_finished_on_another() {
    let (flags, _dir) = shared_blobs();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let Some(cluster) = instances(3, &flags).await else {
        return;
    };
    let [a, b, c] = [0, 1, 2].map(|i| cluster.nodes[i].api());
    cluster.nodes[0].register("alice").await;
    cluster.nodes[1].register("bob").await;
    let alice = cluster.nodes[0].login("alice").await;
    let bob = cluster.nodes[2].login("bob").await;
    let data = bytes(3 << 20, 30);

    let path = create(&a, &alice, data.len() as u64).await;
    let first = patch(&a, &alice, &path, 0, &data[..1 << 20]).await;
    assert_eq!(first.status, StatusCode::NO_CONTENT);
    assert_eq!(offset_of(&b, &alice, &path).await, 1 << 20);
    patch(&b, &alice, &path, 0, &data[..10]).await.refused(
        409,
        "offset_mismatch",
        "a stale offset on another instance",
    );
    let second = patch(&b, &alice, &path, 1 << 20, &data[1 << 20..]).await;
    assert_eq!(
        second.status,
        StatusCode::NO_CONTENT,
        "{}",
        String::from_utf8_lossy(&second.body)
    );
    let got = download(&c, &bob, &path).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.body == data, "the download on a third instance differs");
    tus(&c, "DELETE", &path, Some(&alice), &[], None).await;
    download(&a, &bob, &path).await.refused(
        404,
        "no_such_attachment",
        "deleted on another instance",
    );
}
