//! Everything the API suite shares: the server in-process (`server`), the built binary
//! (`process`), WebSockets (`ws`), key material and device calls (`keys`), assertions on answers
//! (`assert`) and the steps operations and fault tests share (`traffic`).

mod assert;
mod keys;
mod process;
mod server;
mod traffic;
mod ws;

pub use assert::*;
pub use keys::*;
pub use process::*;
pub use server::*;
pub use traffic::*;
pub use ws::*;
