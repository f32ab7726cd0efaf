//! Handlers: thin functions from typed input to a reply. Each checks what the route's caller may
//! do, makes one or two storage calls, and answers in the API's shapes.

pub mod devices;
pub mod keys;
pub mod messages;
pub mod users;
pub mod ws;

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
