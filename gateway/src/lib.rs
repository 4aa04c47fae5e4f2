//! The gateway: the only way into tidings from outside.
//!
//! It is thin on purpose. It authenticates and validates, writes to Kafka and
//! answers; everything slow (look-ups, rendering, sending) happens in the
//! processors behind the topics. A call that returns OK has been durably
//! written (acks=all), so nothing accepted is lost.

pub mod auth;
mod contacts;
pub mod feed;
mod feed_cache;
mod feed_http;
mod feed_reactions;
mod feed_revisions;
mod health;
mod http;
mod http_serve;
mod inbox;
mod inbox_http;
mod inbox_live;
pub mod limits;
mod notifications;
mod openapi;
mod preferences;
pub mod schema_registry;
mod stale_cache;
pub mod templates;
pub mod user_token;
pub mod validate;
pub mod webhooks;
mod widget;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use rdkafka::ClientConfig;
use tidings_config::{FeedConfig, GatewayConfig, InboxConfig, TrackingConfig};
use tidings_kafka::{AvroProducer, Topics};
use tidings_schemas::proto::{
    FILE_DESCRIPTOR_SET,
    v1::{
        contact_service_server::ContactServiceServer, feed_service_server::FeedServiceServer,
        inbox_service_server::InboxServiceServer,
        notification_service_server::NotificationServiceServer,
        preference_service_server::PreferenceServiceServer,
        template_service_server::TemplateServiceServer,
    },
};
use tidings_schemas::tracking_link::LinkSigner;
use tidings_store::{Store, StoreError};
use tidings_telemetry::GatewayRequest;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status};
use tracing::info;

pub use health::{PROBE_EVERY, Probe, SERVICES};
pub use notifications::{
    EXPANSION_BUFFER_BYTES, MAX_USERS_PER_SEND, SendLimits, ValidSend, validate_send,
};

/// Shared state of every gateway service. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    producer: AvroProducer,
    store: Store,
    topics: Topics,
    config: GatewayConfig,
    auth: Arc<auth::Authenticator>,
    /// Templates read on the `Send` path (versions are immutable).
    templates: Arc<templates::TemplateCache>,
    limits: SendLimits,
    links: LinkSigner,
    /// Verifies `X-Twilio-Signature` on status callbacks, when the SMS
    /// provider is Twilio with a status callback.
    twilio_signatures: Option<webhooks::TwilioSignatures>,
    /// Verifies SendGrid's signed Event Webhook, when the email provider is
    /// SendGrid with a verification key.
    sendgrid_signatures: Option<webhooks::SendGridSignatures>,
    feed: Arc<FeedConfig>,
    user_tokens: user_token::UserTokens,
    caches: Arc<feed_cache::FeedCaches>,
    /// Client settings of the Kafka the readiness probe asks for metadata.
    kafka_client: ClientConfig,
    /// The latest readiness probe's verdict, once `bind` started it.
    readiness: Option<health::Readiness>,
    /// The live inbox streams held here (`inbox_live.rs`).
    inbox_hub: Arc<inbox_live::InboxHub>,
    /// `[inbox] heartbeat_secs`.
    inbox_heartbeat: Duration,
}

/// Addresses the gateway is serving on (ports resolved when 0 was asked).
#[derive(Debug, Clone, Copy)]
pub struct GatewayAddrs {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("{0}")]
    Probe(String),
    #[error("gRPC reflection cannot load the protos' descriptors: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

impl Gateway {
    /// `kafka_client` is the librdkafka settings of the cluster `producer`
    /// writes to, for the readiness probe's metadata requests.
    pub fn new(
        producer: AvroProducer,
        kafka_client: ClientConfig,
        store: Store,
        topics: Topics,
        config: GatewayConfig,
        tracking: &TrackingConfig,
        feed: &FeedConfig,
    ) -> Self {
        let links = LinkSigner::new(&tracking.link_secret, &tracking.public_url);
        let stale_for = Duration::from_secs(config.auth_stale_serve_secs);
        Self {
            auth: Arc::new(auth::Authenticator::new(stale_for)),
            templates: Arc::new(templates::TemplateCache::new(stale_for)),
            limits: SendLimits {
                max_expanded: config.max_expanded_notifications,
                expansion_buffer_bytes: config.expansion_buffer_bytes,
                max_call_bytes: config.max_call_bytes,
                ..SendLimits::default()
            },
            user_tokens: user_token::UserTokens::new(&feed.user_token_secret),
            feed: Arc::new(feed.clone()),
            caches: Arc::new(feed_cache::FeedCaches::new(feed.post_cache_entries)),
            producer,
            store,
            topics,
            config,
            links,
            twilio_signatures: None,
            sendgrid_signatures: None,
            kafka_client,
            readiness: None,
            inbox_hub: inbox_live::InboxHub::new(
                InboxConfig::default().max_streams,
                inbox_live::STREAM_QUEUE,
            ),
            inbox_heartbeat: Duration::from_secs(InboxConfig::default().heartbeat_secs),
        }
    }

