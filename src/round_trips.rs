//! Database round trips per request: the store counts each exchange with the database into the
//! request it serves (a task-local counter the accept loop sets up per request), and `/metrics`
//! sums them by route (`signal_server_db_round_trips_total`). On PostgreSQL that is what bounds
//! many instances on one database; sled makes none. Work a request hands to a task of its own
//! (`handlers::detached`) is counted into it when the task is done.

use std::cell::Cell;
use std::future::Future;

tokio::task_local! {
    static TRIPS: Cell<u32>;
}

/// Counts `n` round trips into the request being served, if any.
pub fn add(n: u32) {
    let _ = TRIPS.try_with(|c| c.set(c.get().saturating_add(n)));
}

/// The round trips counted so far in the request being served (0 outside one).
pub fn so_far() -> u32 {
    TRIPS.try_with(Cell::get).unwrap_or(0)
}

/// Runs `work` with a counter of its own.
pub async fn counted<F: Future>(work: F) -> (F::Output, u32) {
    TRIPS
        .scope(Cell::new(0), async {
            let out = work.await;
            (out, so_far())
        })
        .await
}

/// Runs `work` (a request) counting its round trips, for `so_far` to read while it runs.
pub fn scope<F: Future>(work: F) -> impl Future<Output = F::Output> {
    TRIPS.scope(Cell::new(0), work)
}
