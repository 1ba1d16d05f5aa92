//! Retrying a remote call with backoff until a deadline, so that every wait has a bound.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio::time::Instant;

/// Why a retried call finally failed.
#[derive(Debug, thiserror::Error)]
pub enum RetryError<E: std::error::Error + 'static> {
    /// A failure that retrying cannot fix, or the last one before the deadline.
    #[error(transparent)]
    Failed(E),
    /// The deadline passed while still trying.
    #[error("{what}: no success within {}; last error: {last}", rounded(*budget))]
    OutOfTime {
        what: String,
        budget: Duration,
        last: String,
    },
}

/// A budget for people to read: a budget computed from a deadline is a hair under what was
/// meant (9.999998898s), so round it, to whole seconds from one second up.
pub fn rounded(budget: Duration) -> humantime::FormattedDuration {
    let shown = if budget >= Duration::from_secs(1) {
        Duration::from_secs(budget.as_secs_f64().round() as u64)
    } else {
        Duration::from_millis(budget.as_millis() as u64)
    };
    humantime::format_duration(shown)
}

/// The backoff every drover retry uses: short first, growing to `max_delay`, with jitter so
/// that a fleet acting at once does not retry in lockstep.
pub fn backoff(max_delay: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(max_delay)
        .with_jitter()
        .without_max_times()
}

/// Runs `op` until it succeeds, fails with an error `transient` rejects, or `deadline` passes.
pub async fn until<T, E, F, Fut>(
    what: &str,
    deadline: Instant,
    max_delay: Duration,
    transient: impl Fn(&E) -> bool,
    op: F,
) -> Result<T, RetryError<E>>
where
    E: std::error::Error + Display + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    let last = std::sync::Mutex::new(String::from("none yet"));
    let retried = op
        .retry(backoff(max_delay))
        .when(|e| transient(e) && Instant::now() < deadline)
        .notify(|err, wait| {
            tracing::warn!("{what} failed: {err}; retrying in {wait:.1?}");
            if let Ok(mut l) = last.lock() {
                *l = err.to_string();
            }
        });
    match tokio::time::timeout_at(deadline, retried).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(RetryError::Failed(e)),
        Err(_) => Err(RetryError::OutOfTime {
            what: what.to_string(),
            budget: deadline.saturating_duration_since(started),
            last: last.lock().map(|l| l.clone()).unwrap_or_default(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug, thiserror::Error)]
    #[error("boom {0}")]
    struct Boom(bool);

    #[tokio::test(start_paused = true)]
    async fn retries_transient_then_succeeds() {
        let calls = AtomicUsize::new(0);
        let result = until(
            "test",
            Instant::now() + Duration::from_secs(60),
            Duration::from_secs(1),
            |e: &Boom| e.0,
            || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                    Err(Boom(true))
                } else {
                    Ok(7)
                }
            },
        )
        .await;
        assert_eq!(result.ok(), Some(7));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_error_is_not_retried() {
        let calls = AtomicUsize::new(0);
        let result: Result<(), _> = until(
            "test",
            Instant::now() + Duration::from_secs(60),
            Duration::from_secs(1),
            |e: &Boom| e.0,
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Boom(false))
            },
        )
        .await;
        assert!(matches!(result, Err(RetryError::Failed(Boom(false)))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_bounds_the_wait() {
        let result: Result<(), _> = until(
            "flaky thing",
            Instant::now() + Duration::from_secs(5),
            Duration::from_secs(1),
            |e: &Boom| e.0,
            || async { Err(Boom(true)) },
        )
        .await;
        match result {
            Err(RetryError::OutOfTime { what, last, .. }) => {
                assert_eq!(what, "flaky thing");
                assert!(last.contains("boom"), "{last}");
            }
            Err(RetryError::Failed(e)) => assert!(e.0, "last transient error after deadline"),
            Ok(()) => panic!("cannot succeed"),
        }
    }
}

#[cfg(test)]
mod rounding {
    use super::*;

    #[test]
    fn budgets_read_as_meant() {
        assert_eq!(
            rounded(Duration::from_nanos(9_999_998_898)).to_string(),
            "10s"
        );
        assert_eq!(rounded(Duration::from_secs(300)).to_string(), "5m");
        assert_eq!(rounded(Duration::from_micros(250_400)).to_string(), "250ms");
    }
}
