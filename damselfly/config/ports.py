"""The default ports: one place for the numbers the peer, the scheduler, the CRDs,
the operator's manifests and ``damselfly local`` must agree on."""

from __future__ import annotations

PROXY = 65001  # the peer's HTTP proxy, what clients use
UPLOAD = 65002  # the peer's upload server, where other peers fetch pieces
PEER_METRICS = 65003  # the peer's /metrics, /healthz, /readyz, /status
SCHEDULER = 8002  # the scheduler's API
SCHEDULER_METRICS = 8000  # the scheduler's /metrics and health