    /// Applies `[inbox]`: how many live streams this gateway holds at most
    /// and how often an idle one gets a heartbeat.
    pub fn with_inbox(mut self, inbox: &InboxConfig) -> Self {
        self.inbox_hub = inbox_live::InboxHub::new(inbox.max_streams, inbox_live::STREAM_QUEUE);
        self.inbox_heartbeat = Duration::from_secs(inbox.heartbeat_secs.max(1));
        self
    }

    /// Refuses sends whose records could exceed `max_message_bytes`
    /// (`kafka.max_message_bytes`; 1,000,000 unless set).
    pub fn limit_records_to(mut self, max_message_bytes: usize) -> Self {
        self.limits.budget = limits::MessageBudget { max_message_bytes };
        self
    }

    /// Checks Twilio's request signature on status callbacks besides the
    /// receipt token.
    pub fn verify_twilio_signatures(mut self, signatures: webhooks::TwilioSignatures) -> Self {
        self.twilio_signatures = Some(signatures);
        self
    }

    /// Checks SendGrid's Event Webhook signature besides the receipt tokens.
    pub fn verify_sendgrid_signatures(mut self, signatures: webhooks::SendGridSignatures) -> Self {
        self.sendgrid_signatures = Some(signatures);
        self
    }

    /// Binds both listeners, so a port in use fails here with its address,
    /// starts the readiness probe and returns the servers to run until
    /// `shutdown`. Besides tidings' services the gRPC side serves
    /// `grpc.health.v1.Health` and server reflection (v1 and v1alpha).
    pub async fn bind(
        mut self,
        shutdown: CancellationToken,
    ) -> Result<(GatewayAddrs, impl Future<Output = Result<(), GatewayError>>), GatewayError> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| GatewayError::Bind { addr, source })
        };
        let grpc_listener = bind(self.config.grpc_addr).await?;
        let http_listener = bind(self.config.http_addr).await?;
        let addrs = GatewayAddrs {
            grpc: grpc_listener
                .local_addr()
                .map_err(|source| GatewayError::Bind {
                    addr: self.config.grpc_addr,
                    source,
                })?,
            http: http_listener
                .local_addr()
                .map_err(|source| GatewayError::Bind {
                    addr: self.config.http_addr,
                    source,
                })?,
        };
        info!(grpc = %addrs.grpc, http = %addrs.http, "gateway listening");
        let (health, health_service) = tonic_health::server::health_reporter();
        let probe = health::Probe::new(
            &self.kafka_client,
            self.topics.requests().to_owned(),
            self.store.clone(),
        )
        .map_err(GatewayError::Probe)?;
        self.readiness = Some(probe.spawn(health, shutdown.clone()));
        feed_revisions::spawn_reader(
            self.caches.clone(),
            self.kafka_client.clone(),
            self.topics.revisions().to_owned(),
            self.producer.codec().clone(),
            shutdown.clone(),
        );
        inbox_live::spawn_reader(
            self.inbox_hub.clone(),
            self.kafka_client.clone(),
            self.topics.inbox_events().to_owned(),
            self.producer.codec().clone(),
            shutdown.clone(),
        );
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection().build_v1()?;
        // grpc_cli and older grpcurl ask v1alpha.
        let reflection_v1alpha = reflection().build_v1alpha()?;
        let grpc = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(NotificationServiceServer::new(self.clone()))
            .add_service(ContactServiceServer::new(self.clone()))
            .add_service(PreferenceServiceServer::new(self.clone()))
            .add_service(TemplateServiceServer::new(self.clone()))
            .add_service(FeedServiceServer::new(self.clone()))
            .add_service(InboxServiceServer::new(self.clone()))
            .serve_with_incoming_shutdown(
                // No Nagle: a small answer must not wait for the client's
                // delayed ACK (40 ms per call otherwise).
                tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
                shutdown.clone().cancelled_owned(),
            );
        // hyper's HTTP/1 connections, not axum::serve: a third less memory
        // per idle SSE stream (http_serve.rs).
        let http = http_serve::serve(http_listener, http::router(self.clone()), shutdown);
        let run = async move {
            let (g, ()) = tokio::join!(grpc, http);
            Ok(g?)
        };
        Ok((addrs, run))
    }

    /// Authenticates the caller and checks `permission`; returns the app key.
    async fn authorize<T>(&self, request: &Request<T>, permission: &str) -> Result<String, Status> {
        self.auth
            .authorize(&*self.store.apps, request, permission)
            .await
    }

    fn count<T>(&self, method: &str, result: &Result<T, Status>) {
        let code = match result {
            Ok(_) => "ok".to_owned(),
            Err(s) => format!("{:?}", s.code()),
        };
        GatewayRequest {
            method,
            code: &code,
        }
        .emit();
    }
}

/// Maps a store failure to the gRPC status a client can act on.
fn store_status(e: StoreError) -> Status {
    if e.is_retriable() {
        Status::unavailable(e.to_string())
    } else {
        Status::internal(e.to_string())
    }
}
