//! Kafka over TLS, against the real broker's SSL listener that
//! `scripts/servers.sh up` runs next to the plaintext one: address in
//! `TIDINGS_TEST_KAFKA_TLS` (default `127.0.0.1:19094`), its test CA in
//! `TIDINGS_TEST_KAFKA_CA` (default `<repo>/.servers/kafka/tls/ca.pem`), see
//! `eval "$(scripts/servers.sh env)"`. TLS is configured the way a deployment
//! does it: `security.protocol` and `ssl.ca.location` in `kafka.client`.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{Consumer, StreamConsumer},
};
use tidings_config::KafkaConfig;
use tidings_kafka::{AvroProducer, KafkaCluster, KafkaError, TopicSpec, now_millis};
use tidings_schemas::{
    AvroCodec,
    records::{TrackingEvent, TrackingKind},
};

/// One topic for every run: each run reads back from the offset its own
/// record got, so runs never see each other's records.
const TOPIC: &str = "tidings.test.tls";

/// A CA certificate that did not sign the broker's certificate (made with
/// `openssl req -x509` for this test; its key was thrown away).
const OTHER_CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIDOzCCAiOgAwIBAgIUT6h4WZRnr3arSLrtj82OkQSHpiQwDQYJKoZIhvcNAQEL
BQAwJDEiMCAGA1UEAwwZdGlkaW5ncyB1bnRydXN0ZWQgdGVzdCBDQTAgFw0yNjEx
MjUxODI4MzhaGA8yMTI2MTEwMTE4MjgzOFowJDEiMCAGA1UEAwwZdGlkaW5ncyB1
bnRydXN0ZWQgdGVzdCBDQTCCASIwDQYJKoZIhvcNAQEBBQADggEPADCCAQoCggEB
AMWjJoLfmKbY/xI8nJSP1IFVCRGfVVdmAQtL8v3a9bh8MnkmXBwuBFrJvB4UXy3L
UNkgvEbIs84xcYD1ebXY88JfuFIU7nMoNxdJeZYKW3ZB0CJQOKCB/ghS3w9jMAF3
EHSEVcH0Pv7oHZggF51vnRFDiX682c28idfc4qMNJWeY1Yc5RPojtlsgPZ9QYnwe
N7KWM3g4W5Ufk9MnCE7VUA6S/hQpcuVViO0kmVkrr3URgw3ncHCfWAhmeThwpq2e
vLaKhdAWWRw2+Fyz5F6QXQltWZTxN61tekZ27EVMge+FrcS8lagi7Qy8jAWXfHGb
txBsDs/oDvPEBzfzZdo6ku8CAwEAAaNjMGEwHQYDVR0OBBYEFDxeQm1WSg0o1iKg
8eIC6lVO69KoMB8GA1UdIwQYMBaAFDxeQm1WSg0o1iKg8eIC6lVO69KoMA8GA1Ud
EwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQDAgEGMA0GCSqGSIb3DQEBCwUAA4IBAQBV
Jt9mTCFrGDTJ/hpqX/7q9UwOPxMLe81iCZrtkJ6OcxSZtzjSiYmZ74ZohPTOJScP
8aHXqDaMp467GzrwmmA/+g3RAKNVBniHuMNXQvmjmRiGaSA2fyjOxfQ3owS3jPNg
vM9OmlqgYaGVHgp8DyogtTv6sXGlyLriLFTxsmRZ6S+zWaXiPjUrvQgdIJ2mkbZ8
LowkRySRMxXFueDWlbYDpxHMCh30PNAma5hIXL6OQ1AGu8qkzz0PjwNLmX3TSSm7
p4zfvXovpnHXgvjNuUwtZAz7mFhtIS6WKuDq62Bl24OXD8A9V27ij6I6Pr6fVE8S
QbjPOxFG4k9UpJUZdoBO
-----END CERTIFICATE-----
";

/// `KafkaCluster::connect` gives up after 10 s; a refused certificate must
/// end it well within this.
const CONNECT_BOUND: Duration = Duration::from_secs(30);

const START_SERVERS: &str = "start the test servers with `scripts/servers.sh up` \
     (`scripts/servers.sh status` shows the SSL listener, `scripts/servers.sh logs` the broker's log)";

fn tls_address() -> String {
    std::env::var("TIDINGS_TEST_KAFKA_TLS").unwrap_or_else(|_| "127.0.0.1:19094".into())
}

/// The CA that signed the broker's certificate; must exist.
fn test_ca() -> String {
    let path = std::env::var_os("TIDINGS_TEST_KAFKA_CA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.servers/kafka/tls/ca.pem")
        });
    let path = path
        .canonicalize()
        .unwrap_or_else(|e| panic!("no test CA at {}: {e}; {START_SERVERS}", path.display()));
    path.to_str().expect("CA path is UTF-8").to_owned()
}

