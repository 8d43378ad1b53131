#!/usr/bin/env bash
# Whole-system test on kind, for machines with a Docker engine (our CI machines have
# none: there the same operator runs against a real API server in tests/k8s, and the
# swarm as local processes in tests/p2p).
#
#   e2e/kind.sh            create cluster, build + load image, install, check, delete
#   KEEP=1 e2e/kind.sh     leave the cluster running afterwards
#
# Checks: the operator reconciles examples/ to Ready, the peer DaemonSet runs on every
# node, and an object fetched twice through the NodePort proxy (host port 65001, see
# kind-config.yaml) comes back identical, the second time as a cache hit.
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER=${CLUSTER:-damselfly-e2e}
IMAGE=damselfly:dev

for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || { echo "e2e: $tool is required" >&2; exit 2; }
done
docker info >/dev/null 2>&1 || { echo "e2e: no Docker engine answers" >&2; exit 2; }

cleanup() { [ "${KEEP:-}" = 1 ] || kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true; }
trap cleanup EXIT

kind create cluster --name "$CLUSTER" --config kind-config.yaml --wait 120s
docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

kubectl apply --server-side -k deploy/
kubectl -n damselfly-system rollout status deploy/damselfly-operator --timeout=180s
kubectl apply -f examples/
kubectl wait --for=condition=Ready p2pcluster/damselfly --timeout=300s
kubectl get damselfly

# An origin inside the cluster: nginx serving a random 64 MiB file.
kubectl apply -f - <<'YAML'
apiVersion: v1
kind: Pod
metadata: {name: e2e-origin, labels: {app: e2e-origin}}
spec:
  containers:
    - name: nginx
      image: nginx:1.27
      command: ["sh", "-c", "head -c 67108864 /dev/urandom > /usr/share/nginx/html/blob.bin && exec nginx -g 'daemon off;'"]
---
apiVersion: v1
kind: Service
metadata: {name: e2e-origin}
spec: {selector: {app: e2e-origin}, ports: [{port: 80}]}
---
apiVersion: damselfly.io/v1alpha1
kind: ProxyRule
metadata: {name: e2e-origin}
spec: {clusterRef: {name: damselfly}, regex: 'e2e-origin[^/]*/blob\.bin$'}
YAML
kubectl wait --for=condition=Ready pod/e2e-origin --timeout=180s
kubectl wait --for=condition=Applied proxyrule/e2e-origin --timeout=120s

# Each client pod talks to the peer on its own node through the NodePort (host IP).
run_curl() {
  kubectl apply -f - <<YAML >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: e2e-curl-$1}
spec:
  restartPolicy: Never
  containers:
    - name: curl
      image: curlimages/curl:8.10.1
      env: [{name: HOST_IP, valueFrom: {fieldRef: {fieldPath: status.hostIP}}}]
      command: ["sh", "-c", "curl -sS -D /tmp/h -o /tmp/b -x http://\$HOST_IP:30950 http://e2e-origin.default.svc.cluster.local/blob.bin && grep -i x-damselfly-cache /tmp/h && sha256sum /tmp/b"]
YAML
  kubectl wait --for=jsonpath='{.status.phase}'=Succeeded "pod/e2e-curl-$1" --timeout=300s >/dev/null
  kubectl logs "pod/e2e-curl-$1"
}
first=$(run_curl 1)
second=$(run_curl 2)
echo "first:  $first"
echo "second: $second"
[ "$(echo "$first" | tail -1 | cut -d' ' -f1)" = "$(echo "$second" | tail -1 | cut -d' ' -f1)" ] \
  || { echo "e2e: the two downloads differ" >&2; exit 1; }
echo "$second" | grep -qi "x-damselfly-cache: hit" || { echo "e2e: second download was not a hit" >&2; exit 1; }
echo "e2e: OK (identical bytes, second download a cache hit)"
