//! Whether the gateway can accept a send: the standard gRPC health service
//! (`grpc.health.v1.Health`: the overall `""` and each tidings service) and
//! `/readyz` on the HTTP side, both from one probe of Kafka and the store
//! every [`PROBE_EVERY`]. Probing on a period, not per ask, keeps a load
//! balancer's health checks from becoming load on the dependencies.
//!
//! `/healthz` stays a liveness check (the process answers); `/readyz` and
//! the health service say NOT_SERVING while Kafka or the store does not
//! answer, so traffic is routed elsewhere rather than refused with
//! UNAVAILABLE.

use std::{sync::Arc, time::Duration};

use rdkafka::{
    ClientConfig,
    consumer::{BaseConsumer, Consumer},
};
use tidings_schemas::proto::v1::{
    contact_service_server, feed_service_server, notification_service_server,
    preference_service_server, template_service_server,
};
use tidings_store::Store;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};
use tracing::{info, warn};

/// How often Kafka and the store are probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(5);
/// How long a probe waits for an answer before the dependency counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The app key the store probe reads: no app has it, so the read is one
/// cheap point look-up answered "absent".
const PROBE_APP_KEY: &str = "tidings.readiness-probe";

/// The services whose health follows Kafka's and the store's, besides the
/// overall `""`.
pub const SERVICES: &[&str] = &[
    notification_service_server::SERVICE_NAME,
    contact_service_server::SERVICE_NAME,
    preference_service_server::SERVICE_NAME,
    template_service_server::SERVICE_NAME,
    feed_service_server::SERVICE_NAME,
];

/// The latest probe's verdict: ready, or what did not answer.
#[derive(Clone)]
pub struct Readiness {
    verdict: watch::Receiver<Result<(), String>>,
}

impl Readiness {
    /// `Ok` when Kafka and the store answered the latest probe, else the
    /// failures, e.g. `kafka: no metadata for t.notify.requests within 2s: ...`.
    pub fn verdict(&self) -> Result<(), String> {
        self.verdict.borrow().clone()
    }
}

/// What the gateway cannot accept without, probed on a period.
pub struct Probe {
    kafka: Arc<BaseConsumer>,
    /// Asking for one topic's metadata keeps the probe small on a cluster
    /// with many topics.
    topic: String,
    store: Store,
}

impl Probe {
    /// A probe of the brokers `kafka` names (the gateway's client settings,
    /// TLS and SASL included) and of `store`. The Kafka client never joins a
    /// group: it only asks for metadata.
    pub fn new(kafka: &ClientConfig, topic: String, store: Store) -> Result<Self, String> {
        let consumer: BaseConsumer = kafka
            .clone()
            .create()
            .map_err(|e| format!("cannot create the Kafka health probe client: {e}"))?;
        Ok(Self {
            kafka: Arc::new(consumer),
            topic,
            store,
        })
    }

    /// Probes once: `Ok` when both answer, else what failed.
    pub async fn check(&self) -> Result<(), String> {
        let (kafka, store) = tokio::join!(self.kafka(), self.store());
        match (kafka, store) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(k), Ok(())) => Err(k),
            (Ok(()), Err(s)) => Err(s),
            (Err(k), Err(s)) => Err(format!("{k}; {s}")),
        }
    }

    async fn kafka(&self) -> Result<(), String> {
        let (consumer, topic) = (self.kafka.clone(), self.topic.clone());
        // fetch_metadata blocks its thread for up to the timeout.
        let answer = tokio::task::spawn_blocking(move || {
            consumer
                .fetch_metadata(Some(&topic), PROBE_TIMEOUT)
                .map(|_| ())
                .map_err(|e| {
                    format!("kafka: no metadata for {topic} within {PROBE_TIMEOUT:?}: {e}")
                })
        })
        .await;
        answer.unwrap_or_else(|e| Err(format!("kafka: the probe task failed: {e}")))
    }

    async fn store(&self) -> Result<(), String> {
        match tokio::time::timeout(PROBE_TIMEOUT, self.store.apps.get(PROBE_APP_KEY)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("store: {e}")),
            Err(_) => Err(format!("store: no answer within {PROBE_TIMEOUT:?}")),
        }
    }

    /// Probes now and every [`PROBE_EVERY`] until `shutdown`, publishing
    /// each verdict to the health service and to the returned [`Readiness`].
    /// Not ready until the first probe has answered.
    pub fn spawn(self, health: HealthReporter, shutdown: CancellationToken) -> Readiness {
        let (tx, rx) = watch::channel(Err("not probed yet".to_owned()));
        tokio::spawn(async move {
            set_status(&health, ServingStatus::NotServing).await;
            let mut ticks = tokio::time::interval(PROBE_EVERY);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // None until the first probe: its verdict is logged either way.
            let mut ready: Option<bool> = None;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = ticks.tick() => {}
                }
                let verdict = self.check().await;
                match (&verdict, ready) {
                    (Ok(()), None | Some(false)) => {
                        info!("Kafka and the store answer: serving");
                        set_status(&health, ServingStatus::Serving).await;
                    }
                    (Err(why), None | Some(true)) => {
                        warn!(reason = %why, "not ready: gRPC health NOT_SERVING, /readyz 503");
                        set_status(&health, ServingStatus::NotServing).await;
                    }
                    _ => {}
                }
                ready = Some(verdict.is_ok());
                let _previous = tx.send_replace(verdict);
            }
            // Draining: tell the load balancer before the listeners close.
            set_status(&health, ServingStatus::NotServing).await;
        });
        Readiness { verdict: rx }
    }
}

async fn set_status(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    for service in SERVICES {
        health.set_service_status(service, status).await;
    }
}

#[cfg(test)]
mod tests {
    use tidings_store::StoreOptions;
    use tonic_health::{
        pb::{HealthCheckRequest, health_check_response, health_server::Health},
        server::{HealthService, health_reporter},
    };

    use super::*;

    async fn status(health: &HealthService, service: &str) -> health_check_response::ServingStatus {
        let answer = health
            .check(tonic::Request::new(HealthCheckRequest {
                service: service.to_owned(),
            }))
            .await
            .expect("known service");
        answer.into_inner().status()
    }

    #[tokio::test]
    async fn unreachable_kafka_is_not_serving_and_named() {
        let dir = std::env::temp_dir().join(format!("tidings-health-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let store = Store::connect(
            &format!("sqlite://{}/t.db", dir.display()),
            &StoreOptions::default(),
        )
        .await
        .expect("sqlite store");
        // Nothing listens on port 1.
        let mut kafka = ClientConfig::new();
        kafka.set("bootstrap.servers", "127.0.0.1:1");
        let probe = Probe::new(&kafka, "t.notify.requests".into(), store).expect("client");
        let (reporter, _) = health_reporter();
        let shutdown = CancellationToken::new();
        let readiness = probe.spawn(reporter.clone(), shutdown.clone());
        let health = HealthService::from_health_reporter(reporter);

        let mut verdict = readiness.verdict();
        for _ in 0..100 {
            if verdict.as_ref().is_err_and(|e| e != "not probed yet") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            verdict = readiness.verdict();
        }
        let why = verdict.expect_err("Kafka is unreachable");
        assert!(
            why.starts_with("kafka: no metadata for t.notify.requests"),
            "{why}"
        );
        assert!(!why.contains("store:"), "the store answers: {why}");
        for service in [""].iter().chain(SERVICES) {
            assert_eq!(
                status(&health, service).await,
                health_check_response::ServingStatus::NotServing,
                "{service:?}"
            );
        }
        shutdown.cancel();
        let _ = std::fs::remove_dir_all(dir);
    }
}
