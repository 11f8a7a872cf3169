# syntax=docker/dockerfile:1
#
# raftkv as a container: the `deno compile`d binary on distroless (glibc, no shell), non-root.
#
#   docker build -t raftkv:local .
#   docker run --rm raftkv:local --help
#   scripts/docker-cluster.sh up          # three nodes on a user-defined network
#
# Configure it with RAFTKV_* environment variables or flags (`raftkv --help` lists both). The
# image sets the data directory (a volume), the listen address and where a cluster file is read
# from in static join mode; Kubernetes uses k8s join mode instead (deploy/k8s/).

ARG DENO_VERSION=2.9.6

# ---- build: compile the single binary for the build platform ----------------------------------
FROM denoland/deno:${DENO_VERSION} AS build
WORKDIR /src
# Only the program's import graph (tests/deploy_test.ts checks that these cover it).
COPY deno.json main.ts ./
COPY src/ src/
COPY scripts/compile.ts scripts/
# `deno task compile` downloads the denort runtime from dl.deno.land, so the build needs network.
RUN deno task compile \
  && dist/raftkv --version \
  && mkdir -p /out/data \
  && cp dist/raftkv /out/raftkv

# ---- runtime: the binary only -------------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="raftkv" \
      org.opencontainers.image.description="A Raft-replicated key-value store"
COPY --from=build /out/raftkv /raftkv
# The volume's mount point, owned by the runtime user, so that a new named volume is writable.
COPY --from=build --chown=65532:65532 /out/data /data
USER 65532:65532
ENV RAFTKV_DATA_DIR=/data \
    RAFTKV_LISTEN_HOST=0.0.0.0 \
    RAFTKV_CLUSTER_CONFIG_PATH=/etc/raftkv/cluster.config.json
VOLUME ["/data"]
# Client API and peer RPC; the defaults of --api-port and --rpc-port (and of the healthcheck).
EXPOSE 7777 6666
# `raftkv healthcheck` GETs /health on RAFTKV_API_PORT (default 7777): no curl needed.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/raftkv", "healthcheck"]
# The node stops taking requests, finishes the write in flight and closes its peers on SIGTERM.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/raftkv"]
