//! The lightning-fleet dispatcher: the HTTP front door of the fleet.
//!
//! A request is authenticated ([`auth`]), its jobs validated into `ValidJob`s, admitted or
//! refused with 429 ([`submit`]), recorded in Redis and only then published to RabbitMQ with
//! confirms. Every error leaves through [`error::ApiError`], whose HTTP status comes from the
//! `fleet_core::ErrorCode` table.

pub mod app;
pub mod auth;
pub mod bulk_runs;
pub mod dead_letter_list;
pub mod dead_letters;
pub mod error;
pub mod extract;
pub mod http_metrics;
pub mod lanes;
pub mod lifecycle;
pub mod metrics;
pub mod openapi;
pub mod request_head;
pub mod routes;
pub mod server;
pub mod submit;
pub mod waiting;

pub use app::App;
pub use server::{DispatcherError, serve};
