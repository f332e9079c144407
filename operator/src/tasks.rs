//! Every task the operator runs, owned by one supervisor: none is spawned and forgotten. A
//! service task (a watch, the queue's pump, the pools, the event writer) that ends or
//! panics takes the process down, so the standby replica takes over; a task of one run
//! (reading its record) that panics is logged, and its run resumed by the next reconcile.
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// What happens when a task ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Runs as long as the process: its end is the process's end.
    Service,
    /// One piece of work: its end is normal, a panic is logged.
    Work,
}

struct Task {
    name: String,
    kind: Kind,
    future: BoxFuture<'static, ()>,
}

/// A handle to spawn tasks into the supervisor.
#[derive(Clone)]
pub struct Tasks(mpsc::UnboundedSender<Task>);

/// The supervisor: owns every task spawned through any [`Tasks`].
pub struct Supervisor {
    incoming: mpsc::UnboundedReceiver<Task>,
    set: JoinSet<(String, Kind, bool)>,
}

pub fn supervisor() -> (Tasks, Supervisor) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Tasks(tx),
        Supervisor {
            incoming: rx,
            set: JoinSet::new(),
        },
    )
}

impl Tasks {
    pub fn spawn(
        &self,
        name: impl Into<String>,
        kind: Kind,
        future: impl Future<Output = ()> + Send + 'static,
    ) {
        let task = Task {
            name: name.into(),
            kind,
            future: Box::pin(future),
        };
        if self.0.send(task).is_err() {
            // Only after the supervisor has returned, i.e. while the process stops.
            tracing::debug!("a task was spawned while the operator stops");
        }
    }
}

impl Supervisor {
    /// Runs every task; returns the name of the first service task that ended (or
    /// panicked), which ends the process.
    pub async fn run(mut self) -> String {
        loop {
            tokio::select! {
                Some(task) = self.incoming.recv() => {
                    let (name, kind) = (task.name, task.kind);
                    let future = AssertUnwindSafe(task.future).catch_unwind();
                    self.set.spawn(async move {
                        let panicked = future.await.is_err();
                        (name, kind, panicked)
                    });
                }
                Some(done) = self.set.join_next() => match done {
                    Ok((name, Kind::Service, panicked)) => {
                        tracing::error!(task = %name, panicked, "a service task ended");
                        return name;
                    }
                    Ok((name, Kind::Work, true)) => {
                        tracing::error!(task = %name, "a task panicked; its work is resumed by the next reconcile");
                    }
                    Ok((_, Kind::Work, false)) => {}
                    Err(e) => tracing::error!(error = %e, "a task was lost"),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn work_may_end_but_a_service_ending_stops_the_supervisor() {
        let (tasks, supervisor) = supervisor();
        tasks.spawn("reading a run", Kind::Work, async {});
        tasks.spawn("pods watch", Kind::Service, async {
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        assert_eq!(supervisor.run().await, "pods watch");
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_piece_of_work_is_logged_and_a_panicking_service_stops_all() {
        let (tasks, supervisor) = supervisor();
        tasks.spawn("broken work", Kind::Work, async { panic!("bug") });
        tasks.spawn("broken service", Kind::Service, async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            panic!("bug")
        });
        assert_eq!(supervisor.run().await, "broken service");
    }
}
