//! What the crate's integration tests share.

use tidings_config::KafkaConfig;
use tidings_kafka::{KafkaCluster, TopicSpec};

/// Creates the topics `names`, `partitions` each, of tracking events keyed
/// by user id.
pub async fn create_topics(
    cluster: &KafkaCluster,
    config: &KafkaConfig,
    names: &[&str],
    partitions: i32,
) {
    let specs: Vec<TopicSpec> = names
        .iter()
        .map(|name| TopicSpec {
            name: (*name).to_owned(),
            partitions,
            retention_ms: 3_600_000,
            record: "TrackingEvent",
            key: "user id",
        })
        .collect();
    cluster.ensure_topics(config, &specs).await.expect("topics");
}
