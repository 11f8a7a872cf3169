#!/usr/bin/env bash
# Runs a three-node raftkv cluster in containers on one machine.
#
#   scripts/docker-cluster.sh up                  build the image, start raftkv-1..3
#   scripts/docker-cluster.sh status              containers, health and each node's /v1/status
#   scripts/docker-cluster.sh down [--volumes]    remove the containers and the network
#                                                 (and, with --volumes, the nodes' data)
#
# The nodes share the user-defined network "raftkv" and find each other by container name
# (http://raftkv-1:6666), as listed in deploy/docker/cluster.config.json, which is mounted
# read-only. Each node keeps its data in a named volume (raftkv-1-data, ...). The client API of
# raftkv-1..3 is published on host ports 7777..7779; any node forwards writes to the leader.
#
# Environment: DOCKER (default "docker"; "podman" works too), IMAGE (default "raftkv:local"),
# SKIP_BUILD=1 to use an IMAGE that is already built or pulled, WAIT=0 to return from `up`
# without waiting (at most 60 s, with curl) for every node to answer /ready.
#
# TLS_DIR=<dir> runs the cluster with mutual TLS between peers, HTTPS on the API and bearer
# tokens: <dir> holds ca.crt, raftkv-N.crt/.key and tokens.json, as made by
#   deno task certs --dir <dir> --nodes raftkv-1,raftkv-2,raftkv-3 \
#     --host raftkv-1 --host raftkv-2 --host raftkv-3
# and is mounted read-only at /etc/raftkv/secrets (the cluster file is then
# deploy/docker/cluster.tls.config.json, with https URLs).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
docker="${DOCKER:-docker}"
image="${IMAGE:-raftkv:local}"
network="raftkv"
cluster_file="$root/deploy/docker/cluster.config.json"
tls_dir="${TLS_DIR:-}"
scheme=http
if [[ -n "$tls_dir" ]]; then
  tls_dir="$(cd "$tls_dir" && pwd)"
  cluster_file="$root/deploy/docker/cluster.tls.config.json"
  scheme=https
fi
secrets=/etc/raftkv/secrets
nodes=(raftkv-1 raftkv-2 raftkv-3)
host_ports=(7777 7778 7779)