/// What a deployment would configure: the SSL listener, `security.protocol`
/// and, if given, `ssl.ca.location` (otherwise the system's roots), with
/// hostname verification against the certificate's subjectAltName.
fn tls_config(ca_location: Option<&str>) -> KafkaConfig {
    let mut client = BTreeMap::from([
        ("security.protocol".to_owned(), "ssl".to_owned()),
        (
            "ssl.endpoint.identification.algorithm".to_owned(),
            "https".to_owned(),
        ),
    ]);
    if let Some(ca) = ca_location {
        client.insert("ssl.ca.location".to_owned(), ca.to_owned());
    }
    KafkaConfig {
        bootstrap_servers: tls_address(),
        client,
        ..KafkaConfig::default()
    }
}

fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!("{what}-{}-{nanos}", std::process::id())
}

#[tokio::test]
async fn produces_and_consumes_an_avro_record_over_tls() {
    let ca = test_ca();
    let config = tls_config(Some(&ca));
    let cluster = KafkaCluster::connect(&config).await.unwrap_or_else(|e| {
        panic!("cannot reach Kafka over TLS with CA {ca}: {e}\n{START_SERVERS}")
    });
    assert_eq!(cluster.bootstrap_servers(), tls_address());

    // admin client over TLS
    let spec = TopicSpec {
        name: TOPIC.to_owned(),
        partitions: 1,
        retention_ms: 3_600_000,
        record: "tidings.TrackingEvent",
        key: "event id",
    };
    cluster
        .ensure_topics(&config, std::slice::from_ref(&spec))
        .await
        .expect("create the test topic over TLS");

    // producer over TLS
    let codec = AvroCodec::local();
    let producer = AvroProducer::new(&cluster, &config, codec.clone()).expect("producer");
    let event = TrackingEvent {
        event_id: unique("tls-event"),
        notification_id: unique("tls-notification"),
        user_id: "tls-user".into(),
        kind: TrackingKind::Sent,
        channel: Some("email".into()),
        target: None,
        template_name: None,
        stage: "tls-test".into(),
        detail: Some("produced over TLS".into()),
        at: now_millis(),
        dispatched_at: None,
    };
    let delivered = producer
        .send(TOPIC, &event.event_id, &event)
        .await
        .expect("produce over TLS");

    // consumer over TLS, from the offset our record got
    let consumer: StreamConsumer = cluster
        .client_config(&config)
        .set("group.id", unique("tidings-tls-test"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(TOPIC, delivered.partition, Offset::Offset(delivered.offset))
        .expect("partition offset");
    consumer.assign(&assignment).expect("assign");
    let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("no record read back over TLS within 30s")
        .expect("consume over TLS");
    assert_eq!(message.offset(), delivered.offset);
    assert_eq!(message.key(), Some(event.event_id.as_bytes()));
    let read: TrackingEvent = codec
        .decode(message.payload().expect("a payload"))
        .expect("decode the record read back");
    assert_eq!(read, event);
    producer.flush(Duration::from_secs(5));
}

#[tokio::test]
async fn a_broker_certificate_from_another_ca_is_refused() {
    let other_ca = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("other-ca") + ".pem");
    std::fs::write(&other_ca, OTHER_CA_PEM).expect("write the other CA");
    let other_ca = other_ca.to_str().expect("UTF-8 path").to_owned();
    assert_refused(tls_config(Some(&other_ca))).await;
    let _ = std::fs::remove_file(&other_ca);
}

#[tokio::test]
async fn without_the_test_ca_the_system_roots_refuse_the_broker() {
    assert_refused(tls_config(None)).await;
}

/// `KafkaCluster::connect` fails with `Unreachable`, naming the address,
/// within its timeout instead of hanging, and its reason names the
/// certificate (not, say, a closed port).
async fn assert_refused(config: KafkaConfig) {
    let address = tls_address();
    let start = Instant::now();
    let result = tokio::time::timeout(CONNECT_BOUND, KafkaCluster::connect(&config))
        .await
        .unwrap_or_else(|_| {
            panic!("KafkaCluster::connect to {address} hung for {CONNECT_BOUND:?}")
        });
    let elapsed = start.elapsed();
    match result {
        Err(KafkaError::Unreachable {
            servers, reason, ..
        }) => {
            assert_eq!(servers, address, "{reason}");
            assert!(elapsed < CONNECT_BOUND, "took {elapsed:?}");
            assert!(
                reason.contains("certificate verify failed"),
                "expected the failed certificate verification in the reason for {address}, \
                 got: {reason}\n{START_SERVERS}"
            );
        }
        Err(other) => panic!("expected KafkaError::Unreachable, got {other:?}"),
        Ok(_) => panic!("connected to {address} with {:?}", config.client),
    }
}
