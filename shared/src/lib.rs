//! The gateway library: everything that is not an entrypoint.

pub mod api;
pub mod auth;
pub mod background;
pub mod cache;
pub mod config;
pub mod edge;
pub mod error;
pub mod gateway;
pub mod http;
pub mod lambda;
pub mod limits;
pub mod providers;
pub mod secrets;
pub mod server;
pub mod store;
pub mod telemetry;
