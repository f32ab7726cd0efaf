//! Every route of the API, in one place. Each endpoint is one small function, filters in one
//! order: path → method → app → auth → body/query → `.then(handler)`. Handler errors are replies;
//! rejections only route (404, 405) and carry a failed authentication (401) or a WebSocket
//! origin refused by `cors` (403).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use warp::filters::BoxedFilter;
use warp::http::HeaderValue;
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use crate::app::App;
use crate::auth::Caller;
use crate::body::Body;
use crate::error::ApiError;
use crate::handlers::{attachments, devices, keys, messages, users, ws, ws_upgrade, Answer};

impl warp::reject::Reject for ApiError {}

/// The whole API, with rejections turned into the JSON error shape.
pub fn api(app: App) -> BoxedFilter<(Response,)> {
    // Each group is entered only for its first path segment: a request does not build (and
    // box) the filters of every group before its own. The busiest groups come first.
    let api = under(&["messages"])
        .and(message_routes(&app))
        .or(
            under(&["prekeybundle", "prekeys", "kyberprekeys", "signedprekey"])
                .and(key_routes(&app)),
        )
        .unify()
        .or(under(&["health", ""]).and(health(&app)))
        .unify()
        .or(under(&["auth"]).and(accounts(&app)))
        .unify()
        .or(under(&["device"]).and(device_routes(&app)))
        .unify()
        .or(under(&["v2"]).and(v2_routes(&app)))
        .unify()
        .or(crate::cors::preflight(&app.cors))
        .unify()
        .or(under(&["attachments"]).and(attachment_routes(&app)))
        .unify()
        .recover(recover)
        .unify();
    observed(&app, api)
        .and(crate::cors::request_origin())
        .map(crate::cors::decorate(&app.cors))
        .boxed()
}

/// Passes requests whose path starts with one of `first` (`""`: the root), without taking the
/// segment; rejects the others as not found, for the next group.
fn under(first: &'static [&'static str]) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::path::peek()
        .and_then(move |path: warp::path::Peek| {
            let segment = path.segments().next().unwrap_or("");
            let ours = first.contains(&segment);
            async move {
                if ours {
                    Ok(())
                } else {
                    Err(warp::reject::not_found())
                }
            }
        })
        .untuple_one()
}

/// Counts every answer of `inner` for `/metrics` and writes its access log line. Not
/// `warp::log`: its `Info::remote_addr` only knows warp's own server, and ours is `net`.
fn observed(
    app: &App,
    inner: impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let app = app.clone();
    warp::any()
        .map(std::time::Instant::now)
        .and(warp::method())
        .and(warp::path::full())
        .and(peer_addr())
        .and(forwarded_for())
        .and(inner)
        .map(
            move |start: std::time::Instant,
                  method: warp::http::Method,
                  path: warp::path::FullPath,
                  peer: Option<SocketAddr>,
                  forwarded: Option<String>,
                  res: Response| {
                let request = crate::access::Request {
                    method: method.as_str(),
                    path: path.as_str(),
                    status: res.status().as_u16(),
                    elapsed: start.elapsed(),
                };
                app.metrics.observe(
                    request.method,
                    request.path,
                    request.status,
                    request.elapsed,
                    crate::round_trips::so_far(),
                );
                let client = client_of(&app.config.trusted_proxy, peer, forwarded.as_deref());
                crate::access::log(&request, client);
                res
            },
        )
}

/// GET /metrics, on the metrics address only.
pub fn metrics(app: App) -> BoxedFilter<(Response,)> {
    warp::path!("metrics")
        .and(warp::get())
        .and(with_app(&app))
        .then(|app: App| async move {
            // Totals are counted once per process; a damaged database leaves them out.
            let _ = app.storage.count_totals().await;
            let totals = app.storage.totals().await.ok();
            let text = app.metrics.render(totals.as_ref(), app.hub.connections());
            warp::http::Response::builder()
                .header("content-type", "text/plain; version=0.0.4")
                .body(text.into())
                .unwrap_or_default()
        })
        .boxed()
}

fn reply(answer: Answer) -> Response {
    answer.into_response()
}

fn with_app(app: &App) -> impl Filter<Extract = (App,), Error = Infallible> + Clone {
    let app = app.clone();
    warp::any().map(move || app.clone())
}

