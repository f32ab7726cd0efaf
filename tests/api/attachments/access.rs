//! Who may do what: the uploader writes, reads the offset of and deletes its uploads; another
//! account gets 404 for all three (ids do not leak), and may only download complete ones.

use reqwest::StatusCode;

use super::*;

#[tokio::test]
async fn another_account_cannot_see_write_or_delete_an_upload_it_does_not_own() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let mallory = s.user("mallory").await;
    let unfinished = create(&s, &alice.token, 100).await;
    assert_eq!(
        patch(&s, &alice.token, &unfinished, 0, &[1; 50])
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let complete = upload(&s, &alice.token, &[2; 100], 100).await;

    for path in [&unfinished, &complete] {
        let head = tus(&s, "HEAD", path, Some(&mallory.token), &[], None).await;
        assert_eq!(
            head.status,
            StatusCode::NOT_FOUND,
            "HEAD of another's {path}"
        );
        assert!(head.header("upload-offset").is_none());
        patch(&s, &mallory.token, path, 50, &[9; 50]).await.refused(
            404,
            "no_such_attachment",
            "PATCH of another's upload",
        );
        patch(&s, &mallory.token, path, 100, &[9]).await.refused(
            404,
            "no_such_attachment",
            "PATCH of another's upload",
        );
        tus(&s, "DELETE", path, Some(&mallory.token), &[], None)
            .await
            .refused(404, "no_such_attachment", "DELETE of another's upload");
    }
    // Nothing changed: the owner still sees both, the complete one downloads intact.
    assert_eq!(offset_of(&s, &alice.token, &unfinished).await, 50);
    assert_eq!(
        download(&s, &mallory.token, &complete).await.body,
        vec![2u8; 100]
    );
    download(&s, &mallory.token, &unfinished).await.refused(
        404,
        "no_such_attachment",
        "an unfinished upload",
    );
    s.stop().await;
}

#[tokio::test]
async fn every_attachment_route_but_options_needs_a_valid_token() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let path = upload(&s, &alice.token, &[3; 10], 10).await;
    for (method, p) in [
        ("POST", "/attachments"),
        ("HEAD", path.as_str()),
        ("PATCH", path.as_str()),
        ("DELETE", path.as_str()),
        ("GET", path.as_str()),
    ] {
        for token in [None, Some("not-a-token")] {
            let a = tus(
                &s,
                method,
                p,
                token,
                &[("upload-length", "10".into())],
                None,
            )
            .await;
            assert_eq!(
                a.status,
                StatusCode::UNAUTHORIZED,
                "{method} {p} with {token:?}"
            );
            assert_eq!(a.header("tus-resumable"), Some("1.0.0"));
        }
    }
    s.stop().await;
}
