//! A token bucket per API key (rate `rps`, capacity `burst`), and one shared by requests
//! without a key. Every answer carries OpenAI's `x-ratelimit-*` headers; over the limit it
//! is a 429 with `Retry-After`.
use std::num::NonZeroU32;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::auth::Caller;
use crate::config::ApiKey;
use crate::error::ApiError;
use crate::state::AppState;

type Bucket = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

pub const LIMIT_HEADER: &str = "x-ratelimit-limit-requests";
pub const REMAINING_HEADER: &str = "x-ratelimit-remaining-requests";
pub const RESET_HEADER: &str = "x-ratelimit-reset-requests";

/// What the bucket said about one request.
#[derive(Debug, PartialEq)]
pub enum Decision {
    Allowed {
        limit: u32,
        remaining: u32,
        /// Until the bucket is full again.
        reset: Duration,
    },
    Denied {
        limit: u32,
        retry_after: Duration,
    },
}

pub fn quota(rps: f64, burst: NonZeroU32) -> Quota {
    let period = Duration::from_secs_f64(1.0 / rps).max(Duration::from_nanos(1));
    Quota::with_period(period)
        .expect("period is above zero")
        .allow_burst(burst)
}

fn bucket(quota: Quota) -> Bucket {
    RateLimiter::direct(quota).with_middleware::<StateInformationMiddleware>()
}

pub struct RateLimits {
    per_key: Vec<Bucket>,
    anonymous: Bucket,
}

impl RateLimits {
    pub fn new(keys: &[ApiKey], anonymous: Quota) -> Self {
        RateLimits {
            per_key: keys.iter().map(|k| bucket(quota(k.rps, k.burst))).collect(),
            anonymous: bucket(anonymous),
        }
    }

    /// Takes one token from the caller's bucket (the shared one without a key).
    pub fn check(&self, key: Option<usize>) -> Decision {
        let bucket = key
            .and_then(|k| self.per_key.get(k))
            .unwrap_or(&self.anonymous);
        match bucket.check() {
            Ok(snapshot) => {
                let quota = snapshot.quota();
                let limit = quota.burst_size().get();
                let remaining = snapshot.remaining_burst_capacity();
                Decision::Allowed {
                    limit,
                    remaining,
                    reset: quota.replenish_interval() * (limit - remaining.min(limit)),
                }
            }
            Err(not_until) => Decision::Denied {
                limit: not_until.quota().burst_size().get(),
                retry_after: not_until.wait_time_from(bucket.clock().now()),
            },
        }
    }
}

/// `1.5s`, `20ms`: the format of OpenAI's reset headers.
pub fn format_reset(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        let s = format!("{:.3}", d.as_secs_f64());
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Whole seconds, rounded up, at least 1: what `Retry-After` takes.
pub fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

fn set(headers: &mut HeaderMap, name: &'static str, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(name, v);
    }
}

/// Middleware, inside authentication (it needs the caller's key).
pub async fn limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let caller = req.extensions().get::<Caller>().cloned();
    match state.rate_limits.check(caller.as_ref().map(|c| c.key)) {
        Decision::Allowed {
            limit,
            remaining,
            reset,
        } => {
            let mut response = next.run(req).await;
            let headers = response.headers_mut();
            set(headers, LIMIT_HEADER, limit.to_string());
            set(headers, REMAINING_HEADER, remaining.to_string());
            set(headers, RESET_HEADER, format_reset(reset));
            response
        }
        Decision::Denied { limit, retry_after } => {
            let tenant = caller.map(|c| c.tenant).unwrap_or_else(|| "-".into());
            state.metrics.rate_limited(&tenant);
            let mut response = ApiError::RateLimited {
                retry_after_secs: retry_after_secs(retry_after),
            }
            .into_response();
            let headers = response.headers_mut();
            set(headers, LIMIT_HEADER, limit.to_string());
            set(headers, REMAINING_HEADER, "0".into());
            set(headers, RESET_HEADER, format_reset(retry_after));
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_api_keys;

    fn limits(spec: &str) -> RateLimits {
        let keys = parse_api_keys(spec).unwrap();
        RateLimits::new(&keys, quota(1.0, NonZeroU32::new(1).unwrap()))
    }

    #[test]
    fn a_key_may_spend_its_burst_then_is_told_when_to_retry() {
        let l = limits("t:acme:1:3");
        for left in [2, 1, 0] {
            match l.check(Some(0)) {
                Decision::Allowed {
                    limit, remaining, ..
                } => {
                    assert_eq!(limit, 3);
                    assert_eq!(remaining, left);
                }
                d => panic!("expected allowed, got {d:?}"),
            }
        }
        match l.check(Some(0)) {
            Decision::Denied { limit, retry_after } => {
                assert_eq!(limit, 3);
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1));
                assert_eq!(retry_after_secs(retry_after), 1);
            }
            d => panic!("expected denied, got {d:?}"),
        }
    }

    #[test]
    fn keys_have_separate_buckets() {
        let l = limits("a:acme:0.01:1,b:acme:0.01:1");
        assert!(matches!(l.check(Some(0)), Decision::Allowed { .. }));
        assert!(matches!(l.check(Some(0)), Decision::Denied { .. }));
        assert!(matches!(l.check(Some(1)), Decision::Allowed { .. }));
    }

    #[test]
    fn a_slow_rate_asks_for_a_long_wait() {
        let l = limits("a:acme:0.1:1");
        l.check(Some(0));
        match l.check(Some(0)) {
            Decision::Denied { retry_after, .. } => {
                assert_eq!(retry_after_secs(retry_after), 10);
            }
            d => panic!("expected denied, got {d:?}"),
        }
    }

    #[test]
    fn resets_are_written_like_openai_does() {
        assert_eq!(format_reset(Duration::from_millis(20)), "20ms");
        assert_eq!(format_reset(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_reset(Duration::from_secs(6)), "6s");
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
    }
}
