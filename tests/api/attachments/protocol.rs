//! The TUS protocol as clients speak it, and every refusal of bad input changing nothing.

use base64::Engine;
use reqwest::StatusCode;
use sha2::{Digest, Sha256};

use super::*;

#[tokio::test]
async fn options_tells_what_the_server_speaks_without_a_token() {
    let s = TestServer::start().await;
    let a = tus(&s, "OPTIONS", "/attachments", None, &[], None).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_eq!(a.header("tus-version"), Some("1.0.0"));
    assert_eq!(a.header("tus-resumable"), Some("1.0.0"));
    let ext = a.header("tus-extension").unwrap_or_default();
    for e in [
        "creation",
        "creation-with-upload",
        "expiration",
        "checksum",
        "termination",
    ] {
        assert!(ext.split(',').any(|x| x == e), "{e} missing in {ext}");
    }
    assert_eq!(
        a.header("tus-max-size"),
        Some((100u64 << 20).to_string().as_str())
    );
    assert_eq!(a.header("tus-checksum-algorithm"), Some("sha256"));
    s.stop().await;
}

#[tokio::test]
async fn an_upload_in_chunks_is_downloaded_exactly_whole_and_in_ranges_by_any_account() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let data = bytes(300_000, 1);

    let path = create(&s, &alice.token, data.len() as u64).await;
    assert!(
        path.starts_with("/attachments/") && id_of(&path).len() == 22,
        "{path}"
    );
    let head = tus(&s, "HEAD", &path, Some(&alice.token), &[], None).await;
    assert_eq!(head.offset(), 0);
    assert_eq!(head.header("upload-length"), Some("300000"));
    assert!(head
        .header("upload-expires")
        .is_some_and(|d| d.ends_with(" GMT")));
    assert_eq!(head.header("cache-control"), Some("no-store"));
    // Not downloadable before it is complete.
    download(&s, &bob.token, &path)
        .await
        .refused(404, "no_such_attachment", "unfinished");

    let mut at = 0;
    for part in data.chunks(70_000) {
        let a = patch(&s, &alice.token, &path, at, part).await;
        assert_eq!(a.status, StatusCode::NO_CONTENT);
        assert!(a.body.is_empty());
        at += part.len() as u64;
        assert_eq!(a.offset(), at);
        assert_eq!(offset_of(&s, &alice.token, &path).await, at);
    }
    let head = tus(&s, "HEAD", &path, Some(&alice.token), &[], None).await;
    assert_eq!(
        head.header("upload-expires"),
        None,
        "a complete upload does not expire as one"
    );

    let got = download(&s, &bob.token, &path).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.body == data, "the download differs from the upload");
    assert_eq!(got.header("content-type"), Some("application/octet-stream"));
    assert_eq!(got.header("accept-ranges"), Some("bytes"));
    assert_eq!(got.header("cache-control"), Some("private, immutable"));
    assert_eq!(
        got.header("etag"),
        Some(format!("\"{}\"", id_of(&path)).as_str())
    );

    let range = |r: &str| vec![("range", r.to_string())];
    let part = tus(
        &s,
        "GET",
        &path,
        Some(&bob.token),
        &range("bytes=69990-70009"),
        None,
    )
    .await;
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.body, data[69_990..70_010]);
    assert_eq!(
        part.header("content-range"),
        Some("bytes 69990-70009/300000")
    );
    let tail = tus(
        &s,
        "GET",
        &path,
        Some(&bob.token),
        &range("bytes=-10"),
        None,
    )
    .await;
    assert_eq!(tail.body, data[299_990..]);
    let outside = tus(
        &s,
        "GET",
        &path,
        Some(&bob.token),
        &range("bytes=300000-"),
        None,
    )
    .await;
    outside.refused(416, "range_not_satisfiable", "a range past the end");
    assert_eq!(outside.header("content-range"), Some("bytes */300000"));

    // A browser's plain GET needs no Tus-Resumable.
    let plain = s
        .http
        .get(s.url(&path))
        .bearer_auth(&bob.token)
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::OK);
    // But a token.
    let anonymous = s.http.get(s.url(&path)).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    s.stop().await;
}

