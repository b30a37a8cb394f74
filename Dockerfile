# syntax=docker/dockerfile:1
# The reconnect-operator image: a static (musl) binary on distroless, running as 65532.
# Build: docker build -t ghcr.io/reconnect-dev/reconnect-operator:0.1.0 .
# (docs/container-image.md: podman, buildah, multi-arch, and why CI does not build it).

ARG RUST_IMAGE=rust:1-bookworm

# The build stage runs on the image's own platform (emulated for a foreign one, see
# docs/container-image.md), so the musl target is simply the native one.
FROM ${RUST_IMAGE} AS build
# ring (rustls' crypto) has C and assembly parts: musl-gcc builds them. Not version-pinned:
# the base image floats with Debian's security updates, and an exact pin would break with it.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
RUN echo "$(uname -m)-unknown-linux-musl" > /rust-target \
 && rustup target add "$(cat /rust-target)"
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit, podman and buildah all
# support cache mounts); the binary is copied out of the cache in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(cat /rust-target)" \
 && cargo build --release --locked --bin reconnect-operator --target "$target" \
 && install -D -m 0755 "target/$target/release/reconnect-operator" /out/reconnect-operator

FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="reconnect-operator" \
      org.opencontainers.image.description="Kubernetes operator that validates rotated SaaS credentials before it swaps them in" \
      org.opencontainers.image.source="https://github.com/reconnect-dev/reconnect-operator" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/reconnect-operator /usr/local/bin/reconnect-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/reconnect-operator"]
