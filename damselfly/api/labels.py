"""The labels Damselfly puts on the objects it makes, defined once.

The operator labels every child of a P2PCluster with these (and selects them by
these), and a peer labels its rules report the same way (``report``).
"""

from __future__ import annotations

from damselfly.api.v1alpha1 import GROUP

CLUSTER_LABEL = f"{GROUP}/cluster"  # the P2PCluster an object belongs to
COMPONENT_LABEL = f"{GROUP}/component"  # scheduler, seed-peer, peer, peer-rules, ...
