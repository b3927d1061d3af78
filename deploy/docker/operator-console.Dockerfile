# syntax=docker/dockerfile:1
# operator-console: the web console for the people on call, over the services' admin APIs (docs/deploy.md).
# Build from the repository root:
#   docker build -f deploy/docker/operator-console.Dockerfile -t backbone/operator-console:$(git rev-parse --short HEAD) .
# Layers: cargo-chef's recipe (manifests and lock file only) -> the dependencies, compiled once and
# cached until Cargo.lock or a manifest changes -> the workspace's own code -> a slim runtime with
# the binary alone, run as an unprivileged user. No configuration or secret is copied in: the
# services read them from the environment (ConfigMap and Secret, deploy/k8s/). The console's
# templates and stylesheet (crates/apps/operator-console/templates, static) are compiled into the
# binary (askama, include_str!): they come in with `COPY . .`, and nothing else is needed at run
# time.

FROM rust:1.95-slim-bookworm AS chef
# librdkafka is built from source by rdkafka-sys (with TLS: OpenSSL); Debian's packages follow
# the base image's point release, so they are not pinned (DL3008, deploy/docker/.hadolint.yaml).
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential libssl-dev pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --version 0.1.78 --locked
WORKDIR /build

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /build/recipe.json recipe.json
# The cached dependency layer: rebuilt only when the recipe (manifests, Cargo.lock) changes.
RUN cargo chef cook --release --locked -p operator-console --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked -p operator-console --bin operator-console \
 && install -D -m 0755 target/release/operator-console /out/operator-console

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 backbone \
 && useradd --system --uid 10001 --gid backbone --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin backbone
COPY --from=builder /out/operator-console /usr/local/bin/operator-console
USER 10001:10001
# Smoke check: the binary starts and its shared libraries resolve in this runtime.
RUN ["/usr/local/bin/operator-console", "--help"]
# The pages and /health/live, /health/ready (http.listen), plain HTTP: TLS ends in front of it.
EXPOSE 8095
# Kubernetes probes /health/live and /health/ready (deploy/k8s/); a Docker HEALTHCHECK would need
# a client in the image.
HEALTHCHECK NONE
CMD ["run"]
ENTRYPOINT ["/usr/local/bin/operator-console"]
