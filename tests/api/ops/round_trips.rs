//! Database round trips per request, as the server counts them itself
//! (`signal_server_db_round_trips_total` by route on `/metrics`): what each hot route costs the
//! database that bounds every instance, checked by count, not by time. On sled there is no
//! database: no route may report a round trip.

use super::prometheus::{scrape, Exposition};
use super::{pop_bundle, serve_metrics};
use crate::helpers::{deliver, message_ids, on_postgres, TestServer, TestUser};
use reqwest::StatusCode;
use serde_json::json;

const FAMILY: &str = "signal_server_db_round_trips_total";
const TIMES: u32 = 10;

fn round_trips(e: &Exposition, route: &str) -> f64 {
    e.value(FAMILY, &[("route", route)]).unwrap_or(0.0)
}

async fn fetch(s: &TestServer, user: &TestUser) {
    let (status, body) = s
        .get(&format!("/messages/{}", user.reg_id), &user.token)
        .await;
    assert_eq!(status, StatusCode::OK, "fetch: {body}");
}

#[tokio::test]
async fn hot_routes_cost_the_database_a_fixed_number_of_round_trips() {
    let s = TestServer::start().await;
    let (metrics_url, metrics) = serve_metrics(&s).await;

    let alice = s.user_with_device("alicetrips", 5111, 30, 30).await;
    let bob = s.user_with_device("bobtrips", 5222, 30, 30).await;
    // Once each first: the callers' accounts are read and cached.
    fetch(&s, &alice).await;
    deliver(&s, &alice, &bob, "warm").await;
    pop_bundle(&s, &alice, &bob).await;

    let before = scrape(&s.http, &metrics_url).await;
    for _ in 0..TIMES {
        fetch(&s, &alice).await;
    }
    let fetched = scrape(&s.http, &metrics_url).await;
    for i in 0..TIMES {
        deliver(&s, &alice, &bob, &format!("m{i}")).await;
    }
    let sent = scrape(&s.http, &metrics_url).await;
    for _ in 0..TIMES {
        pop_bundle(&s, &alice, &bob).await;
    }
    let popped = scrape(&s.http, &metrics_url).await;
    for _ in 0..TIMES {
        let (status, _) = s.call("GET", "/health", None, None).await;
        assert_eq!(status, StatusCode::OK);
    }
    let probed = scrape(&s.http, &metrics_url).await;
    // Bob acknowledges the sends one by one (his first request reads and caches his account).
    let (status, queue) = s
        .get(&format!("/messages/{}", bob.reg_id), &bob.token)
        .await;
    assert_eq!(status, StatusCode::OK, "{queue}");
    let listed = scrape(&s.http, &metrics_url).await;
    let ids = message_ids(&queue);
    assert!(ids.len() > TIMES as usize, "{} queued", ids.len());
    for id in &ids[..TIMES as usize] {
        let path = format!("/messages/{}", bob.reg_id);
        let (status, answer) = s.delete(&path, &bob.token, json!([id])).await;
        assert_eq!((status, &answer), (StatusCode::OK, &json!(["success"])));
    }
    let acked = scrape(&s.http, &metrics_url).await;

    if !on_postgres() {
        assert!(
            acked.find(FAMILY).next().is_none(),
            "sled makes no database round trips"
        );
        metrics.abort();
        return;
    }
    let per_request = |after: &Exposition, before: &Exposition, route: &str| {
        (round_trips(after, route) - round_trips(before, route)) / f64::from(TIMES)
    };
    let messages = "/messages/:regId";
    // The caller and its device come from the per-instance cache: the page is the only read.
    assert_eq!(per_request(&fetched, &before, messages), 1.0, "fetch");
    // The recipient with its device, then the pipelined transaction (lock, count and insert).
    assert_eq!(per_request(&sent, &fetched, messages), 2.0, "send");
    // The target with its device, then the pop of both one-time keys.
    let bundle = "/prekeybundle/:username/:regId";
    assert_eq!(per_request(&popped, &sent, bundle), 2.0, "bundle");
    // A probe reuses the database's answer for a second.
    let health = per_request(&probed, &popped, "/health") * f64::from(TIMES);
    assert!(
        health <= f64::from(TIMES / 2),
        "health: {health} for {TIMES}"
    );
    // One statement deletes and reports.
    assert_eq!(per_request(&acked, &listed, messages), 1.0, "delete");
    metrics.abort();
}
