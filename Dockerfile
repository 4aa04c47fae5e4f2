# The tidings image: one binary, every role (`tidings gateway`,
# `tidings process <stage>`, `tidings init`). Untested here: the development
# machine has no Docker engine.
FROM rust:1.95-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends cmake libssl-dev && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked --bin tidings

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 tidings
COPY --from=build /src/target/release/tidings /usr/local/bin/tidings
USER tidings
EXPOSE 50051 8080 9464
ENTRYPOINT ["tidings"]
CMD ["--help"]
