//! The retry budget: retries limited to a share of requests, per shard and upstream, so that a
//! failing backend pool cannot be hit by a storm of retries (Envoy's retry budget, Finagle's
//! RetryBudget).

/// Limits retries to a share of requests, per shard and upstream: each request earns `ratio` of
/// a token, each retry spends one. A small reserve lets a quiet upstream still retry.
pub struct RetryBudget {
    ratio: f64,
    tokens: std::cell::Cell<f64>,
}

/// Retries allowed before any request earned tokens, and the most that can be saved up.
const RETRY_RESERVE: f64 = 10.0;
const RETRY_CEILING: f64 = 100.0;

impl RetryBudget {
    pub fn new(ratio: f64) -> Self {
        RetryBudget {
            ratio,
            tokens: std::cell::Cell::new(RETRY_RESERVE),
        }
    }

    pub fn on_request(&self) {
        self.tokens
            .set((self.tokens.get() + self.ratio).min(RETRY_CEILING));
    }

    pub fn try_spend(&self) -> bool {
        let tokens = self.tokens.get();
        if tokens >= 1.0 {
            self.tokens.set(tokens - 1.0);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RetryBudget;

    #[test]
    fn budget_allows_about_the_configured_share() {
        let budget = RetryBudget::new(0.2);
        let mut retries = 0;
        for _ in 0..1000 {
            budget.on_request();
            if budget.try_spend() {
                retries += 1;
            }
        }
        // 10 reserve tokens plus 20% of 1000 requests.
        assert!((200..=211).contains(&retries), "{retries}");
    }
}