#[tokio::test]
async fn creation_with_upload_stores_the_first_chunk_and_checksums_are_checked() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let data = bytes(50_000, 2);
    let headers = [
        ("upload-length", data.len().to_string()),
        ("content-type", OCTETS.to_string()),
        ("upload-metadata", "filename aG9saWRheS5qcGc=".to_string()),
    ];
    let a = tus(
        &s,
        "POST",
        "/attachments",
        Some(&alice.token),
        &headers,
        Some(data[..20_000].to_vec()),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(a.offset(), 20_000);
    let path = a.header("location").unwrap().to_string();

    let digest = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(Sha256::digest(b));
    let with_sum = |sum: String| {
        vec![
            ("upload-offset", "20000".to_string()),
            ("content-type", OCTETS.to_string()),
            ("upload-checksum", format!("sha256 {sum}")),
        ]
    };
    let wrong = tus(
        &s,
        "PATCH",
        &path,
        Some(&alice.token),
        &with_sum(digest(b"other")),
        Some(data[20_000..].to_vec()),
    )
    .await;
    wrong.refused(
        460,
        "checksum_mismatch",
        "a body that does not match its checksum",
    );
    assert_eq!(
        offset_of(&s, &alice.token, &path).await,
        20_000,
        "a mismatched body was kept"
    );

    let right = tus(
        &s,
        "PATCH",
        &path,
        Some(&alice.token),
        &with_sum(digest(&data[20_000..])),
        Some(data[20_000..].to_vec()),
    )
    .await;
    assert_eq!(right.status, StatusCode::NO_CONTENT);
    assert_eq!(right.offset(), 50_000);
    assert!(download(&s, &alice.token, &path).await.body == data);

    // A creation whose first chunk does not match leaves no upload behind.
    let mut refused_create = headers.to_vec();
    refused_create.push(("upload-checksum", format!("sha256 {}", digest(b"x"))));
    let a = tus(
        &s,
        "POST",
        "/attachments",
        Some(&alice.token),
        &refused_create,
        Some(data[..100].to_vec()),
    )
    .await;
    a.refused(460, "checksum_mismatch", "creation with a wrong checksum");
    assert!(a.header("location").is_none());
    s.stop().await;
}

