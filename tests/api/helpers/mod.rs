//! Everything the API suite shares: the server in-process (`server`), the built binary
//! (`process`), WebSockets (`ws`), key material and device calls (`keys`), assertions on answers
//! (`assert`), raw TCP for hostile clients (`raw`), a proxy that drops connections mid-request
//! (`cut`), the steps operations and fault tests share (`traffic`) and the store the servers
//! use (`database`).

mod assert;
mod cut;
mod database;
mod keys;
mod process;
mod raw;
mod server;
mod traffic;
mod ws;

pub use assert::*;
pub use cut::*;
pub use database::*;
pub use keys::*;
pub use process::*;
pub use raw::*;
pub use server::*;
pub use traffic::*;
pub use ws::*;
