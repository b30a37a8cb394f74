# syntax=docker/dockerfile:1
# The reconnect-operator image: the release binary, the glibc it links and a CA bundle,
# FROM scratch, running as 65532. No shell, no package manager.
# Build: docker build -t ghcr.io/reconnect-dev/reconnect-operator:0.1.0 .
# CI builds the same image without Docker: .ci/image (buildah, no registry). Both run
# .ci/image-rootfs for the file layout, and .ci/image reads the labels, USER, EXPOSE and
# ENTRYPOINT below, so the two recipes give the same image. See docs/container-image.md.

ARG RUST_IMAGE=rust:1-bookworm

# The build stage runs on the image's own platform (emulated for a foreign one, see
# docs/container-image.md): the binary and the libraries copied next to it match.
FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit, podman and buildah all
# support cache mounts); the root file system is assembled out of the cache in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin reconnect-operator \
 && .ci/image-rootfs target/release/reconnect-operator /rootfs

FROM scratch
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="reconnect-operator" \
      org.opencontainers.image.description="Kubernetes operator that validates rotated SaaS credentials before it swaps them in" \
      org.opencontainers.image.source="https://github.com/reconnect-dev/reconnect-operator" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /rootfs/ /
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/reconnect-operator"]
