//! Everything the API suite shares: the server in-process (`server`), the built binary
//! (`process`), WebSockets (`ws`) and the steps operations and fault tests share (`traffic`).

mod process;
mod server;
mod traffic;
mod ws;

pub use process::*;
pub use server::*;
pub use traffic::*;
pub use ws::*;