usage() {
  sed -n '2,7p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

need_engine() {
  if ! "$docker" info >/dev/null 2>&1; then
    echo "docker-cluster: cannot reach a container engine with '$docker info'." >&2
    echo "Start Docker (or set DOCKER=podman) and retry." >&2
    exit 1
  fi
}

exists() { # exists <object type> <name>
  "$docker" "$1" inspect "$2" >/dev/null 2>&1
}

up() {
  need_engine
  if [[ "${SKIP_BUILD:-}" != 1 ]]; then
    echo "docker-cluster: building $image"
    "$docker" build -t "$image" "$root"
  fi
  exists network "$network" || "$docker" network create "$network" >/dev/null
  local i node
  for i in "${!nodes[@]}"; do
    node="${nodes[$i]}"
    if exists container "$node"; then
      echo "docker-cluster: $node exists; starting it"
      "$docker" start "$node" >/dev/null
      continue
    fi
    local tls_args=()
    if [[ -n "$tls_dir" ]]; then
      for f in ca.crt "$node.crt" "$node.key" tokens.json; do
        [[ -r "$tls_dir/$f" ]] || { echo "docker-cluster: $tls_dir/$f is missing" >&2; exit 1; }
      done
      tls_args=(
        --volume "$tls_dir:$secrets:ro"
        --env "RAFTKV_PEER_CA=$secrets/ca.crt"
        --env "RAFTKV_PEER_CERT=$secrets/$node.crt"
        --env "RAFTKV_PEER_KEY=$secrets/$node.key"
        --env "RAFTKV_API_CERT=$secrets/$node.crt"
        --env "RAFTKV_API_KEY=$secrets/$node.key"
        --env "RAFTKV_TOKENS_FILE=$secrets/tokens.json"
        --env "RAFTKV_HEALTHCHECK_CACERT=$secrets/ca.crt"
      )
    fi
    "$docker" run --detach \
      --name "$node" \
      --hostname "$node" \
      --network "$network" \
      --publish "${host_ports[$i]}:7777" \
      --volume "$node-data:/data" \
      --volume "$cluster_file:/etc/raftkv/cluster.config.json:ro" \
      --env "RAFTKV_ID=$node" \
      ${tls_args[@]+"${tls_args[@]}"} \
      --restart unless-stopped \
      "$image" >/dev/null
    echo "docker-cluster: started $node (API on $scheme://127.0.0.1:${host_ports[$i]})"
  done
  wait_ready
}

# Waits (at most 60 s) until every node answers /ready, when curl is available to ask.
wait_ready() {
  if [[ "${WAIT:-1}" == 0 ]]; then
    return 0
  fi
  if ! command -v curl >/dev/null 2>&1; then
    echo "docker-cluster: no curl here to wait for readiness; see '$0 status'"
    return 0
  fi
  local deadline=$((SECONDS + 60)) port ready
  local curl_tls=()
  [[ -z "$tls_dir" ]] || curl_tls=(--cacert "$tls_dir/ca.crt")
  while ((SECONDS < deadline)); do
    ready=0
    for port in "${host_ports[@]}"; do
      if curl -fsS --max-time 2 ${curl_tls[@]+"${curl_tls[@]}"} "$scheme://127.0.0.1:$port/ready" >/dev/null 2>&1; then
        ready=$((ready + 1))
      fi
    done
    if ((ready == ${#host_ports[@]})); then
      echo "docker-cluster: all ${#nodes[@]} nodes are ready, e.g.:"
      if [[ -n "$tls_dir" ]]; then
        echo "  TOKEN=<the write token in $tls_dir/tokens.json>"
        echo "  curl --cacert $tls_dir/ca.crt -H \"Authorization: Bearer \$TOKEN\" -X POST -H 'content-type: application/json' -d '{\"k\":\"a\",\"v\":\"1\"}' https://localhost:7777/v1/data"
        echo "  curl --cacert $tls_dir/ca.crt -H \"Authorization: Bearer \$TOKEN\" https://localhost:7778/v1/data/a"
      else
        echo "  curl -X POST -H 'content-type: application/json' -d '{\"k\":\"a\",\"v\":\"1\"}' http://127.0.0.1:7777/v1/data"
        echo "  curl http://127.0.0.1:7778/v1/data/a"
      fi
      return 0
    fi
    sleep 1
  done
  echo "docker-cluster: not every node was ready within 60 s; see '$0 status' and '$docker logs raftkv-1'" >&2
  return 1
}

status() {
  need_engine
  local i node state
  for i in "${!nodes[@]}"; do
    node="${nodes[$i]}"
    if ! exists container "$node"; then
      echo "$node: no container"
      continue
    fi
    state="$("$docker" inspect --format '{{.State.Status}} {{if .State.Health}}({{.State.Health.Status}}){{end}}' "$node")"
    if command -v curl >/dev/null 2>&1; then
      if [[ -n "$tls_dir" ]]; then # /v1/status needs a token; /ready is open
        state="$state, /ready: $(curl -sS --max-time 2 --cacert "$tls_dir/ca.crt" "https://127.0.0.1:${host_ports[$i]}/ready" 2>&1 || true)"
      else
        state="$state, /v1/status: $(curl -sS --max-time 2 "http://127.0.0.1:${host_ports[$i]}/v1/status" 2>&1 || true)"
      fi
    fi
    echo "$node: $state"
  done
}

down() {
  local volumes=0
  case "${1:-}" in
    "") ;;
    --volumes) volumes=1 ;;
    *) usage ;;
  esac
  need_engine
  local node
  for node in "${nodes[@]}"; do
    if exists container "$node"; then
      "$docker" rm --force "$node" >/dev/null
      echo "docker-cluster: removed $node"
    fi
  done
  if exists network "$network"; then
    "$docker" network rm "$network" >/dev/null
    echo "docker-cluster: removed network $network"
  fi
  if ((volumes)); then
    for node in "${nodes[@]}"; do
      if exists volume "$node-data"; then
        "$docker" volume rm "$node-data" >/dev/null
        echo "docker-cluster: removed volume $node-data"
      fi
    done
  fi
}

case "${1:-}" in
  up) [[ $# -eq 1 ]] || usage; up ;;
  status) [[ $# -eq 1 ]] || usage; status ;;
  down) shift; [[ $# -le 1 ]] || usage; down "$@" ;;
  *) usage ;;
esac
