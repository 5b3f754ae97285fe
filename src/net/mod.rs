//! Serving: the public HTTPS (HTTP/1.1, HTTP/2) and HTTP/3 listeners, the
//! federation listener, the admin API, and the one error map (`error`).
//! What they share is [`crate::app::App`]; [`crate::server`] builds it and
//! starts them.

pub mod admin;
pub mod admit;
pub mod conn;
pub mod console;
pub mod error;
pub mod events;
pub mod federation;
pub mod h3;
pub mod https;
pub mod openapi;
pub mod resolve;
