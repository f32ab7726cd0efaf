//! The built binary as an operator runs it, through the one spawn harness
//! (`crate::helpers::Binary`, `run`): its command line and environment (`config`), its
//! lifecycle and graceful shutdown (`shutdown`), and durability across `kill -9` (`crash`).

mod config;
mod crash;
mod shutdown;
