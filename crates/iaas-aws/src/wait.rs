//! AWS's side of core's waiter ([`opsbake_core::wait`]): which EC2 errors a
//! poll survives, and the typed errors a wait ends with.

use std::time::Duration;

use opsbake_core::wait::WaitError;
pub use opsbake_core::wait::{Poll, WaitStats, Waiter, DEFAULT_TIMEOUT};

use crate::error::AwsError;

impl WaitError for AwsError {
    fn is_transient(&self) -> bool {
        is_transient(self)
    }

    fn failed(what: &str, scope: &str, state: String) -> Self {
        AwsError::Failed {
            what: what.to_string(),
            region: scope.to_string(),
            state,
        }
    }

    fn timed_out(what: &str, scope: &str, after: Duration, last: String) -> Self {
        AwsError::WaitTimeout {
            what: what.to_string(),
            region: scope.to_string(),
            after,
            last,
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