/// The caller, from `Authorization: Bearer|JWT <token>`; 401 otherwise.
fn auth(app: &App) -> impl Filter<Extract = (Caller,), Error = Rejection> + Clone {
    with_app(app).and(authorization()).and_then(
        |app: App, header: Option<HeaderValue>| async move {
            caller(&app, header.as_ref(), None)
                .await
                .map_err(warp::reject::custom)
        },
    )
}

/// The caller of a WebSocket upgrade: the header, or `?token=` (browsers cannot set headers).
fn auth_ws(app: &App) -> impl Filter<Extract = (Caller,), Error = Rejection> + Clone {
    with_app(app)
        .and(authorization())
        .and(raw_query())
        .and_then(
            |app: App, header: Option<HeaderValue>, query: Option<String>| async move {
                let from_query = query
                    .as_deref()
                    .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")));
                caller(&app, header.as_ref(), from_query)
                    .await
                    .map_err(warp::reject::custom)
            },
        )
}

/// Checks the token of a request; a header that is not text counts as a bad token.
async fn caller(
    app: &App,
    header: Option<&HeaderValue>,
    fallback: Option<&str>,
) -> Result<Caller, ApiError> {
    let from_header = header
        .and_then(|h| h.to_str().ok())
        .and_then(crate::auth::bearer);
    let token = from_header.or(fallback).ok_or(ApiError::NotAuthenticated)?;
    crate::auth::user_for_token(&app.tokens, &app.hub.principals, &app.storage, token).await
}

/// The raw `Authorization` header, if any (a value that is not text counts as a bad token, 401).
fn authorization() -> impl Filter<Extract = (Option<HeaderValue>,), Error = Infallible> + Clone {
    warp::header::value("authorization")
        .map(Some)
        .or(warp::any().map(|| None))
        .unify()
}

/// The raw `Idempotency-Key` header of a send, if any (checked by the handler).
fn idempotency_key() -> impl Filter<Extract = (Option<HeaderValue>,), Error = Infallible> + Clone {
    warp::header::value("idempotency-key")
        .map(Some)
        .or(warp::any().map(|| None))
        .unify()
}

/// The body, read later by the handler (after the device checks) with the size limit.
fn body(app: &App) -> impl Filter<Extract = (Body,), Error = Rejection> + Clone {
    let limits = app.bodies.clone();
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .map(move |length, stream| Body::new(length, stream, limits.clone()))
}

fn raw_query() -> impl Filter<Extract = (Option<String>,), Error = Infallible> + Clone {
    warp::query::raw()
        .map(Some)
        .or(warp::any().map(|| None))
        .unify()
}

/// The TCP peer's address, as the accept loop (`net::serve`) recorded it.
pub fn peer_addr() -> impl Filter<Extract = (Option<SocketAddr>,), Error = Infallible> + Clone {
    warp::ext::optional::<crate::net::Peer>()
        .map(|peer: Option<crate::net::Peer>| peer.map(|p| p.0))
}

/// The client IP for per-IP limits (and logs): the peer, or `X-Forwarded-For`'s last hop when the
/// peer is a trusted proxy.
pub fn client_ip(
    app: &App,
) -> impl Filter<Extract = (Option<IpAddr>,), Error = Infallible> + Clone {
    let trusted = app.config.trusted_proxy.clone();
    peer_addr().and(forwarded_for()).map(
        move |peer: Option<SocketAddr>, forwarded: Option<String>| {
            client_of(&trusted, peer, forwarded.as_deref())
        },
    )
}

/// The `X-Forwarded-For` header, if any and text (only believed from a trusted proxy).
fn forwarded_for() -> impl Filter<Extract = (Option<String>,), Error = Infallible> + Clone {
    warp::header::optional::<String>("x-forwarded-for")
        .or(warp::any().map(|| None))
        .unify()
}

/// The peer, or `X-Forwarded-For`'s last hop when the peer is one of the `trusted` proxies.
pub fn client_of(
    trusted: &[IpAddr],
    peer: Option<SocketAddr>,
    forwarded: Option<&str>,
) -> Option<IpAddr> {
    let peer = peer.map(|p| p.ip());
    match (peer, forwarded) {
        (Some(p), Some(f)) if trusted.contains(&p) => f
            .rsplit(',')
            .next()
            .and_then(|ip| ip.trim().parse().ok())
            .or(Some(p)),
        _ => peer,
    }
}

