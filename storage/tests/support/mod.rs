//! Shared by the storage tests: the model lives in `cachet_storage::testing`.
#![allow(dead_code, unused_imports)]

pub use cachet_storage::testing::{Model, error_name, int};
