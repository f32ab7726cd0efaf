//! Everything the API suite shares: the server in-process (`server`), the built binary
//! (`process`) and WebSockets (`ws`).

mod process;
mod server;
mod ws;

pub use process::*;
pub use server::*;
pub use ws::*;