#[derive(serde::Serialize)]
struct Health {
    status: &'static str,
}

/// GET /health, HEAD /health (health checkers often send HEAD), GET /. Health is 503
/// `unavailable` while storage cannot take writes (sled: it has failed and the process is about
/// to exit).
fn health(app: &App) -> BoxedFilter<(Response,)> {
    let get = warp::path!("health")
        .and(warp::get())
        .and(with_app(app))
        .then(|app: App| async move { app.storage.health().await })
        .map(|health: Result<(), _>| match health {
            Ok(()) => warp::reply::json(&Health { status: "ok" }).into_response(),
            Err(_) => warp::reply::with_status(
                warp::reply::json(&Health {
                    status: "unavailable",
                }),
                warp::http::StatusCode::SERVICE_UNAVAILABLE,
            )
            .into_response(),
        });
    let head = warp::path!("health")
        .and(warp::head())
        .and(with_app(app))
        .then(|app: App| async move { app.storage.health().await })
        .map(|health: Result<(), _>| match health {
            Ok(()) => warp::http::StatusCode::OK.into_response(),
            Err(_) => warp::http::StatusCode::SERVICE_UNAVAILABLE.into_response(),
        });
    get.or(head).unify().or(root()).unify().boxed()
}

#[derive(serde::Serialize)]
struct About {
    name: &'static str,
    version: &'static str,
    docs: &'static str,
}

/// GET /: what answers here, for someone who opens the server's URL in a browser.
fn root() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path::end().and(warp::get()).map(|| {
        warp::reply::json(&About {
            name: env!("CARGO_PKG_NAME"),
            version: env!("CARGO_PKG_VERSION"),
            // Where the API is described in the source of this version (no public site yet).
            docs: "docs/API.md",
        })
        .into_response()
    })
}

fn accounts(app: &App) -> BoxedFilter<(Response,)> {
    let a = app;
    // POST /auth/users
    let register = warp::path!("auth" / "users")
        .and(warp::post())
        .and(with_app(a))
        .and(client_ip(a))
        .and(body(a))
        .then(users::register)
        .map(reply);
    // GET /auth/users/me
    let me = warp::path!("auth" / "users" / "me")
        .and(warp::get())
        .and(auth(a))
        .then(users::me)
        .map(reply);
    // DELETE /auth/users/me
    let delete_me = warp::path!("auth" / "users" / "me")
        .and(warp::delete())
        .and(with_app(a))
        .and(auth(a))
        .and(body(a))
        .then(users::delete_me)
        .map(reply);
    // POST /auth/jwt/create
    let login = warp::path!("auth" / "jwt" / "create")
        .and(warp::post())
        .and(with_app(a))
        .and(client_ip(a))
        .and(body(a))
        .then(users::login)
        .map(reply);
    // POST /auth/jwt/refresh
    let refresh = warp::path!("auth" / "jwt" / "refresh")
        .and(warp::post())
        .and(with_app(a))
        .and(body(a))
        .then(users::refresh)
        .map(reply);
    // POST /auth/jwt/verify
    let verify = warp::path!("auth" / "jwt" / "verify")
        .and(warp::post())
        .and(with_app(a))
        .and(body(a))
        .then(users::verify)
        .map(reply);
    // POST /auth/password
    let password = warp::path!("auth" / "password")
        .and(warp::post())
        .and(with_app(a))
        .and(auth(a))
        .and(body(a))
        .then(users::change_password)
        .map(reply);
    // POST /auth/password/reset
    let reset = warp::path!("auth" / "password" / "reset")
        .and(warp::post())
        .and(with_app(a))
        .and(client_ip(a))
        .and(body(a))
        .then(users::reset)
        .map(reply);
    // POST /auth/password/reset/confirm
    let confirm = warp::path!("auth" / "password" / "reset" / "confirm")
        .and(warp::post())
        .and(with_app(a))
        .and(client_ip(a))
        .and(body(a))
        .then(users::reset_confirm)
        .map(reply);
    register
        .or(me)
        .unify()
        .or(delete_me)
        .unify()
        .or(login)
        .unify()
        .or(refresh)
        .unify()
        .or(verify)
        .unify()
        .or(password)
        .unify()
        .or(reset)
        .unify()
        .or(confirm)
        .unify()
        .boxed()
}

