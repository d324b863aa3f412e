//! Outbound HTTP to addresses users choose (webhook receivers, LoRA URLs), guarded against
//! server-side request forgery: schemes and hosts are checked on the URL and on every redirect
//! hop, and every address DNS gives is checked before a connection is made, so a public name
//! that resolves to a private address is refused as well as a private IP literal.

mod address;
mod client;
mod error;
mod policy;
mod resolver;

pub use address::is_public;
pub use client::{Download, EgressClient, EgressResponse};
pub use error::EgressError;
pub use policy::EgressPolicy;
