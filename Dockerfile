# syntax=docker/dockerfile:1
#
# The Herald image: herald-gateway (the entrypoint), herald-operator (the Helm chart's operator
# Deployment sets `command: [herald-operator]`) and herald-loadtest (the chart's optional
# load-test Jobs set `command: [herald-loadtest]`).
#
#   docker build -t ghcr.io/herald-push/herald:0.1.0 .
#
# Note: this cannot be built on the project's development machines (there is no Docker engine
# there); build it in CI or on a workstation with Docker or another OCI builder.

# ---- build ---------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
WORKDIR /src
# The commit `herald_build_info` names (.git is not in the build context):
#   docker build --build-arg HERALD_COMMIT="$(git rev-parse --short=12 HEAD)" …
ARG HERALD_COMMIT=unknown
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin herald-gateway --bin herald-operator --bin herald-loadtest \
 && mkdir -p /out \
 && cp target/release/herald-gateway target/release/herald-operator target/release/herald-loadtest /out/

# ---- runtime -------------------------------------------------------------------------------
# Debian 12 with glibc and libgcc, no shell, no package manager; user 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/herald-gateway /out/herald-operator /out/herald-loadtest /usr/local/bin/
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["herald-gateway"]
CMD ["serve"]
