//! Every wait drover does, bounded by one deadline: retrying a remote call that failed
//! ([`until`]) and polling a state until it is reached ([`poll_until`]), both paced by
//! backon's exponential backoff.

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

/// What one look at a state found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check<T> {
    /// The state is reached; the poll ends with this value.
    Done(T),
    /// Not yet: what was seen, for the error should the deadline pass first.
    NotYet(String),
}

/// How a poll paces its looks: the first wait, doubling to the longest. No jitter: a poll
/// watches a state, it does not retry a service that might be overloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    pub first: Duration,
    pub max: Duration,
}

impl Pace {
    pub const fn new(first: Duration, max: Duration) -> Pace {
        Pace { first, max }
    }

    fn backoff(self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.first)
            .with_max_delay(self.max)
            .with_factor(2.0)
            .without_max_times()
    }
}

/// Why a look failed, inside the poll: not yet (poll again) or for good (stop).
enum Look<E> {
    NotYet(String),
    Failed(E),
}

/// Looks with `probe` at once, then again after each wait of `pace`, until it says
/// [`Check::Done`], fails, or `deadline` passes. A failing look ends the poll (a probe that
/// wants transient failures retried wraps its calls in [`until`]); the deadline bounds the
/// looks themselves too.
pub async fn poll_until<T, E, F, Fut>(
    what: &str,
    deadline: Instant,
    pace: Pace,
    mut probe: F,
) -> Result<T, RetryError<E>>
where
    E: std::error::Error + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Check<T>, E>>,
{
    let started = Instant::now();
    let last = std::sync::Mutex::new(String::from("nothing seen yet"));
    let out_of_time = |last: String| RetryError::OutOfTime {
        what: what.to_string(),
        budget: deadline.saturating_duration_since(started),
        last,
    };
    let look = || {
        let looked = probe();
        async move {
            match looked.await {
                Ok(Check::Done(v)) => Ok(v),
                Ok(Check::NotYet(seen)) => Err(Look::NotYet(seen)),
                Err(e) => Err(Look::Failed(e)),
            }
        }
    };
    let polled = look
        .retry(pace.backoff())
        .when(|e| matches!(e, Look::NotYet(_)) && Instant::now() < deadline)
        .notify(|e, _| {
            if let (Look::NotYet(seen), Ok(mut l)) = (e, last.lock()) {
                l.clone_from(seen);
            }
        });
    match tokio::time::timeout_at(deadline, polled).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(Look::Failed(e))) => Err(RetryError::Failed(e)),
        Ok(Err(Look::NotYet(seen))) => Err(out_of_time(seen)),
        Err(_) => Err(out_of_time(
            last.lock().map(|l| l.clone()).unwrap_or_default(),
        )),
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

    #[tokio::test(start_paused = true)]
    async fn a_poll_looks_at_once_then_paces_itself_until_done() {
        let looks = std::sync::Mutex::new(Vec::new());
        let started = Instant::now();
        let result: Result<u32, RetryError<Boom>> = poll_until(
            "the thing",
            Instant::now() + Duration::from_secs(60),
            Pace::new(Duration::from_millis(100), Duration::from_millis(400)),
            || {
                let n = {
                    let mut l = looks.lock().expect("looks");
                    l.push(started.elapsed());
                    l.len()
                };
                async move {
                    Ok(if n < 5 {
                        Check::NotYet(format!("look {n}"))
                    } else {
                        Check::Done(7)
                    })
                }
            },
        )
        .await;
        assert_eq!(result.ok(), Some(7));
        let at = looks.lock().expect("looks").clone();
        assert_eq!(at[0], Duration::ZERO, "the first look comes at once");
        // Then 100, 200, 400 and 400 (the longest wait) apart; the timer rounds up to the
        // millisecond.
        let gaps: Vec<u128> = at.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
        for (gap, expected) in gaps.iter().zip([100, 200, 400, 400]) {
            assert!((expected..expected + 3).contains(gap), "{gaps:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_out_of_time_says_what_it_saw_last() {
        let result: Result<(), RetryError<Boom>> = poll_until(
            "the host to become active",
            Instant::now() + Duration::from_secs(3),
            Pace::new(Duration::from_millis(250), Duration::from_secs(1)),
            || async { Ok(Check::NotYet("registering".to_string())) },
        )
        .await;
        match result {
            Err(RetryError::OutOfTime { what, last, budget }) => {
                assert_eq!(what, "the host to become active");
                assert_eq!(last, "registering");
                assert_eq!(budget, Duration::from_secs(3));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_look_ends_the_poll() {
        let looks = AtomicUsize::new(0);
        let result: Result<(), _> = poll_until(
            "x",
            Instant::now() + Duration::from_secs(60),
            Pace::new(Duration::from_millis(10), Duration::from_millis(10)),
            || {
                looks.fetch_add(1, Ordering::SeqCst);
                async { Err(Boom(false)) }
            },
        )
        .await;
        assert!(matches!(result, Err(RetryError::Failed(Boom(false)))));
        assert_eq!(looks.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_look_that_hangs_is_cut_at_the_deadline() {
        let started = Instant::now();
        let result: Result<(), RetryError<Boom>> = poll_until(
            "x",
            Instant::now() + Duration::from_secs(2),
            Pace::new(Duration::from_millis(10), Duration::from_millis(10)),
            || async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(Check::Done(()))
            },
        )
        .await;
        assert!(matches!(result, Err(RetryError::OutOfTime { .. })));
        assert_eq!(started.elapsed(), Duration::from_secs(2));
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
