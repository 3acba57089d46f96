//! The protocols cachetd speaks, one module each, over the same engine
//! commands. Each parses its frames, turns them into `storage::Command`s
//! and encodes the replies; limits, auth and shutdown come from `Shared`.

pub mod resp;
pub mod tarpc;
