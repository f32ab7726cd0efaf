//! Handlers: thin functions from typed input to a reply. Each checks what the route's caller may
//! do, makes one or two storage calls, and answers in the API's shapes.

pub mod attachments;
pub mod devices;
pub mod keys;
pub mod messages;
pub mod users;
pub mod ws;
pub mod ws_upgrade;

use serde::Serialize;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use crate::error::ApiError;

pub type Answer = Result<Response, ApiError>;

pub fn json<T: Serialize>(status: StatusCode, body: &T) -> Answer {
    Ok(warp::reply::with_status(warp::reply::json(body), status).into_response())
}

pub fn no_content() -> Answer {
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Runs `work` to its end even if the client hangs up: a write together with the steps that must
/// follow its commit (tell the hub, close sockets). A request whose client goes away is dropped
/// at its next `.await`; work spawned here is not, so no commit goes without its follow-up.
pub async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::spawn(crate::round_trips::counted(work)).await {
        Ok((done, round_trips)) => {
            crate::round_trips::add(round_trips);
            done
        }
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Cancelled: only when the runtime shuts down.
        Err(_) => Err(ApiError::Unavailable),
    }
}
