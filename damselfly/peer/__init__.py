"""The peer: one per node, an HTTP proxy that fetches rule-matched objects through the swarm.

Folders by concern, in import order (enforced by .importlinter): ``app`` wires everything
and does nothing else; ``health`` (the metrics port), ``p2p`` (upload, announce, seeding) and
``frontdoor`` (the proxy port) sit on ``transfer`` (downloads), which sits on ``rules`` and
``store``; ``net`` (the egress guard) and ``metrics`` are at the bottom.
"""
