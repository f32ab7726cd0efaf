//! The machine's ceiling for the benchmarks: a minimal warp 0.4 server on the same runtime setup
//! as signal-server (`#[tokio::main]`, one worker per core), with
//! - `GET /health` → 200 `{"status":"ok"}`,
//! - `GET /messages/<u64>` → 200 `[]` when `Authorization` is `Bearer <--token>`, else 401.
//!
//! ```sh
//! cargo run --release --example baseline -- --listen 127.0.0.1:8100
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use warp::http::{header, StatusCode};
use warp::reply::Response;
use warp::Filter;

#[derive(Parser, Debug)]
#[command(about = "Minimal warp server: the ceiling the load generator compares against")]
struct Opts {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8100")]
    listen: SocketAddr,
    /// The one accepted bearer token.
    #[arg(long, default_value = "bench-token")]
    token: String,
}

fn json(status: StatusCode, body: &'static str) -> Response {
    let mut res = Response::new(body.into());
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    res
}

#[tokio::main]
async fn main() {
    let opts = Opts::parse();
    let expected: Arc<str> = format!("Bearer {}", opts.token).into();
    let health = warp::path!("health")
        .and(warp::get())
        .map(|| json(StatusCode::OK, r#"{"status":"ok"}"#));
    let messages = warp::path!("messages" / u64)
        .and(warp::get())
        .and(warp::header::optional::<String>("authorization"))
        .map(move |_reg_id: u64, auth: Option<String>| {
            if auth.as_deref() == Some(&*expected) {
                json(StatusCode::OK, "[]")
            } else {
                json(
                    StatusCode::UNAUTHORIZED,
                    r#"{"code":"not_authenticated","message":"Authentication credentials were not provided."}"#,
                )
            }
        });
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .unwrap_or_else(|e| panic!("cannot listen on {}: {e}", opts.listen));
    let addr = listener.local_addr().unwrap_or(opts.listen);
    println!("listening on http://{addr}");
    warp::serve(health.or(messages))
        .incoming(listener)
        .run()
        .await;
}
