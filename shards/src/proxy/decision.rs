//! The proxy's decisions as plain functions: what a failed attempt means for the backend's health,
//! whether it is retried, and which status the client gets. No IO, no time: table-tested below.

use http::Method;

use crate::balance::outlier::Failure;
use crate::upstream::connector::ExchangeFailure;
use crate::upstream::RetryBudget;

/// Why an attempt ended before any response byte reached the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptFailure {
    Exchange(ExchangeFailure),
    /// No response headers within `timeouts.response_headers_ms`.
    Timeout,
}

/// How a request ended, for logs, counters and health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Responded(u16),
    ClientGone,
    /// The stream was reset towards the client (after its response started, or mid-upload).
    Reset,
    /// The upload crossed `max_request_body_bytes`; the backend exchange was cancelled and the
    /// request task answers `413` (or resets, if the response had started).
    BodyTooLarge,
}

impl Outcome {
    /// The access log's word for it.
    pub fn describe(self) -> &'static str {
        match self {
            Outcome::Responded(_) => "complete",
            Outcome::ClientGone => "client_gone",
            Outcome::Reset => "reset",
            Outcome::BodyTooLarge => "body_too_large",
        }
    }
}

/// A response the proxy writes itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    pub message: &'static str,
    /// `retry-after` seconds, for a failure the client should retry soon (RFC 9110 §10.2.3).
    pub retry_after: Option<&'static str>,
}

impl LocalReply {
    const fn new(status: u16, message: &'static str) -> Self {
        LocalReply {
            status,
            message,
            retry_after: None,
        }
    }
}

pub const NO_ROUTE: LocalReply = LocalReply::new(404, "no route for this path");
pub const REQUEST_TIMED_OUT: LocalReply = LocalReply::new(504, "request timed out");

/// The reply when the balancer has no backend to offer.
pub fn no_backend(tried_any: bool) -> LocalReply {
    if tried_any {
        // Every backend was tried and failed: the last failure's reply, in effect.
        LocalReply::new(502, "backend unreachable")
    } else {
        LocalReply {
            status: 503,
            message: "no healthy backend",
            retry_after: Some("1"),
        }
    }
}

/// The reply for an attempt failure that is not retried.
pub fn failure_reply(failure: AttemptFailure) -> LocalReply {
    match failure {
        AttemptFailure::Exchange(ExchangeFailure::Connect) => {
            LocalReply::new(502, "backend unreachable")
        }
        AttemptFailure::Exchange(ExchangeFailure::Refused | ExchangeFailure::Broken) => {
            LocalReply::new(502, "backend failed")
        }
        AttemptFailure::Timeout => LocalReply::new(504, "backend timed out"),
    }
}

/// What an attempt failure tells outlier detection about the backend.
pub fn failure_health(failure: AttemptFailure) -> Failure {
    match failure {
        AttemptFailure::Exchange(ExchangeFailure::Connect) => Failure::Connect,
        AttemptFailure::Exchange(ExchangeFailure::Refused | ExchangeFailure::Broken)
        | AttemptFailure::Timeout => Failure::Reset,
    }
}

/// What a finished request tells outlier detection (`None`: a success).
pub fn outcome_health(outcome: Outcome) -> Option<Failure> {
    match outcome {
        Outcome::Responded(status) if status >= 500 => Some(Failure::ServerError),
        Outcome::Reset => Some(Failure::Reset),
        Outcome::Responded(_) | Outcome::ClientGone | Outcome::BodyTooLarge => None,
    }
}

/// What is known about the request when an attempt fails.
#[derive(Debug, Clone, Copy)]
pub struct RetryFacts<'a> {
    pub method: &'a Method,
    /// The client sends a body (or trailers).
    pub has_body: bool,
    /// Some of the body was already taken from the client: it was not kept, so it cannot be
    /// sent again.
    pub body_started: bool,
    /// Attempts made so far, the failed one included.
    pub attempts: usize,
    /// `retries` of the upstream: attempts allowed beyond the first.
    pub retries: u32,
}

/// Whether the failed attempt may be made again: the backend never processed it, or it is an
/// idempotent request without a body that broke before an answer (RFC 9110 §9.2.2: a repeat has
/// the same effect as one request); never once body bytes are gone, never beyond `retries`.
pub fn retry_permitted(failure: AttemptFailure, facts: &RetryFacts<'_>) -> bool {
    let unprocessed = matches!(
        failure,
        AttemptFailure::Exchange(ExchangeFailure::Connect | ExchangeFailure::Refused)
    );
    let replayable_break = failure == AttemptFailure::Exchange(ExchangeFailure::Broken)
        && !facts.has_body
        && is_idempotent(facts.method);
    (unprocessed || replayable_break)
        && !facts.body_started
        && facts.attempts <= facts.retries as usize
}

