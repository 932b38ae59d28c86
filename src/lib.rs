//! Frenly: a security server for AI-agent task APIs.
//!
//! The modules mirror the layers of the security guide, outermost first:
//! [`network`] (1), [`apisec`] (2), [`authn`] (3), [`authz`] (4), [`data`]
//! (5), [`monitoring`] (6), then the [`app`] they protect, or — in
//! [`gateway`] mode — an upstream service. [`server`] owns the listener and
//! the stack that puts the layers in order; [`state`] is where shared
//! security state lives (in-process or Redis); [`config`] is parsed
//! once; [`http`] holds the one error shape. See ARCHITECTURE.md.

pub mod apisec;
pub mod app;
pub mod authn;
pub mod authz;
pub mod cli;
pub mod config;
pub mod data;
pub mod gateway;
pub mod http;
pub mod monitoring;
pub mod network;
pub mod server;
pub mod state;
pub mod store;
