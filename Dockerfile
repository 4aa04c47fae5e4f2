# The tidings image for machines that can pull base images: one binary, every
# role (`tidings gateway`, `tidings process <stage>`, `tidings init`).
#
#   docker build -t tidings .      (or: buildah bud -t tidings .)
#
# NOT BUILT HERE: this repository's CI reaches no container registry, so it
# cannot pull these base images. CI lints this file (hadolint, in
# scripts/deploy-check.sh) and builds and runs deploy/image/Containerfile
# instead (scripts/image.sh test): FROM scratch, the same binary, user,
# entrypoint, ports and CA bundle. This image keeps a Debian userland because
# docker-compose.kafka.yml's health checks run bash in it. docs/deployment.md
# compares the two.
#
# The toolchain the repository is built and tested with (rustc 1.95.0) on
# Debian 12 "bookworm", and the same Debian release at run time, so the
# libssl3 and glibc there are the ones the binary was linked against. Pin the
# digests (`image@sha256:...`) when you build from a registry you trust; they
# cannot be resolved here.
FROM rust:1.95.0-bookworm AS build
WORKDIR /src
# The rust image already has what librdkafka's build needs (a C compiler,
# make, libssl-dev, zlib1g-dev); the protos compile with protox, no protoc.
COPY . .
# Symbols stay (panics name functions), DWARF goes, as in scripts/image.sh.
RUN cargo build --release --locked --bin tidings \
    && strip --strip-debug target/release/tidings

FROM debian:bookworm-slim
# Not version-pinned: Debian replaces a stable release's package versions with
# each security update and point release and drops the old ones from its
# mirrors, so a pinned libssl3 or ca-certificates stops building within weeks
# (this development machine's libssl3 3.0.19-1~deb12u2 is no longer on the
# mirrors, which now offer 3.0.20 and, in bookworm-security, 3.0.22). Within
# bookworm, Debian takes only fixes, so an unpinned install stays consistent
# with the build stage.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 tidings \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent \
        --no-create-home --shell /usr/sbin/nologin tidings
COPY --from=build /src/target/release/tidings /usr/local/bin/tidings
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
LABEL org.opencontainers.image.title="tidings" \
      org.opencontainers.image.description="Notification and news-feed platform built as a Kafka stream-processing pipeline" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"
# Numeric, so the kubelet can check runAsNonRoot without reading /etc/passwd
# (helm/tidings/values.yaml runs the pods as 10001:10001 too).
USER 10001:10001
# gRPC, HTTP (feed, tracking, webhooks, health), stage metrics.
EXPOSE 50051 8080 9464
ENTRYPOINT ["/usr/local/bin/tidings"]
CMD ["--help"]
