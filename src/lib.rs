//! reconnect-operator: keeps SaaS integrations connected while their credentials change.
//!
//! The binary in `main.rs` is a thin shell over this library, so tests and examples drive
//! the same code the operator runs.

pub mod api;
pub mod check;
pub mod clock;
pub mod controller;
pub mod crd;
pub mod health;
pub(crate) mod leader;
pub mod memory;
pub mod metrics;
pub mod operator;
pub mod providers;
pub mod secret;
pub mod telemetry;