/// Retry, or reply: [`retry_permitted`], then a token from the budget.
pub fn after_failure(
    failure: AttemptFailure,
    facts: &RetryFacts<'_>,
    budget: &RetryBudget,
) -> Option<LocalReply> {
    if retry_permitted(failure, facts) && budget.try_spend() {
        None
    } else {
        Some(failure_reply(failure))
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use AttemptFailure::{Exchange, Timeout};
    use ExchangeFailure::{Broken, Connect, Refused};

    fn facts(
        method: &Method,
        has_body: bool,
        body_started: bool,
        attempts: usize,
    ) -> RetryFacts<'_> {
        RetryFacts {
            method,
            has_body,
            body_started,
            attempts,
            retries: 2,
        }
    }

    #[test]
    fn retry_rules() {
        let get = Method::GET;
        let post = Method::POST;
        let put = Method::PUT;
        // (failure, method, has_body, body_started, attempts) -> retried
        let table: [(AttemptFailure, &Method, bool, bool, usize, bool); 14] = [
            (Exchange(Connect), &get, false, false, 1, true),
            (Exchange(Connect), &post, true, false, 1, true),
            (Exchange(Refused), &post, true, false, 2, true),
            (Exchange(Refused), &post, true, false, 3, false), // beyond retries = 2
            (Exchange(Connect), &post, true, true, 1, false),  // body bytes already gone
            (Exchange(Broken), &get, false, false, 1, true),   // idempotent, no body
            (Exchange(Broken), &put, false, false, 1, true),
            (Exchange(Broken), &put, true, false, 1, false), // has a body
            (Exchange(Broken), &post, false, false, 1, false), // not idempotent
            (Exchange(Broken), &Method::DELETE, false, false, 2, true),
            (Exchange(Broken), &Method::PATCH, false, false, 1, false),
            (Timeout, &get, false, false, 1, false), // may be processing still
            (Timeout, &post, true, false, 1, false),
            (Exchange(Broken), &get, false, false, 3, false),
        ];
        for (failure, method, has_body, started, attempts, expected) in table {
            let facts = facts(method, has_body, started, attempts);
            assert_eq!(
                retry_permitted(failure, &facts),
                expected,
                "{failure:?} {method} body={has_body} started={started} attempts={attempts}"
            );
        }
    }

    #[test]
    fn every_failure_maps_to_its_status() {
        let table = [
            (
                Exchange(Connect),
                502,
                "backend unreachable",
                Failure::Connect,
            ),
            (Exchange(Refused), 502, "backend failed", Failure::Reset),
            (Exchange(Broken), 502, "backend failed", Failure::Reset),
            (Timeout, 504, "backend timed out", Failure::Reset),
        ];
        for (failure, status, message, health) in table {
            let reply = failure_reply(failure);
            assert_eq!(
                (reply.status, reply.message),
                (status, message),
                "{failure:?}"
            );
            assert_eq!(reply.retry_after, None);
            assert_eq!(failure_health(failure), health);
        }
    }

    #[test]
    fn no_backend_is_503_with_retry_after_until_one_was_tried() {
        assert_eq!(
            no_backend(false),
            LocalReply {
                status: 503,
                message: "no healthy backend",
                retry_after: Some("1")
            }
        );
        let after_tries = no_backend(true);
        assert_eq!((after_tries.status, after_tries.retry_after), (502, None));
        assert_eq!(NO_ROUTE.status, 404);
        assert_eq!(REQUEST_TIMED_OUT.status, 504);
    }

    #[test]
    fn outcomes_feed_outlier_detection() {
        assert_eq!(outcome_health(Outcome::Responded(200)), None);
        assert_eq!(outcome_health(Outcome::Responded(404)), None);
        assert_eq!(
            outcome_health(Outcome::Responded(503)),
            Some(Failure::ServerError)
        );
        assert_eq!(outcome_health(Outcome::Reset), Some(Failure::Reset));
        assert_eq!(outcome_health(Outcome::ClientGone), None);
    }

    #[test]
    fn the_budget_bounds_retries_the_rules_allow() {
        let budget = RetryBudget::new(0.0);
        let get = Method::GET;
        let facts = facts(&get, false, false, 1);
        // The reserve allows 10 retries with no request earning tokens; then every failure is
        // answered.
        let retried = (0..20)
            .filter(|_| after_failure(Exchange(Connect), &facts, &budget).is_none())
            .count();
        assert_eq!(retried, 10);
        assert_eq!(
            after_failure(Exchange(Connect), &facts, &budget),
            Some(failure_reply(Exchange(Connect)))
        );
        // A failure the rules refuse spends no token.
        let budget = RetryBudget::new(0.0);
        assert!(after_failure(Timeout, &facts, &budget).is_some());
        assert!(after_failure(Exchange(Connect), &facts, &budget).is_none());
    }
}
