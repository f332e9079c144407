//! The OpenAI-style REST frontend of the code interpreter: `/v1/runs` creates CodeRuns and
//! reads them back from a reflector cache and object storage, `/v1/files` stores inputs and
//! serves outputs (with signed URLs), plus health, metrics, OpenAPI and an admin page.
//!
//! Layout: [`app`] assembles the routes of [`runs`], [`files`], [`containers`], [`mcp`], [`health`],
//! [`admin`] and [`openapi`] under the middleware ([`auth`], [`ratelimit`], [`metrics`]); [`serve`] starts
//! it all from the [`config`]; [`state`] is what handlers share; [`quota`] and [`sweeper`] keep
//! each tenant's storage within its quota and retention.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod config;
pub mod containers;
pub mod error;
pub mod files;
pub mod health;
pub mod mcp;
pub mod metrics;
pub mod openapi;
pub mod pagination;
pub mod quota;
pub mod ratelimit;
pub mod run_cache;
pub mod runs;
pub mod serve;
pub mod signing;
pub mod state;
pub mod sweeper;