#[tokio::test]
async fn bad_requests_get_their_documented_error_and_change_nothing() {
    let s = TestServer::start_with(&["--no-rate-limit", "--max-attachment-bytes", "1000"]).await;
    let alice = s.user("alice").await;
    let t = Some(alice.token.as_str());
    let path = create(&s, &alice.token, 100).await;
    assert_eq!(
        patch(&s, &alice.token, &path, 0, &[7; 40]).await.status,
        StatusCode::NO_CONTENT
    );

    // Without Tus-Resumable, or another version: 412 with Tus-Version.
    for version in [None, Some("0.2.2")] {
        let mut req = s.http.head(s.url(&path)).bearer_auth(&alice.token);
        if let Some(v) = version {
            req = req.header("tus-resumable", v);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), StatusCode::PRECONDITION_FAILED, "{version:?}");
        assert_eq!(res.headers()["tus-version"], "1.0.0");
        let res = s
            .http
            .post(s.url("/attachments"))
            .bearer_auth(&alice.token)
            .header("upload-length", "10");
        let res = match version {
            Some(v) => res.header("tus-resumable", v),
            None => res,
        };
        let res = res.send().await.unwrap();
        assert_eq!(res.status(), StatusCode::PRECONDITION_FAILED);
    }

    // Creation.
    let post = |h: Vec<(&'static str, String)>| {
        let s = &s;
        async move { tus(s, "POST", "/attachments", t, &h, None).await }
    };
    post(vec![])
        .await
        .refused(400, "invalid_data", "no Upload-Length");
    post(vec![("upload-length", "ten".into())]).await.refused(
        400,
        "invalid_data",
        "Upload-Length not a number",
    );
    post(vec![("upload-length", "-1".into())]).await.refused(
        400,
        "invalid_data",
        "negative Upload-Length",
    );
    post(vec![("upload-length", "0".into())])
        .await
        .refused(400, "invalid_data", "Upload-Length 0");
    post(vec![("upload-defer-length", "1".into())])
        .await
        .refused(400, "invalid_data", "deferred length");
    post(vec![("upload-length", "1001".into())]).await.refused(
        413,
        "payload_too_large",
        "over --max-attachment-bytes",
    );
    let wrong_type = vec![
        ("upload-length", "10".into()),
        ("content-type", "application/json".into()),
    ];
    let a = tus(
        &s,
        "POST",
        "/attachments",
        t,
        &wrong_type,
        Some(b"{}".to_vec()),
    )
    .await;
    a.refused(
        415,
        "unsupported_media_type",
        "a first chunk that is not offset+octet-stream",
    );
    assert_eq!(
        tus(
            &s,
            "POST",
            "/attachments",
            None,
            &[("upload-length", "10".into())],
            None
        )
        .await
        .status,
        StatusCode::UNAUTHORIZED
    );

    // PATCH.
    let octets = |offset: &str| {
        vec![
            ("upload-offset", offset.to_string()),
            ("content-type", OCTETS.to_string()),
        ]
    };
    let a = tus(
        &s,
        "PATCH",
        &path,
        t,
        &[("upload-offset", "40".into())],
        Some(vec![1; 10]),
    )
    .await;
    a.refused(
        415,
        "unsupported_media_type",
        "PATCH without the TUS content type",
    );
    let a = tus(
        &s,
        "PATCH",
        &path,
        t,
        &[
            ("upload-offset", "40".into()),
            ("content-type", "application/octet-stream".into()),
        ],
        Some(vec![1; 10]),
    )
    .await;
    a.refused(
        415,
        "unsupported_media_type",
        "PATCH with a plain octet-stream",
    );
    patch(&s, &alice.token, &path, 39, &[1; 10]).await.refused(
        409,
        "offset_mismatch",
        "behind the offset",
    );
    patch(&s, &alice.token, &path, 41, &[1; 10]).await.refused(
        409,
        "offset_mismatch",
        "ahead of the offset",
    );
    tus(
        &s,
        "PATCH",
        &path,
        t,
        &[("content-type", OCTETS.to_string())],
        Some(vec![1]),
    )
    .await
    .refused(400, "invalid_data", "no Upload-Offset");
    tus(&s, "PATCH", &path, t, &octets("x"), Some(vec![1]))
        .await
        .refused(400, "invalid_data", "Upload-Offset not a number");
    let mut md5 = octets("40");
    md5.push(("upload-checksum", "md5 AAAA".into()));
    tus(&s, "PATCH", &path, t, &md5, Some(vec![1]))
        .await
        .refused(400, "invalid_data", "an unsupported checksum algorithm");
    patch(&s, &alice.token, &path, 40, &[1; 61]).await.refused(
        413,
        "payload_too_large",
        "past Upload-Length",
    );
    assert_eq!(
        offset_of(&s, &alice.token, &path).await,
        40,
        "a refused PATCH changed the offset"
    );

    // Unknown, malformed, and complete.
    let unknown = "/attachments/AAAAAAAAAAAAAAAAAAAAAA";
    patch(&s, &alice.token, unknown, 0, &[1]).await.refused(
        404,
        "no_such_attachment",
        "unknown id",
    );
    assert_eq!(
        tus(&s, "HEAD", "/attachments/nope", t, &[], None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    download(&s, &alice.token, "/attachments/nope")
        .await
        .refused(404, "no_such_attachment", "malformed id");
    tus(&s, "DELETE", unknown, t, &[], None).await.refused(
        404,
        "no_such_attachment",
        "delete unknown",
    );
    assert_eq!(
        patch(&s, &alice.token, &path, 40, &[9; 60]).await.offset(),
        100
    );
    patch(&s, &alice.token, &path, 100, &[1]).await.refused(
        409,
        "upload_complete",
        "a PATCH of a complete upload",
    );
    let got = download(&s, &alice.token, &path).await.body;
    assert_eq!(got, [vec![7u8; 40], vec![9u8; 60]].concat());
    s.stop().await;
}

#[tokio::test]
async fn a_deleted_upload_is_gone_for_everyone_with_its_blob() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let path = upload(&s, &alice.token, &bytes(5000, 3), 5000).await;
    let unfinished = create(&s, &alice.token, 10).await;
    assert_eq!(
        patch(&s, &alice.token, &unfinished, 0, &[1; 5])
            .await
            .status,
        StatusCode::NO_CONTENT
    );

    for p in [&path, &unfinished] {
        assert!(blob_exists(&s, p).await, "no blob for {p}");
        let a = tus(&s, "DELETE", p, Some(&alice.token), &[], None).await;
        assert_eq!(a.status, StatusCode::NO_CONTENT);
        assert!(a.body.is_empty());
        assert_eq!(
            tus(&s, "HEAD", p, Some(&alice.token), &[], None)
                .await
                .status,
            StatusCode::NOT_FOUND
        );
        download(&s, &bob.token, p)
            .await
            .refused(404, "no_such_attachment", "after DELETE");
        patch(&s, &alice.token, p, 5, &[1]).await.refused(
            404,
            "no_such_attachment",
            "PATCH after DELETE",
        );
        assert!(!blob_exists(&s, p).await, "the blob of {p} is still stored");
    }
    s.stop().await;
}

