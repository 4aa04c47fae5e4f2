//! The gateway's gRPC and HTTP conventions, asked as a load balancer or an
//! operator's tool asks them, on the embedded default and on real Kafka and
//! Cassandra: the standard health service (`grpc.health.v1.Health`, overall
//! and per service), `/readyz` beside `/healthz`, and server reflection
//! listing every service; then the same through grpc-health-probe and
//! grpcurl (scripts/tools.sh builds them from the Go module proxy). NOT_SERVING while a dependency is down is in
//! `gateway/src/health.rs`'s unit test (the shared servers stay up here).

mod support;

use std::time::Duration;

use support::{Backend, TestPipeline, eventually};
use tokio_stream::StreamExt;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

const WAIT: Duration = Duration::from_secs(30);

on_every_backend!(the_gateway_reports_health_readiness_and_its_services);

async fn the_gateway_reports_health_readiness_and_its_services(backend: Backend) {
    let t = TestPipeline::start(backend).await;
    let http = t.pipeline.as_ref().expect("running").gateway.http;

    // Ready once the first probe has heard Kafka and the store.
    eventually("/readyz to answer 200", WAIT, || async {
        let head = support::http::request(http, "GET", "/readyz", &[], None)
            .await
            .head;
        head.starts_with("HTTP/1.1 200").then_some(())
    })
    .await;
    let live = support::http::request(http, "GET", "/healthz", &[], None).await;
    assert!(live.head.starts_with("HTTP/1.1 200"), "{}", live.head);

    let channel = tonic::transport::Endpoint::from_shared(t.grpc_endpoint())
        .expect("endpoint")
        .connect()
        .await
        .expect("gateway answers");
    let mut health = HealthClient::new(channel.clone());
    for service in [""].iter().chain(tidings_gateway::SERVICES) {
        let status = health
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .unwrap_or_else(|e| panic!("health of {service:?}: {e}"))
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "tidings.v1.NoSuchService".into(),
        })
        .await
        .expect_err("an unknown service");
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    // Reflection lists every service, as grpcurl's `list` asks it.
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection answers")
        .into_inner();
    let answer = answers
        .next()
        .await
        .expect("one answer")
        .expect("a list of services");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a list of services: {answer:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    let mut expected: Vec<String> = tidings_gateway::SERVICES
        .iter()
        .map(|s| s.to_string())
        .chain(["grpc.health.v1.Health".to_owned()])
        .chain(["grpc.reflection.v1.ServerReflection".to_owned()])
        .collect();
    expected.sort();
    assert_eq!(names, expected);

    // A symbol resolves to its file, so a tool can build a call.
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "tidings.v1.NotificationService".into(),
        )),
    };
    let answer = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection answers")
        .into_inner()
        .next()
        .await
        .expect("one answer")
        .expect("the file");
    assert!(
        matches!(
            answer.message_response,
            Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()
        ),
        "{answer:?}"
    );

    // The same, asked by the tools operators use: Kubernetes' gRPC probe
    // and grpcurl (Go's gRPC stack, not ours).
    let addr = t
        .pipeline
        .as_ref()
        .expect("running")
        .gateway
        .grpc
        .to_string();
    let probe = tool("grpc-health-probe");
    // The probe gives up after 1 s by default; a CI machine running every
    // test on two cores can take longer to answer a first connection.
    const PATIENT: [&str; 2] = ["-connect-timeout=20s", "-rpc-timeout=20s"];
    let serving = run(&probe, &[&format!("-addr={addr}"), PATIENT[0], PATIENT[1]]);
    assert!(
        serving.status.success() && serving.stderr.contains("status: SERVING"),
        "{serving:?}"
    );
    for service in tidings_gateway::SERVICES {
        let out = run(
            &probe,
            &[
                &format!("-addr={addr}"),
                &format!("-service={service}"),
                PATIENT[0],
                PATIENT[1],
            ],
        );
        assert!(out.status.success(), "{service}: {out:?}");
    }
    let unknown = run(
        &probe,
        &[
            &format!("-addr={addr}"),
            "-service=tidings.v1.NoSuchService",
            PATIENT[0],
            PATIENT[1],
        ],
    );
    // Refused by the gateway, not given up on by the probe.
    assert!(
        !unknown.status.success() && unknown.stderr.contains("code = NotFound"),
        "{unknown:?}"
    );

    let grpcurl = tool("grpcurl");
    let listed = run(&grpcurl, &["-plaintext", &addr, "list"]);
    assert!(listed.status.success(), "{listed:?}");
    let mut names: Vec<&str> = listed.stdout.lines().map(str::trim).collect();
    names.sort();
    assert_eq!(names, expected, "grpcurl list");
    // grpcurl builds a call from reflection alone; without an app key the
    // gateway answers UNAUTHENTICATED.
    let call = run(
        &grpcurl,
        &[
            "-plaintext",
            "-d",
            "{}",
            &addr,
            "tidings.v1.NotificationService/Send",
        ],
    );
    assert!(
        !call.status.success() && call.stderr.contains("Unauthenticated"),
        "{call:?}"
    );
    t.stop().await;
}

/// An outside tool, installed (once, cached outside the repository) by
/// scripts/tools.sh, which prints its path.
fn tool(name: &str) -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(root.join("scripts/tools.sh"))
        .arg(name)
        .output()
        .unwrap_or_else(|e| panic!("scripts/tools.sh {name}: {e}"));
    assert!(
        out.status.success(),
        "scripts/tools.sh {name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().into()
}

#[derive(Debug)]
struct Ran {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

fn run(program: &std::path::Path, args: &[&str]) -> Ran {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    Ran {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
