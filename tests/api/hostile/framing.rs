//! Raw HTTP against the binary: framing tricks (`Content-Length` lies, chunked bodies,
//! pipelining, odd methods and targets, long and many headers) get clean answers, and a refusal
//! sent before the body is read says that the connection closes.

use std::io::{Read, Write};

use super::{assert_clean_log, check_answer, fixture};
use crate::helpers::{message_text, BINARY_BOUND};
use reqwest::StatusCode;
use serde_json::json;

/// Sends raw bytes on a new connection and reads until the server closes it; panics if it is
/// still open after `BINARY_BOUND`.
fn exchange(addr: &str, request: &[u8]) -> Vec<u8> {
    let mut conn = std::net::TcpStream::connect(addr).expect("connect");
    conn.set_read_timeout(Some(BINARY_BOUND)).unwrap();
    conn.set_write_timeout(Some(BINARY_BOUND)).unwrap();
    // The server may answer and close before reading all of a hostile request.
    let _ = conn.write_all(request);
    let mut answer = Vec::new();
    let read = conn.read_to_end(&mut answer);
    if let Err(e) = read {
        // A reset after a complete answer (unread request bytes) is not a hang.
        assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "no close within {BINARY_BOUND:?}: {:?}",
            String::from_utf8_lossy(&request[..request.len().min(200)])
        );
    }
    answer
}

/// The status and body of the last answer to raw `request` (pipelined requests get several).
/// `None`: the connection closed with no answer.
fn raw(addr: &str, request: &[u8]) -> Option<(u16, String)> {
    let answer = exchange(addr, request);
    let text = String::from_utf8_lossy(&answer).to_string();
    let last = text.rfind("HTTP/1.")?;
    let text = &text[last..];
    let status = text.get(9..12)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    Some((status, body.to_string()))
}

/// HTTP framing tricks: `Content-Length` lies, chunked bodies, `Transfer-Encoding` with
/// `Content-Length`, `Expect: 100-continue`, HTTP/1.0, pipelining, odd methods and targets,
/// long and many headers. Answered by our routes: the JSON error shape with the documented
/// status. Refused by the HTTP layer before any route (framing it cannot parse): an empty 4xx.
#[tokio::test]
async fn http_framing_tricks_get_clean_answers() {
    let (_dir, s, alice, _bob) = fixture().await;
    let addr = s.addr().to_string();
    let auth = format!("Authorization: Bearer {}\r\n", alice.token);
    let post = |path: &str, extra: &str, body: &str| {
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}{extra}\r\n{body}")
            .into_bytes()
    };
    let send = json!({"recipient": "bob", "message": message_text(2002, "x")}).to_string();
    let many_headers: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    // (request, status, answered by our routes)
    let cases: Vec<(Vec<u8>, u16, bool)> = vec![
        // A body shorter than its Content-Length: the read ends at the idle timeout.
        (post("/messages/1001", "Content-Length: 9999\r\n", "{}"), 400, true),
        (post("/messages/1001", "Content-Length: 1\r\n", &send), 400, true),
        (post("/messages/1001", "Content-Length: -1\r\n", "{}"), 400, false),
        (post("/messages/1001", "Content-Length: 2\r\nContent-Length: 3\r\n", "{}}"), 400, false),
        (post("/messages/1001", "Content-Length: 99999999999999999999999\r\n", ""), 400, false),
        (post("/messages/1001", "Content-Length: 18446744073709551615\r\n", ""), 431, false),
        (post("/messages/1001", "Content-Length: 2\r\nTransfer-Encoding: chunked\r\n", "2\r\n{}\r\n0\r\n\r\n"), 403, true),
        (post("/messages/1001", "Transfer-Encoding: chunked\r\n", "zz\r\n{}\r\n0\r\n\r\n"), 400, true),
        (post("/messages/1001", "Transfer-Encoding: chunked\r\n", "ffffffffffffffffffff\r\n{}\r\n"), 400, true),
        (post("/messages/1001", "Transfer-Encoding: gzip\r\n", "{}"), 400, false),
        (post("/messages/1001", "Expect: 100-continue\r\nContent-Length: 99999999\r\n", ""), 413, true),
        (post("/messages/1001", "Expect: 100-continue\r\nContent-Length: 2\r\n", "[]"), 403, true),
        (post("/messages/1001", "Expect: nonsense\r\nContent-Length: 2\r\n", "[]"), 403, true),
        (format!("POST /messages/1001 HTTP/1.0\r\n{auth}Content-Length: 2\r\n\r\n{{}}").into_bytes(), 403, true),
        (b"GET /health HTTP/1.0\r\n\r\n".to_vec(), 200, true),
        (b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), 200, true),
        (format!("GET /auth/users/me HTTP/1.1\r\nHost: x\r\n\r\nGET /messages/1001?limit=0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\r\n").into_bytes(), 400, true),
        (b"BREW /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), 405, true),
        (b"GET http://elsewhere/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), 200, true),
        (b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), 404, true),
        (format!("GET /{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "a".repeat(100_000)).into_bytes(), 414, false),
        (format!("GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{many_headers}\r\n").into_bytes(), 431, false),
        (format!("GET /auth/users/me HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {}\r\n\r\n", "a".repeat(60_000)).into_bytes(), 401, true),
        (b"GET /auth/users/me HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer \xff\xfe\r\n\r\n".to_vec(), 401, true),
        (b"\x00\x01\x02\r\n\r\n".to_vec(), 400, false),
    ];
    for (request, want, ours) in cases {
        let shown = String::from_utf8_lossy(&request[..request.len().min(160)]).to_string();
        let answer = tokio::task::spawn_blocking({
            let addr = addr.clone();
            move || raw(&addr, &request)
        })
        .await
        .unwrap();
        let (status, body) = answer.unwrap_or_else(|| panic!("no answer to {shown:?}"));
        assert_eq!(status, want, "{shown:?}: {body}");
        if ours {
            check_answer(&shown, StatusCode::from_u16(status).unwrap(), &body);
        }
    }
    assert_clean_log(&s);
}

/// A refusal sent before the body is read (unknown path, bad token, too large) ends a kept-alive
/// connection when the unread body is large; the answer must say so (`Connection: close`), or a
/// client that reuses the connection loses its next request.
#[tokio::test]
async fn a_refusal_before_the_body_is_read_says_the_connection_closes() {
    let (_dir, s, _alice, _bob) = fixture().await;
    let addr = s.addr().to_string();
    for path in ["/nope", "/messages/1001", "/auth/users/me"] {
        let body = "x".repeat(200_000);
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
            body.len()
        );
        let answer = tokio::task::spawn_blocking({
            let addr = addr.clone();
            move || String::from_utf8_lossy(&exchange(&addr, request.as_bytes())).to_lowercase()
        })
        .await
        .unwrap();
        let answers = answer.matches("http/1.1 ").count();
        assert!(answers >= 1, "{path}: no answer");
        let first = answer.split("\r\n\r\n").next().unwrap();
        assert!(
            answers == 2 || first.contains("connection: close"),
            "{path}: the connection closed after one answer that did not say so:\n{first}"
        );
    }
    assert_clean_log(&s);
}
