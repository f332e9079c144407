//! The OpenAI-style REST frontend of the code interpreter: `/v1/runs` creates CodeRuns and
//! reads them back from a reflector cache and object storage, `/v1/files` stores inputs and
//! serves outputs (with signed URLs), plus health, metrics, OpenAPI and an admin page.
#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod error;
pub mod finished;
pub mod metrics;
pub mod openapi;
pub mod pagination;
pub mod ratelimit;
pub mod routes;
pub mod run_cache;
pub mod run_object;
pub mod run_request;
pub mod serve;
pub mod signing;
pub mod state;
pub mod streams;
