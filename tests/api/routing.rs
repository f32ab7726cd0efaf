//! Routing rules that hold for every route: JSON 404/405, trailing slashes, `/health`.

use crate::helpers::TestServer;
use reqwest::StatusCode;

#[tokio::test]
async fn health_answers_with_and_without_trailing_slash() {
    let s = TestServer::start().await;
    for path in ["/health", "/health/"] {
        let (status, body) = s.call("GET", path, None, None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "ok");
    }
}

#[tokio::test]
async fn unknown_paths_are_json_404_and_wrong_methods_json_405_with_or_without_token() {
    let s = TestServer::start().await;
    let u = s.user("routing").await;
    for token in [None, Some(u.token.as_str())] {
        let (status, body) = s.call("GET", "/no/such/route", token, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["code"], "not_found");
        let (status, body) = s.call("PUT", "/auth/users/me", token, None).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body["code"], "method_not_allowed");
        let (status, _) = s.call("PATCH", "/messages/1/", token, None).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    }
}
