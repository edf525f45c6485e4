#!/usr/bin/env bash
# mfd-node: start a Ray node of the mfdiffuser stack (compose and KubeRay use it alike).
#   mfd-node head     a head node (GCS, dashboard, job API); blocks until stopped
#   mfd-node worker   a worker node joining RAY_HEAD_ADDRESS (host:port); blocks until stopped
#   mfd-node CMD ...  any other command, e.g. `mfd-node mfd --version`
# Settings (environment): RAY_NODE_IP (default: this host's first address), RAY_PORT (6379),
# RAY_DASHBOARD_HOST (0.0.0.0 in a container; 127.0.0.1 elsewhere), RAY_DASHBOARD_PORT (8265),
# RAY_NUM_CPUS / RAY_NUM_GPUS (default: what Ray detects), RAY_TEMP_DIR (Ray's default),
# RAY_START_ARGS (more `ray start` flags). Extra arguments go to `ray start` too.
set -euo pipefail
role=${1:-head}
[ $# -gt 0 ] && shift
node_ip=${RAY_NODE_IP:-$(hostname -i 2>/dev/null | awk '{print $1}')}
node_ip=${node_ip:-127.0.0.1}
common=(--block --node-ip-address "$node_ip")
[ -n "${RAY_NUM_CPUS:-}" ] && common+=(--num-cpus "$RAY_NUM_CPUS")
[ -n "${RAY_NUM_GPUS:-}" ] && common+=(--num-gpus "$RAY_NUM_GPUS")
[ -n "${RAY_TEMP_DIR:-}" ] && common+=(--temp-dir "$RAY_TEMP_DIR")
# shellcheck disable=SC2206
[ -n "${RAY_START_ARGS:-}" ] && common+=(${RAY_START_ARGS})
case "$role" in
  head)
    exec ray start --head --port "${RAY_PORT:-6379}" \
      --dashboard-host "${RAY_DASHBOARD_HOST:-127.0.0.1}" \
      --dashboard-port "${RAY_DASHBOARD_PORT:-8265}" "${common[@]}" "$@"
    ;;
  worker)
    : "${RAY_HEAD_ADDRESS:?set RAY_HEAD_ADDRESS to the head address host:port, e.g. ray-head:6379}"
    exec ray start --address "$RAY_HEAD_ADDRESS" "${common[@]}" "$@"
    ;;
  *)
    exec "$role" "$@"
    ;;
esac
