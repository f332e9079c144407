//! When runs start. Creating and tearing down pods costs the node far more CPU than a warm
//! run does; done in the middle of a burst it slows every run of the burst. Pool refills
//! and the removal of finished pods therefore wait until runs stop starting for a moment
//! ([`QUIET`]), and never longer than [`MAX_WAIT`] (under a steady stream of runs).
use tokio::sync::watch;
use tokio::time::{Duration, Instant, sleep_until};

/// How long starts must pause before pods are created for the pools or removed after runs.
pub const QUIET: Duration = Duration::from_millis(300);
/// The longest churn waits for such a pause.
pub const MAX_WAIT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct Churn(watch::Sender<Instant>);

impl Default for Churn {
    fn default() -> Self {
        Churn(watch::Sender::new(Instant::now() - QUIET))
    }
}

impl Churn {
    /// A run starts now.
    pub fn mark(&self) {
        self.0.send_replace(Instant::now());
    }

    /// Returns once starts have paused for [`QUIET`], or after [`MAX_WAIT`]. Woken by each
    /// new start (which moves the quiet moment later), never by a timer that polls.
    pub async fn quiet(&self) {
        let give_up = Instant::now() + MAX_WAIT;
        let mut starts = self.0.subscribe();
        loop {
            let quiet_at = *starts.borrow_and_update() + QUIET;
            let until = quiet_at.min(give_up);
            if Instant::now() >= until {
                return;
            }
            tokio::select! {
                _ = sleep_until(until) => {}
                _ = starts.changed() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn with_no_start_there_is_no_wait() {
        let t = Instant::now();
        Churn::default().quiet().await;
        assert_eq!(t.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn churn_waits_for_a_pause_after_a_start() {
        let churn = Churn::default();
        churn.mark();
        let t = Instant::now();
        churn.quiet().await;
        assert_eq!(t.elapsed(), QUIET);
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_during_the_wait_moves_the_quiet_moment() {
        let churn = Churn::default();
        churn.mark();
        let marker = churn.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            marker.mark();
        });
        let t = Instant::now();
        churn.quiet().await;
        assert_eq!(t.elapsed(), Duration::from_millis(200) + QUIET);
    }

    #[tokio::test(start_paused = true)]
    async fn under_a_steady_stream_of_starts_the_wait_ends_at_its_cap() {
        let churn = Churn::default();
        let marker = churn.clone();
        let ticker = tokio::spawn(async move {
            loop {
                marker.mark();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        tokio::task::yield_now().await;
        let t = Instant::now();
        churn.quiet().await;
        ticker.abort();
        assert_eq!(t.elapsed(), MAX_WAIT);
    }
}
