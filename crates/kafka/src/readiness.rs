//! Whether a stage's consumer holds its partitions: the half of a
//! process's readiness (`/readyz`) that only the stage runner knows.
//!
//! Each [`Stage`](crate::Stage) publishes its [`Assignment`] on a watch
//! channel from its rebalance callbacks; a process collects the receivers of
//! every stage it runs in one [`StageAssignments`] and asks it which stages
//! are not ready. A member that a completed rebalance gave no partitions
//! (more members than partitions) is ready: it is where the group wants it.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// Where a stage's consumer stands in its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    /// Subscribed; the group has not assigned this member anything yet.
    Joining,
    /// A rebalance completed and gave this member `partitions` partitions
    /// (possibly none).
    Assigned { partitions: usize },
    /// Its partitions were revoked (or lost) and the next assignment has not
    /// come yet.
    Rebalancing,
    /// The last rebalance failed; librdkafka rejoins on its own.
    Failed(String),
    /// The stage is leaving its group.
    Stopping,
}

impl Assignment {
    /// Whether the member holds what the group assigned it.
    pub fn is_ready(&self) -> bool {
        matches!(self, Assignment::Assigned { .. })
    }

    /// What a person reads in `/readyz`.
    pub fn describe(&self) -> String {
        match self {
            Assignment::Joining => {
                "waiting for its partition assignment (joining the group)".into()
            }
            Assignment::Assigned { partitions } => format!("holds {partitions} partitions"),
            Assignment::Rebalancing => {
                "waiting for its partition assignment (partitions revoked, rebalancing)".into()
            }
            Assignment::Failed(why) => format!("the last rebalance failed: {why}"),
            Assignment::Stopping => "stopping".into(),
        }
    }
}

/// A stage's name and its assignment as it changes.
type Tracked = (&'static str, watch::Receiver<Assignment>);

/// The assignment of every stage consumer of one process. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct StageAssignments {
    stages: Arc<Mutex<Vec<Tracked>>>,
}

impl StageAssignments {
    /// Follows `stage`'s assignment from now on.
    pub fn track(&self, stage: &'static str, assignment: watch::Receiver<Assignment>) {
        self.lock().push((stage, assignment));
    }

    /// Each tracked stage with its assignment, in the order tracked.
    pub fn current(&self) -> Vec<(&'static str, Assignment)> {
        self.lock()
            .iter()
            .map(|(stage, rx)| (*stage, rx.borrow().clone()))
            .collect()
    }

    /// `Ok` when every tracked stage holds its assignment; otherwise one
    /// line per stage that does not, e.g. `stage enricher: waiting for its
    /// partition assignment (joining the group)`.
    pub fn verdict(&self) -> Result<(), Vec<String>> {
        let waiting: Vec<String> = self
            .current()
            .into_iter()
            .filter(|(_, a)| !a.is_ready())
            .map(|(stage, a)| format!("stage {stage}: {}", a.describe()))
            .collect();
        if waiting.is_empty() {
            Ok(())
        } else {
            Err(waiting)
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Tracked>> {
        // A panic while holding this lock cannot leave the list half-made.
        self.stages.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_completed_assignment_is_ready() {
        assert!(Assignment::Assigned { partitions: 3 }.is_ready());
        // More members than partitions: nothing to hold, still where the
        // group wants it.
        assert!(Assignment::Assigned { partitions: 0 }.is_ready());
        for waiting in [
            Assignment::Joining,
            Assignment::Rebalancing,
            Assignment::Failed("coordinator unavailable".into()),
            Assignment::Stopping,
        ] {
            assert!(!waiting.is_ready(), "{waiting:?}");
        }
    }

    #[test]
    fn the_verdict_names_each_stage_not_ready() {
        let stages = StageAssignments::default();
        assert_eq!(stages.verdict(), Ok(()), "no stage: nothing to wait for");
        let (enricher, rx) = watch::channel(Assignment::Joining);
        stages.track("enricher", rx);
        let (sms, rx) = watch::channel(Assignment::Joining);
        stages.track("sender.sms", rx);

        let waiting = stages.verdict().expect_err("both joining");
        assert_eq!(waiting.len(), 2, "{waiting:?}");
        assert!(
            waiting[0].starts_with("stage enricher: waiting"),
            "{waiting:?}"
        );

        enricher.send_replace(Assignment::Assigned { partitions: 3 });
        let waiting = stages.verdict().expect_err("sms still joining");
        assert_eq!(waiting.len(), 1, "{waiting:?}");
        assert!(waiting[0].starts_with("stage sender.sms:"), "{waiting:?}");

        sms.send_replace(Assignment::Assigned { partitions: 0 });
        assert_eq!(stages.verdict(), Ok(()));

        enricher.send_replace(Assignment::Rebalancing);
        let waiting = stages.verdict().expect_err("enricher rebalancing");
        assert!(waiting[0].contains("rebalancing"), "{waiting:?}");
        assert_eq!(
            stages.current(),
            vec![
                ("enricher", Assignment::Rebalancing),
                ("sender.sms", Assignment::Assigned { partitions: 0 })
            ]
        );
    }

    #[test]
    fn a_stage_gone_keeps_its_last_word() {
        let stages = StageAssignments::default();
        let (tx, rx) = watch::channel(Assignment::Joining);
        stages.track("feed-writer", rx);
        tx.send_replace(Assignment::Stopping);
        drop(tx);
        assert!(stages.verdict().is_err());
    }
}
