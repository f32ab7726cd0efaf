//! The API suite: one test binary, one module per area, every helper in `helpers`. Each test
//! starts a real server (in-process on `127.0.0.1:0`, or the built binary) with its own data dir.

mod helpers;

mod abuse;
mod accounts;
mod attachments;
mod bundle;
mod callers;
mod client;
mod cluster;
mod connections;
mod cors;
mod devices;
mod faults;
mod first_contact;
mod hostile;
#[cfg(feature = "interop")]
mod interop;
mod keys;
mod limits;
mod linked;
mod messages;
mod ops;
mod outage;
mod process;
mod resumable;
mod revocation;
mod routing;
mod stress;
mod websocket;