#[tokio::test]
async fn deleting_an_account_deletes_its_attachments() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let path = upload(&s, &alice.token, &bytes(1000, 4), 1000).await;
    let (status, _) = s
        .delete(
            "/auth/users/me",
            &alice.token,
            serde_json::json!({"current_password": PASSWORD}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    download(&s, &bob.token, &path).await.refused(
        404,
        "no_such_attachment",
        "a deleted account's attachment",
    );
    assert!(!blob_exists(&s, &path).await);
    s.stop().await;
}

#[tokio::test]
async fn a_complete_attachment_expires_after_its_ttl() {
    let s = TestServer::start_with(&["--no-rate-limit", "--attachment-ttl", "1"]).await;
    let alice = s.user("alice").await;
    let path = upload(&s, &alice.token, &bytes(100, 5), 100).await;
    let deadline = std::time::Instant::now() + RAW_BOUND;
    loop {
        let a = download(&s, &alice.token, &path).await;
        if a.status == StatusCode::NOT_FOUND {
            a.refused(404, "no_such_attachment", "expired");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still served after its TTL"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    s.stop().await;
}

#[tokio::test]
async fn a_browser_on_another_origin_may_upload() {
    let s = TestServer::start().await;
    let pre = s
        .http
        .request(
            reqwest::Method::OPTIONS,
            s.url("/attachments/AAAAAAAAAAAAAAAAAAAAAA"),
        )
        .header("origin", "https://app.example")
        .header("access-control-request-method", "PATCH")
        .header(
            "access-control-request-headers",
            "tus-resumable, upload-offset, upload-checksum, content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), StatusCode::NO_CONTENT);
    let h = |n: &str| {
        pre.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert!(h("access-control-allow-methods").contains("PATCH"));
    for name in ["tus-resumable", "upload-offset", "upload-checksum"] {
        assert!(h("access-control-allow-headers").contains(name), "{name}");
    }
    let alice = s.user("alice").await;
    let res = s
        .http
        .post(s.url("/attachments"))
        .bearer_auth(&alice.token)
        .header("origin", "https://app.example")
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "10")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let exposed = res.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_string();
    for name in [
        "location",
        "upload-offset",
        "upload-expires",
        "tus-resumable",
    ] {
        assert!(exposed.contains(name), "{name} not exposed: {exposed}");
    }
    s.stop().await;
}

/// Whether the blob store (a directory or S3) holds the blob of the attachment at `path`.
pub async fn blob_exists(s: &TestServer, path: &str) -> bool {
    let ids = s.app.blobs.ids().await.expect("blob ids");
    ids.iter()
        .any(|id| signal_server::attachments::encode_id(id) == id_of(path))
}

#[tokio::test]
async fn every_attachment_route_answers_with_a_trailing_slash_too() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let t = Some(alice.token.as_str());
    let a = tus(
        &s,
        "POST",
        "/attachments/",
        t,
        &[("upload-length", "4".into())],
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED);
    let path = format!("{}/", a.header("location").unwrap());
    assert_eq!(offset_of(&s, &alice.token, &path).await, 0);
    assert_eq!(patch(&s, &alice.token, &path, 0, b"abcd").await.offset(), 4);
    assert_eq!(download(&s, &alice.token, &path).await.body, b"abcd");
    let options = tus(&s, "OPTIONS", "/attachments/", None, &[], None).await;
    assert_eq!(options.status, StatusCode::NO_CONTENT);
    assert_eq!(
        tus(&s, "DELETE", &path, t, &[], None).await.status,
        StatusCode::NO_CONTENT
    );
    s.stop().await;
}

#[tokio::test]
async fn metrics_count_attachment_requests_by_route_without_ids() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let path = upload(&s, &alice.token, &[1; 10], 10).await;
    download(&s, &alice.token, &path).await;
    let metrics = s.app.metrics.render(None, 0);
    for line in [
        r#"route="/attachments",method="POST",status="201"} 1"#,
        r#"route="/attachments/:id",method="PATCH",status="204"} 1"#,
        r#"route="/attachments/:id",method="GET",status="200"} 1"#,
        "signal_server_attachments_swept_total 0",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    assert!(
        !metrics.contains(id_of(&path)),
        "an attachment id in the metrics"
    );
    s.stop().await;
}
