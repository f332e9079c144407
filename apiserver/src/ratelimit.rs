//! Rate limits. A token bucket per API key (rate `rps`, capacity `burst`) for authenticated
//! requests. Per client address: a bucket for requests without a token (signed downloads,
//! whose signature is checked before they take from it) and one for failed authentications,
//! past which the address gets 429 for any token for a while, so keys cannot be guessed
//! online. Every answer to an authenticated request carries OpenAI's `x-ratelimit-*`
//! headers; over a limit it is a 429 with `Retry-After`.
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::auth::Caller;
use crate::config::ApiKey;
use crate::error::ApiError;
use crate::state::AppState;

type Bucket = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;
type Keyed = RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock>;

pub const LIMIT_HEADER: &str = "x-ratelimit-limit-requests";
pub const REMAINING_HEADER: &str = "x-ratelimit-remaining-requests";
pub const RESET_HEADER: &str = "x-ratelimit-reset-requests";
/// Addresses tracked at most; past it the oldest state is dropped (an attacker with many
/// addresses could otherwise grow it without end).
const MAX_TRACKED: usize = 100_000;

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
    anonymous: Keyed,
    failures: Keyed,
    /// Addresses over their failed-authentication budget, and until when.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

impl RateLimits {
    pub fn new(keys: &[ApiKey], anonymous: Quota, failures: Quota) -> Self {
        RateLimits {
            per_key: keys.iter().map(|k| bucket(quota(k.rps, k.burst))).collect(),
            anonymous: RateLimiter::keyed(anonymous),
            failures: RateLimiter::keyed(failures),
            blocked: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token from the key's bucket.
    pub fn check(&self, key: usize) -> Decision {
        let Some(bucket) = self.per_key.get(key) else {
            return Decision::Denied {
                limit: 0,
                retry_after: Duration::from_secs(1),
            };
        };
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

    /// Takes one token from the address's bucket for requests without a token.
    pub fn check_anonymous(&self, addr: IpAddr) -> Result<(), Duration> {
        self.anonymous
            .check_key(&addr)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// How long the address must wait before it may try a token again, if it must.
    pub fn blocked(&self, addr: IpAddr) -> Option<Duration> {
        let blocked = self.blocked.lock().expect("lock");
        let until = blocked.get(&addr)?;
        until.checked_duration_since(Instant::now())
    }

    /// Counts a failed authentication of the address; past its budget, the time it must
    /// wait (and it is blocked meanwhile).
    pub fn failed(&self, addr: IpAddr) -> Option<Duration> {
        let wait = self
            .failures
            .check_key(&addr)
            .err()?
            .wait_time_from(DefaultClock::default().now())
            .max(Duration::from_secs(1));
        let mut blocked = self.blocked.lock().expect("lock");
        if blocked.len() >= MAX_TRACKED {
            blocked.clear();
        }
        blocked.insert(addr, Instant::now() + wait);
        Some(wait)
    }

    /// Forgets addresses whose buckets are full again (run now and then).
    pub fn housekeeping(&self) {
        for keyed in [&self.anonymous, &self.failures] {
            keyed.retain_recent();
            keyed.shrink_to_fit();
        }
        let now = Instant::now();
        self.blocked
            .lock()
            .expect("lock")
            .retain(|_, until| *until > now);
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

/// Middleware, inside authentication: an authenticated request takes from its key's bucket.
/// Requests without a token are limited where they are served (signed downloads).
pub async fn limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(caller) = req.extensions().get::<Caller>().cloned() else {
        return next.run(req).await;
    };
    match state.rate_limits.check(caller.key) {
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
            state.metrics.rate_limited(&caller.tenant);
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

    fn one() -> Quota {
        quota(1.0, NonZeroU32::new(1).unwrap())
    }

    fn limits(spec: &str) -> RateLimits {
        let keys = parse_api_keys(spec).unwrap();
        RateLimits::new(&keys, one(), quota(0.01, NonZeroU32::new(3).unwrap()))
    }

    #[test]
    fn a_key_may_spend_its_burst_then_is_told_when_to_retry() {
        let l = limits("t:acme:1:3");
        for left in [2, 1, 0] {
            match l.check(0) {
                Decision::Allowed {
                    limit, remaining, ..
                } => {
                    assert_eq!(limit, 3);
                    assert_eq!(remaining, left);
                }
                d => panic!("expected allowed, got {d:?}"),
            }
        }
        match l.check(0) {
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
        assert!(matches!(l.check(0), Decision::Allowed { .. }));
        assert!(matches!(l.check(0), Decision::Denied { .. }));
        assert!(matches!(l.check(1), Decision::Allowed { .. }));
    }

    #[test]
    fn failures_past_the_budget_block_that_address_only() {
        let l = limits("a:acme:1:1");
        let (bad, good): (IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..3 {
            assert_eq!(l.failed(bad), None);
        }
        assert!(l.blocked(bad).is_none());
        let wait = l.failed(bad).expect("over the budget");
        assert!(wait >= Duration::from_secs(1));
        assert!(l.blocked(bad).is_some());
        assert!(l.blocked(good).is_none());
        assert_eq!(l.failed(good), None);
    }

    #[test]
    fn addresses_without_a_token_have_buckets_of_their_own() {
        let l = limits("a:acme:1:1");
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(l.check_anonymous(a).is_ok());
        assert!(l.check_anonymous(a).is_err());
        assert!(l.check_anonymous(b).is_ok());
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
