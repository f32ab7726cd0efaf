//! What one account may hold: unfinished uploads at a time, bytes in all, uploads created per
//! second; every refusal stores nothing and frees up again.

use reqwest::StatusCode;

use super::*;

fn post_length(length: u64) -> Vec<(&'static str, String)> {
    vec![("upload-length", length.to_string())]
}

#[tokio::test]
async fn at_most_ten_unfinished_uploads_and_the_quota_counts_them_at_full_length() {
    let s = TestServer::start_with(&["--no-rate-limit", "--attachment-quota", "1000"]).await;
    let alice = s.user("alice").await;
    let t = Some(alice.token.as_str());
    let mut paths = Vec::new();
    for _ in 0..10 {
        paths.push(create(&s, &alice.token, 10).await);
    }
    let eleventh = tus(&s, "POST", "/attachments", t, &post_length(10), None).await;
    eleventh.refused(429, "throttled", "an 11th unfinished upload");
    assert!(eleventh.header("retry-after").is_some());
    // Completing one makes room for another unfinished one.
    assert_eq!(
        patch(&s, &alice.token, &paths[0], 0, &[1; 10]).await.status,
        StatusCode::NO_CONTENT
    );
    let again = create(&s, &alice.token, 10).await;

    // 11 uploads of 10 bytes are held; 889 bytes are left of the quota.
    tus(&s, "DELETE", &again, t, &[], None).await;
    for p in &paths[1..] {
        assert_eq!(
            tus(&s, "DELETE", p, t, &[], None).await.status,
            StatusCode::NO_CONTENT
        );
    }
    // 10 bytes held (the complete one): 990 left.
    tus(&s, "POST", "/attachments", t, &post_length(991), None)
        .await
        .refused(403, "attachment_quota", "over the quota");
    let fits = create(&s, &alice.token, 990).await;
    tus(&s, "POST", "/attachments", t, &post_length(1), None)
        .await
        .refused(403, "attachment_quota", "the quota is used up");
    // Another account has its own.
    let bob = s.user("bob").await;
    create(&s, &bob.token, 1000).await;
    tus(&s, "DELETE", &fits, t, &[], None).await;
    create(&s, &alice.token, 990).await;
    s.stop().await;
}

#[tokio::test]
async fn creating_uploads_is_rate_limited_per_account() {
    let s = TestServer::start_with(&[]).await;
    let alice = s.user("alice").await;
    let t = Some(alice.token.as_str());
    for _ in 0..50 {
        let path = create(&s, &alice.token, 10).await;
        assert_eq!(
            tus(&s, "DELETE", &path, t, &[], None).await.status,
            StatusCode::NO_CONTENT
        );
    }
    let a = tus(&s, "POST", "/attachments", t, &post_length(10), None).await;
    a.refused(429, "throttled", "the 51st creation in a burst");
    assert!(a.header("retry-after").is_some());
    let bob = s.user("bob").await;
    create(&s, &bob.token, 10).await;
    s.stop().await;
}

#[tokio::test]
async fn an_upload_buffer_takes_its_share_of_the_body_budget_and_gives_it_back() {
    // A budget of 1 MiB: one upload's buffer takes all of it.
    let s = TestServer::start_with(&["--no-rate-limit", "--body-buffer-bytes", "1048576"]).await;
    let alice = s.user("alice").await;
    let first = create(&s, &alice.token, 2000).await;
    let second = create(&s, &alice.token, 10).await;
    let mut held = tokio::net::TcpStream::connect(addr(&s)).await.unwrap();
    let head = format!(
        "PATCH {first} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nTus-Resumable: 1.0.0\r\n\
         Upload-Offset: 0\r\nContent-Type: {OCTETS}\r\nContent-Length: 2000\r\n\r\n",
        alice.token
    );
    use tokio::io::AsyncWriteExt;
    held.write_all(head.as_bytes()).await.unwrap();
    held.write_all(&[1; 1000]).await.unwrap();
    // Wait until the first PATCH holds the budget: a small JSON body is refused from then on.
    let deadline = std::time::Instant::now() + RAW_BOUND;
    loop {
        let probe = s
            .http
            .post(s.url("/auth/users"))
            .header("content-type", "application/json")
            .body("{")
            .send()
            .await
            .unwrap();
        if probe.status() == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the budget was never taken"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Another PATCH is refused before anything is written.
    let refused = patch(&s, &alice.token, &second, 0, &[2; 10]).await;
    refused.refused(503, "unavailable", "a PATCH beyond the body budget");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(offset_of(&s, &alice.token, &second).await, 0);
    // The first ends and gives its share back.
    held.write_all(&[1; 1000]).await.unwrap();
    let deadline = std::time::Instant::now() + RAW_BOUND;
    loop {
        let a = patch(&s, &alice.token, &second, 0, &[2; 10]).await;
        if a.status == StatusCode::NO_CONTENT {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still {}", a.status);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(offset_of(&s, &alice.token, &first).await, 2000);
    s.stop().await;
}
