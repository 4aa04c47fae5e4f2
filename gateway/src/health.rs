//! Whether the gateway can accept a send: the standard gRPC health service
//! (`grpc.health.v1.Health`: the overall `""` and each tidings service) and
//! `/readyz` on the HTTP side, both from one probe of Kafka and the store
//! every [`PROBE_EVERY`]. Probing on a period, not per ask, keeps a load
//! balancer's health checks from becoming load on the dependencies.
//!
//! `/healthz` stays a liveness check (the process answers). Readiness means
//! "can accept a send", and a send needs Kafka, not the store: while the
//! store does not answer the gateway accepts sends from the apps its cache
//! knows (`gateway.auth_stale_serve_secs`), which is the point of writing
//! requests to Kafka. So:
//! - Kafka down: `/readyz` 503 and every service NOT_SERVING, so traffic is
//!   routed elsewhere rather than refused with UNAVAILABLE;
//! - the store down, Kafka up: *degraded*. `/readyz` stays 200 and says so,
//!   the overall `""` and the notification service stay SERVING, and the
//!   services that are the store (contacts, preferences, templates, feed,
//!   inbox) say NOT_SERVING.

use std::{sync::Arc, time::Duration};

use rdkafka::{
    ClientConfig,
    consumer::{BaseConsumer, Consumer},
};
use tidings_schemas::proto::v1::{
    contact_service_server, feed_service_server, inbox_service_server, notification_service_server,
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

/// The services the gateway reports health for, besides the overall `""`.
pub const SERVICES: &[&str] = &[
    notification_service_server::SERVICE_NAME,
    contact_service_server::SERVICE_NAME,
    preference_service_server::SERVICE_NAME,
    template_service_server::SERVICE_NAME,
    feed_service_server::SERVICE_NAME,
    inbox_service_server::SERVICE_NAME,
];

/// Of [`SERVICES`], those that serve from Kafka alone (and the auth cache)
/// while the store does not answer.
const SERVING_WITHOUT_STORE: &[&str] = &[notification_service_server::SERVICE_NAME];

/// What the latest probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probed {
    /// No probe has answered yet.
    NotYet,
    /// Kafka and the store answered.
    Ready,
    /// Kafka answered, the store did not (what it said).
    Degraded(String),
    /// Kafka did not answer (what failed, the store's answer included).
    NotReady(String),
}

impl Probed {
    fn of(kafka: Result<(), String>, store: Result<(), String>) -> Self {
        match (kafka, store) {
            (Ok(()), Ok(())) => Probed::Ready,
            (Ok(()), Err(s)) => Probed::Degraded(s),
            (Err(k), Ok(())) => Probed::NotReady(k),
            (Err(k), Err(s)) => Probed::NotReady(format!("{k}; {s}")),
        }
    }

    /// `Ok` only when Kafka and the store both answered, else what did not:
    /// the readiness of a stage process, which needs both.
    pub fn both(&self) -> Result<(), String> {
        match self {
            Probed::Ready => Ok(()),
            Probed::Degraded(why) | Probed::NotReady(why) => Err(why.clone()),
            Probed::NotYet => Err("not probed yet".to_owned()),
        }
    }

    /// The health of `service` (`""` is the overall one).
    fn status(&self, service: &str) -> ServingStatus {
        match self {
            Probed::Ready => ServingStatus::Serving,
            Probed::Degraded(_)
                if service.is_empty() || SERVING_WITHOUT_STORE.contains(&service) =>
            {
                ServingStatus::Serving
            }
            _ => ServingStatus::NotServing,
        }
    }
}

/// The latest probe's verdict.
#[derive(Clone)]
pub struct Readiness {
    verdict: watch::Receiver<Probed>,
}

impl Readiness {
    /// `Ok` while the gateway can accept sends (Kafka answered the latest
    /// probe; `Ok(Some(why))` when the store did not), else what failed,
    /// e.g. `kafka: no metadata for t.notify.requests within 2s: ...`.
    pub fn verdict(&self) -> Result<Option<String>, String> {
        match &*self.verdict.borrow() {
            Probed::Ready => Ok(None),
            Probed::Degraded(why) => Ok(Some(why.clone())),
            Probed::NotReady(why) => Err(why.clone()),
            Probed::NotYet => Err("not probed yet".to_owned()),
        }
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

    /// Probes Kafka and the store once, at the same time.
    pub async fn check(&self) -> Probed {
        let (kafka, store) = tokio::join!(self.kafka(), self.store());
        Probed::of(kafka, store)
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
        let (tx, rx) = watch::channel(Probed::NotYet);
        tokio::spawn(async move {
            set_status(&health, &Probed::NotYet).await;
            let mut ticks = tokio::time::interval(PROBE_EVERY);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = Probed::NotYet;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = ticks.tick() => {}
                }
                let probed = self.check().await;
                // Logged and published on a change of kind, not every probe.
                if std::mem::discriminant(&probed) != std::mem::discriminant(&last) {
                    match &probed {
                        Probed::Ready => info!("Kafka and the store answer: serving"),
                        Probed::Degraded(why) => {
                            warn!(reason = %why, "the store does not answer: sends from apps the cache knows are accepted; contacts, preferences, templates, the feed and the inbox NOT_SERVING; /readyz 200 (degraded)")
                        }
                        Probed::NotReady(why) => {
                            warn!(reason = %why, "not ready: gRPC health NOT_SERVING, /readyz 503")
                        }
                        Probed::NotYet => {}
                    }
                    set_status(&health, &probed).await;
                }
                last = probed.clone();
                let _previous = tx.send_replace(probed);
            }
            // Draining: tell the load balancer before the listeners close.
            set_status(&health, &Probed::NotYet).await;
        });
        Readiness { verdict: rx }
    }
}

async fn set_status(health: &HealthReporter, probed: &Probed) {
    health.set_service_status("", probed.status("")).await;
    for service in SERVICES {
        health
            .set_service_status(service, probed.status(service))
            .await;
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

    /// The store down and Kafka up: sends are still accepted (from the
    /// cache), so the gateway stays ready, says it is degraded, and only
    /// the services that are the store go NOT_SERVING.
    #[test]
    fn a_store_outage_degrades_only_the_store_services() {
        let probed = Probed::of(Ok(()), Err("store: no answer within 2s".into()));
        assert_eq!(
            probed,
            Probed::Degraded("store: no answer within 2s".into())
        );
        assert_eq!(probed.status(""), ServingStatus::Serving);
        assert_eq!(
            probed.status(notification_service_server::SERVICE_NAME),
            ServingStatus::Serving
        );
        for service in [
            contact_service_server::SERVICE_NAME,
            preference_service_server::SERVICE_NAME,
            template_service_server::SERVICE_NAME,
            feed_service_server::SERVICE_NAME,
            inbox_service_server::SERVICE_NAME,
        ] {
            assert_eq!(
                probed.status(service),
                ServingStatus::NotServing,
                "{service}"
            );
        }
        for down in [
            Probed::of(Err("kafka: x".into()), Ok(())),
            Probed::of(Err("kafka: x".into()), Err("store: y".into())),
            Probed::NotYet,
        ] {
            for service in [""].iter().chain(SERVICES) {
                assert_eq!(
                    down.status(service),
                    ServingStatus::NotServing,
                    "{down:?} {service:?}"
                );
            }
        }
        assert_eq!(
            Probed::of(Err("kafka: x".into()), Err("store: y".into())),
            Probed::NotReady("kafka: x; store: y".into())
        );
        assert_eq!(
            Probed::of(Ok(()), Ok(())).status(""),
            ServingStatus::Serving
        );
    }
}
