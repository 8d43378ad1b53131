#!/usr/bin/env bash
# The e2e suite (pytest e2e/) on kind, for machines with a Docker engine. CI has none
# and runs the same tests on e2e/cluster instead (scripts/test).
#
#   e2e/kind.sh            create the cluster, build + load the images, run pytest e2e, delete
#   KEEP=1 e2e/kind.sh     leave the cluster running afterwards
#   e2e/kind.sh -k install extra args go to pytest
#
# The tests need to know what kubectl cannot tell: how to run a command on a node
# (docker exec) and which address of this machine the pods reach (the kind network's
# gateway, where the tests start their origin and LFS servers). This script writes
# that into a cluster file (see e2e/kube.py) and points DAMSELFLY_E2E_CLUSTER at it.
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER=${CLUSTER:-damselfly-e2e}
STATE=${DAMSELFLY_KIND_DIR:-/tmp/damselfly-kind-$CLUSTER}
IMAGES=(damselfly:dev localhost/damselfly-e2e/client:1)

for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || { echo "e2e: $tool is required" >&2; exit 2; }
done
docker info >/dev/null 2>&1 || { echo "e2e: no Docker engine answers" >&2; exit 2; }
[ -x .venv/bin/pytest ] || scripts/bootstrap

cleanup() { [ "${KEEP:-}" = 1 ] || kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true; }
trap cleanup EXIT

mkdir -p "$STATE" /var/tmp/damselfly-e2e # the tests' temp dir, mounted into the nodes
kind create cluster --name "$CLUSTER" --config kind-config.yaml --kubeconfig "$STATE/kubeconfig" --wait 120s
docker build -t damselfly:dev .
docker build -t localhost/damselfly-e2e/client:1 -f e2e/images/client/Containerfile e2e/images/client
kind load docker-image "${IMAGES[@]}" --name "$CLUSTER"

# Every node runs a peer (examples/ tolerates every taint); the workers come first,
# since the download tests use the first two nodes.
nodes=$(kind get nodes --name "$CLUSTER" | sort | awk '/control-plane/ {cp = $0; next} {print} END {if (cp) print cp}')
gateway=$(docker network inspect kind -f '{{range .IPAM.Config}}{{if .Gateway}}{{.Gateway}} {{end}}{{end}}' | tr ' ' '\n' | grep -m1 '\.')
{
  printf '{\n  "kubectl": "%s",\n  "kubeconfig": "%s",\n  "hostAddress": "%s",\n  "nodes": [' \
    "$(command -v kubectl)" "$STATE/kubeconfig" "$gateway"
  sep=
  for node in $nodes; do
    address=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$node")
    printf '%s\n    {"name": "%s", "address": "%s", "exec": ["docker", "exec", "%s"]}' "$sep" "$node" "$address" "$node"
    sep=,
  done
  printf '\n  ]\n}\n'
} >"$STATE/cluster.json"

# The Git LFS test runs git on the nodes, as a user of a node would.
for node in $nodes; do
  docker exec "$node" sh -c 'command -v git-lfs >/dev/null || { apt-get update -q && apt-get install -y -q git git-lfs; } >/dev/null'
done

# kind has a default StorageClass (local-path), so the seed gets a real PVC; the
# control plane carries a NoSchedule taint the peers tolerate (examples/).
export KUBECONFIG="$STATE/kubeconfig" DAMSELFLY_E2E_CLUSTER="$STATE/cluster.json" DAMSELFLY_REQUIRE_E2E=1
.venv/bin/pytest -p no:cacheprovider -ra --durations=0 --basetemp=/var/tmp/damselfly-e2e/pytest -m e2e e2e "$@"
