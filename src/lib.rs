//! signal-server: a self-hosted server for the Signal protocol.
//!
//! Map of the crate:
//! - `config`: the command line and environment (`Config`, operator `Command`s).
//! - `admin`: operator commands, over the admin socket of a running server or in-process.
//! - `server`: `run(listener, app, shutdown)`, the data-dir lock, background sweeps.
//! - `datadir`: the data dir's modes, the database check and owner switch of operator commands.
//! - `reserve`: the disk reserve in the data dir, given back when a full disk stops the server.
//! - `net`: the accept loop (HTTP/1.1): connection caps (all, per client address), header-read
//!   and idle timeouts, shutdown deadline.
//! - `app`: the shared state handed to every handler.
//! - `routes`: every route, and rejections turned into JSON errors; `access`: the access log.
//! - `handlers`: one module per resource (users, devices, keys, messages, ws, attachments).
//! - `body`, `validate`, `requests`: reading bodies and parsing them into typed requests.
//! - `idempotency`: the `Idempotency-Key` of sends, and keyed sends in flight here.
//! - `models`: domain records and the wire shapes of responses.
//! - `error`: `ApiError`, the one error type, and its JSON shape.
//! - `auth`: JWTs (the account's, or bound to one device) and the token check; `password`:
//!   PBKDF2 hashing and strength rules.
//! - `crypto`: base64, key shapes, XEdDSA verification.
//! - `ratelimit`, `hub` (live WebSocket delivery, and closing sockets with a reason), `mail`
//!   (password-reset mail),
//!   `metrics` (Prometheus text on its own address).
//! - `storage`: the two stores (sled, PostgreSQL) behind one set of verbs; nothing else knows
//!   either.
//! - `attachments`: encrypted blobs over TUS: the blob stores (a directory, S3), writing a
//!   body under an upload's lease, the sweep of what expired.
//! - `route_table`: every route template with its methods (metrics labels, CORS preflights);
//!   `cors`: which browser origins may call the API, and the headers that tell them.
//! - `client` (feature `client`): a typed client for the API, for examples, load and tests.

pub mod access;
pub mod admin;
pub mod app;
pub mod attachments;
pub mod auth;
pub mod body;
#[cfg(feature = "client")]
pub mod client;
pub mod config;
pub mod cors;
pub mod crypto;
pub mod datadir;
pub mod error;
pub mod failure;
pub mod handlers;
pub mod hub;
pub mod idempotency;
pub mod mail;
pub mod metrics;
pub mod models;
pub mod net;
pub mod password;
pub mod principals;
pub mod ratelimit;
pub mod requests;
pub mod reserve;
pub mod round_trips;
pub mod route_table;
pub mod routes;
pub mod server;
pub mod storage;
pub mod validate;

pub use app::App;
pub use config::Config;
pub use server::run;
