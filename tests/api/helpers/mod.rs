//! Everything the API suite shares: the server in-process (`server`), the built binary
//! (`process`), WebSockets (`ws`), key
//! material and device calls (`keys`) and assertions on answers (`assert`).

mod assert;
mod keys;
mod process;
mod server;
mod ws;

pub use assert::*;
pub use keys::*;
pub use process::*;
pub use server::*;
pub use ws::*;
