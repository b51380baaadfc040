//! Our own waiter: adaptive polling (first poll at once, then 2 s backing off
//! by half each time up to 15 s, with a little jitter), an overall limit per
//! wait, `tokio::time::sleep` only. Transient errors of a poll (throttling and
//! 5xx that outlived the SDK's own retries) count as "not yet"; a terminal
//! state fails the wait at once.

use std::time::Duration;

use tokio::time::Instant;

use rand::Rng as _;

use crate::error::AwsError;

/// Default overall limit of one wait.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// What one poll found.
#[derive(Debug)]
pub enum Poll<T> {
    /// Done.
    Ready(T),
    /// Not yet; the state seen.
    Pending(String),
    /// Never will be; the state and reason.
    Failed(String),
}

/// Polling parameters.
#[derive(Debug, Clone, Copy)]
pub struct Waiter {
    /// Delay after the first poll.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    /// Overall limit.
    pub timeout: Duration,
}

impl Default for Waiter {
    fn default() -> Self {
        Waiter {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(15),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// How a finished wait went.
#[derive(Debug, Clone, Default)]
pub struct WaitStats {
    /// Polls made.
    pub polls: u32,
    /// Delays slept between them.
    pub delays: Vec<Duration>,
}

impl Waiter {
    /// A waiter with this overall limit.
    pub fn with_timeout(timeout: Duration) -> Waiter {
        Waiter {
            timeout,
            ..Waiter::default()
        }
    }

    /// The delay after `n` polls (n >= 1), without jitter.
    pub fn delay(&self, n: u32) -> Duration {
        let mut d = self.initial;
        for _ in 1..n {
            d = d.mul_f64(1.5);
            if d >= self.max {
                return self.max;
            }
        }
        d.min(self.max)
    }

    /// Poll `f` until it is ready, failed, or the limit passes. `what` and
    /// `region` name the wait in errors.
    pub async fn wait<T, F, Fut>(
        &self,
        what: &str,
        region: &str,
        mut f: F,
    ) -> Result<(T, WaitStats), AwsError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Poll<T>, AwsError>>,
    {
        let started = Instant::now();
        let mut stats = WaitStats::default();
        let mut last: String;
        loop {
            stats.polls += 1;
            match f().await {
                Ok(Poll::Ready(t)) => return Ok((t, stats)),
                Ok(Poll::Pending(s)) => last = s,
                Ok(Poll::Failed(s)) => {
                    return Err(AwsError::Failed {
                        what: what.to_string(),
                        region: region.to_string(),
                        state: s,
                    })
                }
                Err(e) if is_transient(&e) => last = e.to_string(),
                Err(e) => return Err(e),
            }
            let elapsed = started.elapsed();
            if elapsed >= self.timeout {
                return Err(AwsError::WaitTimeout {
                    what: what.to_string(),
                    region: region.to_string(),
                    after: self.timeout,
                    last,
                });
            }
            let base = self.delay(stats.polls);
            let jitter = rand::thread_rng().gen_range(0.9..1.1);
            let d = base.mul_f64(jitter).min(self.timeout - elapsed);
            tracing::debug!(what, region, delay = ?d, last = %last, "waiting");
            stats.delays.push(d);
            tokio::time::sleep(d).await;
        }
    }
}

/// Errors a poll may meet and survive: throttling, 5xx, timeouts, and the
/// eventual consistency of EC2 (a resource not visible yet).
pub fn is_transient(e: &AwsError) -> bool {
    match e {
        AwsError::Api { code, message, .. } => {
            let c = code.as_deref().unwrap_or("");
            matches!(
                c,
                "RequestLimitExceeded"
                    | "Throttling"
                    | "ThrottlingException"
                    | "Unavailable"
                    | "ServiceUnavailable"
                    | "InternalError"
                    | "InternalFailure"
                    | "InternalServerException"
            ) || c.is_empty()
                && (message.contains("dispatch failure")
                    || message.contains("timeout")
                    || message.contains("service error")
                    || message.contains("503")
                    || message.contains("500"))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_back_off_to_the_cap() {
        let w = Waiter::default();
        assert_eq!(w.delay(1), Duration::from_secs(2));
        assert_eq!(w.delay(2), Duration::from_secs(3));
        assert_eq!(w.delay(3), Duration::from_millis(4500));
        assert_eq!(w.delay(20), Duration::from_secs(15));
        let mut prev = Duration::ZERO;
        for n in 1..30 {
            assert!(w.delay(n) >= prev);
            prev = w.delay(n);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn times_out_naming_the_wait_and_last_state() {
        let w = Waiter {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(15),
            timeout: Duration::from_secs(60),
        };
        let r: Result<((), WaitStats), AwsError> = w
            .wait("instance i-1 running", "us-east-1", || async {
                Ok(Poll::Pending("pending".into()))
            })
            .await;
        let e = r.unwrap_err().to_string();
        assert!(e.contains("instance i-1 running"), "{e}");
        assert!(e.contains("us-east-1") && e.contains("pending"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_terminal_state_fails_at_once() {
        let w = Waiter::default();
        let mut n = 0;
        let r: Result<((), WaitStats), AwsError> = w
            .wait("image ami-1 available", "eu-west-1", || {
                n += 1;
                async { Ok(Poll::Failed("failed: bad disk".into())) }
            })
            .await;
        assert_eq!(n, 1);
        assert!(r.unwrap_err().to_string().contains("bad disk"));
    }
}
