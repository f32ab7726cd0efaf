//! A database that is stalled or gone.

use super::*;

#[tokio::test]
async fn a_database_that_does_not_answer_is_unavailable_within_5_s() {
    if fresh_database().await.is_none() {
        return;
    }
    // Accepts connections and never says a word: a stalled server.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let started = Instant::now();
    let outcome = PgStore::connect(&format!("postgres://u@127.0.0.1:{port}/db")).await;
    assert!(
        matches!(outcome, Err(StoreError::Unavailable(_))),
        "{:?}",
        outcome.err()
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    hold.abort();

    // Nobody listening at all: refused at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let outcome = PgStore::connect(&format!("postgres://u@127.0.0.1:{port}/db")).await;
    assert!(
        matches!(outcome, Err(StoreError::Unavailable(_))),
        "{:?}",
        outcome.err()
    );
}