/// `/device/` followed by anything (ignored, as in the original).
fn device_path() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::path("device")
        .and(warp::path::tail())
        .map(|_| ())
        .untuple_one()
}

fn device_routes(app: &App) -> BoxedFilter<(Response,)> {
    let a = app;
    // POST /device/<anything>
    let create = device_path()
        .and(warp::post())
        .and(with_app(a))
        .and(auth(a))
        .and(body(a))
        .then(devices::create)
        .map(reply);
    // GET /device/<anything>
    let show = warp::path("device")
        .and(warp::path::tail())
        .and(warp::get())
        .and(with_app(a))
        .and(auth(a))
        .then(devices::show)
        .map(reply);
    // DELETE /device/<anything>
    let delete = device_path()
        .and(warp::delete())
        .and(with_app(a))
        .and(auth(a))
        .then(devices::delete)
        .map(reply);
    create.or(show).unify().or(delete).unify().boxed()
}

fn key_routes(app: &App) -> BoxedFilter<(Response,)> {
    let a = app;
    // POST /prekeys/<regId>
    let upload = warp::path!("prekeys" / u64)
        .and(warp::post())
        .and(with_app(a))
        .and(auth(a))
        .and(body(a))
        .then(keys::upload_prekeys)
        .map(reply);
    // GET /prekeys/<regId>
    let stock = warp::path!("prekeys" / u64)
        .and(warp::get())
        .and(with_app(a))
        .and(auth(a))
        .then(keys::stock)
        .map(reply);
    // POST /kyberprekeys/<regId>
    let kyber = warp::path!("kyberprekeys" / u64)
        .and(warp::post())
        .and(with_app(a))
        .and(auth(a))
        .and(body(a))
        .then(keys::upload_kyber)
        .map(reply);
    // POST /signedprekey/<regId>
    let signed = warp::path!("signedprekey" / u64)
        .and(warp::post())
        .and(with_app(a))
        .and(auth(a))
        .and(body(a))
        .then(keys::upload_signed)
        .map(reply);
    // GET /prekeybundle/<username>/<regId>
    let bundle = warp::path!("prekeybundle" / String / u64)
        .and(warp::get())
        .and(with_app(a))
        .and(auth(a))
        .then(keys::bundle)
        .map(reply);
    upload
        .or(stock)
        .unify()
        .or(kyber)
        .unify()
        .or(signed)
        .unify()
        .or(bundle)
        .unify()
        .boxed()
}

fn message_routes(app: &App) -> BoxedFilter<(Response,)> {
    let a = app;
    // POST /messages/<regId>
    let send = warp::path!("messages" / u64)
        .and(warp::post())
        .and(with_app(a))
        .and(auth(a))
        .and(idempotency_key())
        .and(body(a))
        .then(messages::send)
        .map(reply);
    // GET /messages/<regId>
    let list = warp::path!("messages" / u64)
        .and(warp::get())
        .and(with_app(a))
        .and(auth(a))
        .and(raw_query())
        .then(messages::list)
        .map(reply);
    // DELETE /messages/<regId>
    let delete = warp::path!("messages" / u64)
        .and(warp::delete())
        .and(with_app(a))
        .and(auth(a))
        .and(body(a))
        .then(messages::delete)
        .map(reply);
    // GET /messages/<regId>/ws
    let live = warp::path!("messages" / u64 / "ws")
        .and(warp::get())
        .and(crate::cors::websocket_origin(&a.cors))
        .and(with_app(a))
        .and(auth_ws(a))
        .and(ws_upgrade::ws())
        .then(ws::upgrade)
        .map(reply);
    send.or(list)
        .unify()
        .or(delete)
        .unify()
        .or(live)
        .unify()
        .boxed()
}

