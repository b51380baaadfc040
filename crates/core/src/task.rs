//! Blocking work (file reading, hashing, archive extraction) run off the
//! async runtime's threads.

use std::fmt::Display;

/// Runs `work` on the blocking pool; its error, or the task's failure
/// (a panic, a runtime shutting down), as one message.
pub async fn blocking<T, E, F>(work: F) -> Result<T, String>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: Display + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::blocking;

    #[tokio::test]
    async fn blocking_returns_the_value_or_the_message() {
        let ok: Result<u32, String> = blocking(|| Ok::<_, std::io::Error>(7)).await;
        assert_eq!(ok.unwrap(), 7);
        let e = blocking(|| Err::<u32, _>(std::io::Error::other("no such stemcell"))).await;
        assert_eq!(e.unwrap_err(), "no such stemcell");
    }
}
