//! The one waiter every builder uses for long-running cloud work (EC2
//! states, GCE zonal/global operations, ARM `Azure-AsyncOperation`s, vSphere
//! tasks): adaptive polling (first poll at once, then `initial` growing by
//! half each time up to `max`, with a little jitter), an overall limit per
//! wait, `tokio::time::sleep` only, and cancellation. Generic over the IaaS's
//! error through [`WaitError`]: a transient error of a poll (throttling, 5xx
//! that outlived the client's own retries) counts as "not yet"; a terminal
//! state fails the wait at once.

use std::time::Duration;

use rand::Rng as _;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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

/// What an IaaS error tells the waiter, and how the waiter makes one.
pub trait WaitError: Sized {
    /// Throttling, 5xx, a connection reset: poll again later.
    fn is_transient(&self) -> bool;

    /// The resource is gone (or not visible yet). The waiter does not use it
    /// itself; deleters and "wait until deleted" polls do.
    fn is_not_found(&self) -> bool {
        false
    }

    /// The wait `what` (in `scope`: region, zone, project, datacenter) met
    /// a terminal state.
    fn failed(what: &str, scope: &str, state: String) -> Self;

    /// The wait `what` passed its limit; `last` is the last state seen.
    fn timed_out(what: &str, scope: &str, after: Duration, last: String) -> Self;

    /// The wait was cancelled (Ctrl-C, `--fail-fast`).
    fn cancelled(what: &str, scope: &str) -> Self {
        Self::failed(what, scope, "cancelled".to_string())
    }
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
    /// `scope` name the wait in errors.
    pub async fn wait<T, E, F, Fut>(
        &self,
        what: &str,
        scope: &str,
        f: F,
    ) -> Result<(T, WaitStats), E>
    where
        E: WaitError + std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Poll<T>, E>>,
    {
        self.wait_cancellable(what, scope, None, f).await
    }

    /// [`Waiter::wait`], ending early with [`WaitError::cancelled`] when
    /// `cancel` fires (between polls; a poll in flight is finished first).
    pub async fn wait_cancellable<T, E, F, Fut>(
        &self,
        what: &str,
        scope: &str,
        cancel: Option<&CancellationToken>,
        mut f: F,
    ) -> Result<(T, WaitStats), E>
    where
        E: WaitError + std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Poll<T>, E>>,
    {
        let started = Instant::now();
        let mut stats = WaitStats::default();
        let mut last: String;
        loop {
            stats.polls += 1;
            match f().await {
                Ok(Poll::Ready(t)) => return Ok((t, stats)),
                Ok(Poll::Pending(s)) => last = s,
                Ok(Poll::Failed(s)) => return Err(E::failed(what, scope, s)),
                Err(e) if e.is_transient() => last = e.to_string(),
                Err(e) => return Err(e),
            }
            let elapsed = started.elapsed();
            if elapsed >= self.timeout {
                return Err(E::timed_out(what, scope, self.timeout, last));
            }
            let base = self.delay(stats.polls);
            let jitter = rand::thread_rng().gen_range(0.9..1.1);
            let d = base.mul_f64(jitter).min(self.timeout - elapsed);
            tracing::debug!(what, scope, delay = ?d, last = %last, "waiting");
            stats.delays.push(d);
            match cancel {
                Some(c) => {
                    tokio::select! {
                        _ = c.cancelled() => return Err(E::cancelled(what, scope)),
                        _ = tokio::time::sleep(d) => {}
                    }
                }
                None => tokio::time::sleep(d).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum TestError {
        Busy,
        Fatal,
        Failed(String),
        Timeout(String),
        Cancelled(String),
    }

    impl std::fmt::Display for TestError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{self:?}")
        }
    }

    impl WaitError for TestError {
        fn is_transient(&self) -> bool {
            *self == TestError::Busy
        }
        fn failed(what: &str, scope: &str, state: String) -> Self {
            TestError::Failed(format!("{what} in {scope}: {state}"))
        }
        fn timed_out(what: &str, scope: &str, after: Duration, last: String) -> Self {
            TestError::Timeout(format!("{what} in {scope} after {after:?}: {last}"))
        }
        fn cancelled(what: &str, scope: &str) -> Self {
            TestError::Cancelled(format!("{what} in {scope}"))
        }
    }

    #[test]
    fn delays_back_off_to_the_cap() {
        let w = Waiter::default();
        assert_eq!(w.delay(1), Duration::from_secs(2));
        assert_eq!(w.delay(2), Duration::from_secs(3));
        assert_eq!(w.delay(3), Duration::from_millis(4500));
        assert_eq!(w.delay(20), Duration::from_secs(15));
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_polled_through() {
        let w = Waiter::default();
        let mut n = 0;
        let r: Result<(u32, WaitStats), TestError> = w
            .wait("op-1 DONE", "zone-a", || {
                n += 1;
                let k = n;
                async move {
                    match k {
                        1 | 2 => Err(TestError::Busy),
                        3 => Ok(Poll::Pending("RUNNING".into())),
                        _ => Ok(Poll::Ready(k)),
                    }
                }
            })
            .await;
        let (v, stats) = r.unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(v, 4);
        assert_eq!(stats.polls, 4);
        assert_eq!(stats.delays.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fatal_error_or_terminal_state_ends_the_wait() {
        let w = Waiter::default();
        let r: Result<((), WaitStats), TestError> =
            w.wait("x", "s", || async { Err(TestError::Fatal) }).await;
        assert!(matches!(r, Err(TestError::Fatal)));
        let r: Result<((), WaitStats), TestError> = w
            .wait("image img-1 READY", "proj", || async {
                Ok(Poll::Failed("FAILED: bad disk".into()))
            })
            .await;
        assert!(
            matches!(&r, Err(TestError::Failed(m)) if m.contains("img-1") && m.contains("bad disk"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn times_out_naming_the_wait_and_last_state() {
        let w = Waiter::with_timeout(Duration::from_secs(60));
        let r: Result<((), WaitStats), TestError> = w
            .wait("vm-1 running", "dc1", || async {
                Ok(Poll::Pending("pending".into()))
            })
            .await;
        assert!(
            matches!(&r, Err(TestError::Timeout(m)) if m.contains("vm-1 running") && m.contains("dc1") && m.contains("pending"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_ends_the_wait_between_polls() {
        let w = Waiter::default();
        let c = CancellationToken::new();
        let c2 = c.clone();
        let mut n = 0;
        let r: Result<((), WaitStats), TestError> = w
            .wait_cancellable("op", "zone", Some(&c), || {
                n += 1;
                if n == 3 {
                    c2.cancel();
                }
                async { Ok(Poll::Pending("RUNNING".into())) }
            })
            .await;
        assert_eq!(n, 3);
        assert!(matches!(r, Err(TestError::Cancelled(_))));
    }
}