/// The multi-device routes.
fn v2_routes(app: &App) -> BoxedFilter<(Response,)> {
    let a = app;
    // POST /v2/devices
    let link = warp::path!("v2" / "devices")
        .and(warp::post())
        .and(with_app(a))
        .and(auth(a))
        .and(body(a))
        .then(devices::link)
        .map(reply);
    // GET /v2/devices
    let list = warp::path!("v2" / "devices")
        .and(warp::get())
        .and(with_app(a))
        .and(auth(a))
        .then(devices::list)
        .map(reply);
    // DELETE /v2/devices/<deviceId>
    let unlink = warp::path!("v2" / "devices" / u64)
        .and(warp::delete())
        .and(with_app(a))
        .and(auth(a))
        .then(devices::unlink)
        .map(reply);
    // GET /v2/prekeybundle/<username>/<regId>
    let bundles = warp::path!("v2" / "prekeybundle" / String / u64)
        .and(warp::get())
        .and(with_app(a))
        .and(auth(a))
        .then(keys::bundles)
        .map(reply);
    // POST /v2/messages/<regId>
    let send = warp::path!("v2" / "messages" / u64)
        .and(warp::post())
        .and(with_app(a))
        .and(auth(a))
        .and(idempotency_key())
        .and(body(a))
        .then(messages::send_all)
        .map(reply);
    link.or(list)
        .unify()
        .or(unlink)
        .unify()
        .or(bundles)
        .unify()
        .or(send)
        .unify()
        .boxed()
}

/// The TUS routes under `/attachments` (after the CORS preflight, which answers a browser's
/// OPTIONS first). Their every answer, errors included, carries `Tus-Resumable`.
fn attachment_routes(app: &App) -> BoxedFilter<(Response,)> {
    let a = app;
    let headers = || warp::header::headers_cloned();
    // OPTIONS /attachments
    let options = warp::path::end()
        .and(warp::options())
        .and(with_app(a))
        .then(attachments::options)
        .map(reply);
    // POST /attachments
    let create = warp::path::end()
        .and(warp::post())
        .and(with_app(a))
        .and(auth(a))
        .and(headers())
        .and(body(a))
        .then(attachments::create)
        .map(reply);
    let id = || warp::path::param::<String>().and(warp::path::end());
    // OPTIONS /attachments/<id>
    let options_id = id()
        .and(warp::options())
        .and(with_app(a))
        .then(|_: String, app: App| attachments::options(app))
        .map(reply);
    // HEAD /attachments/<id>
    let head = id()
        .and(warp::head())
        .and(with_app(a))
        .and(auth(a))
        .and(headers())
        .then(|id, app, caller, h| attachments::head(app, caller, id, h))
        .map(reply);
    // PATCH /attachments/<id>
    let patch = id()
        .and(warp::patch())
        .and(with_app(a))
        .and(auth(a))
        .and(headers())
        .and(body(a))
        .then(|id, app, caller, h, body| attachments::patch(app, caller, id, h, body))
        .map(reply);
    // DELETE /attachments/<id>
    let delete = id()
        .and(warp::delete())
        .and(with_app(a))
        .and(auth(a))
        .and(headers())
        .then(|id, app, caller, h| attachments::delete(app, caller, id, h))
        .map(reply);
    // GET /attachments/<id>
    let download = id()
        .and(warp::get())
        .and(with_app(a))
        .and(auth(a))
        .and(headers())
        .then(|id, app, caller, h| attachments::download(app, caller, id, h))
        .map(reply);
    let routes = options
        .or(create)
        .unify()
        .or(options_id)
        .unify()
        .or(head)
        .unify()
        .or(patch)
        .unify()
        .or(delete)
        .unify()
        .or(download)
        .unify()
        .recover(recover)
        .unify()
        .map(|mut res: Response| {
            res.headers_mut()
                .insert("tus-resumable", HeaderValue::from_static("1.0.0"));
            res
        });
    warp::path("attachments").and(routes).boxed()
}

/// Turns every rejection into the one JSON error shape.
async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    let error = if rejection.is_not_found() {
        ApiError::NotFound
    } else if let Some(e) = rejection.find::<ApiError>() {
        e.clone()
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::MethodNotAllowed
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::PayloadTooLarge
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        ApiError::LengthRequired
    } else if rejection
        .find::<warp::reject::UnsupportedMediaType>()
        .is_some()
    {
        ApiError::UnsupportedMediaType
    } else if rejection.find::<warp::reject::InvalidHeader>().is_some()
        || rejection.find::<warp::reject::MissingHeader>().is_some()
        || rejection.find::<warp::reject::InvalidQuery>().is_some()
        || rejection
            .find::<warp::ws::MissingConnectionUpgrade>()
            .is_some()
    {
        ApiError::field("request", "A header or the query string is missing or invalid (WebSocket routes need an upgrade request).")
    } else {
        ApiError::Internal(format!("unhandled rejection: {rejection:?}"))
    };
    Ok(error.into_response())
}
