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

/// A TCP relay in front of the test server: `stop` closes every connection through it and
/// refuses new ones (the database went down); `start` listens on the same port again;
/// `frozen` holds every byte back while it is true (the database stalled).
struct Relay {
    port: u16,
    upstream: String,
    task: Option<tokio::task::JoinHandle<()>>,
    frozen: tokio::sync::watch::Sender<bool>,
}

/// Copies `from` to `to`, waiting while `frozen`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0; 16 << 10];
    loop {
        let Ok(n) = from.read(&mut buf).await else {
            return;
        };
        if n == 0 || frozen.wait_for(|f| !f).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Relay {
    async fn start(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        self.port = listener.local_addr().unwrap().port();
        let upstream = self.upstream.clone();
        let frozen = self.frozen.subscribe();
        self.task = Some(tokio::spawn(async move {
            // Dropped with this task, which ends every relayed connection.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                connections.spawn(pump(in_read, out_write, frozen.clone()));
                connections.spawn(pump(out_read, in_write, frozen.clone()));
            }
        }));
    }

    async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

/// A fresh database reached through a relay the test can freeze or cut: the relay, running,
/// and the database's URL through it.
async fn relayed_database() -> Option<(Relay, String)> {
    let url = fresh_database().await?;
    let config: tokio_postgres::Config = url.parse().unwrap();
    let tokio_postgres::config::Host::Tcp(host) = &config.get_hosts()[0] else {
        panic!("the test server must be reached over TCP");
    };
    let port = config.get_ports()[0];
    let mut relay = Relay {
        port: 0,
        upstream: format!("{host}:{port}"),
        task: None,
        frozen: tokio::sync::watch::channel(false).0,
    };
    relay.start().await;
    let relayed = url.replacen(
        &format!("{host}:{port}"),
        &format!("127.0.0.1:{}", relay.port),
        1,
    );
    Some((relay, relayed))
}

#[tokio::test]
async fn a_database_that_stalls_or_goes_down_is_unavailable_within_5_s_and_used_again_when_back() {
    let Some((mut relay, relayed)) = relayed_database().await else {
        return;
    };
    let s = PgStore::connect(&relayed).await.unwrap();
    let a = s.create_user("a", "", "h".into(), None).await.unwrap();

    // Stalled: connections stay open, nothing comes back.
    relay.frozen.send_replace(true);
    let started = Instant::now();
    assert!(matches!(
        s.user(a.id).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    relay.frozen.send_replace(false);
    s.health().await.unwrap();

    relay.stop().await;
    let started = Instant::now();
    assert!(matches!(s.health().await, Err(StoreError::Unavailable(_))));
    assert!(matches!(
        s.user(a.id).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        s.create_user("b", "", "h".into(), None).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );

    // Back again: the same store serves without a restart.
    relay.start().await;
    s.health().await.unwrap();
    assert_eq!(s.user(a.id).await.unwrap().unwrap().username, "a");
    s.create_user("b", "", "h".into(), None).await.unwrap();
}

#[tokio::test]
async fn sslmode_require_insists_on_tls() {
    let Some(url) = fresh_database().await else {
        return;
    };
    // The test server speaks no TLS: a store that must use it cannot connect, and says so.
    let separator = if url.contains('?') { '&' } else { '?' };
    let outcome = PgStore::connect(&format!("{url}{separator}sslmode=require")).await;
    match outcome {
        Err(StoreError::Unavailable(why)) => assert!(why.contains("TLS"), "{why}"),
        other => panic!("{:?}", other.err()),
    }
}

/// The connection lost during COMMIT, which went through (the relay cut while the commit waits
/// for a slow deferred trigger): the send answered `Unavailable` although it was queued. A
/// retry under its key finds the stored answer and queues nothing new.
#[tokio::test]
async fn a_keyed_send_whose_commit_was_lost_in_transit_is_answered_on_its_retry() {
    use crate::storage::idempotency::{Remember, SendKey, Sent, ROUTE_SEND};
    let Some((mut relay, relayed)) = relayed_database().await else {
        return;
    };
    let s = PgStore::connect(&relayed).await.unwrap();
    let (a, b) = (
        user_with_device(&s, "a").await,
        user_with_device(&s, "b").await,
    );
    s.client()
        .await
        .unwrap()
        .batch_execute(
            "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$; \
             CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON idempotency \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit();",
        )
        .await
        .unwrap();
    let key = SendKey {
        sender: one(a),
        route: ROUTE_SEND,
        key: "lost".into(),
    };
    let answer = |q: &[Message]| (201, q[0].id.to_be_bytes().to_vec());
    let remember = Remember {
        key: &key,
        body_hash: [1; 32],
        created_ms: 1,
        answer: &answer,
    };
    let sending = s.enqueue_once(one(b), message("x", 1), 10, &remember);
    let cut = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        relay.stop().await;
    };
    let (sent, ()) = tokio::join!(sending, cut);
    assert!(
        matches!(sent, Err(StoreError::Unavailable(_))),
        "{:?}",
        sent.map(|_| ())
    );

    relay.start().await;
    // As a client would: retried while the database is still unavailable.
    let mut again = Err(StoreError::Unavailable(String::new()));
    for _ in 0..20 {
        again = s.enqueue_once(one(b), message("x", 1), 10, &remember).await;
        if !matches!(again, Err(StoreError::Unavailable(_))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let Ok(Sent::Answered(found)) = again else {
        panic!("the retry must find the committed send: {again:?}");
    };
    let queued = s.messages(one(b), 0, 10).await.unwrap();
    assert_eq!(queued.len(), 1, "queued once");
    assert_eq!(found.body, queued[0].id.to_be_bytes());
}
