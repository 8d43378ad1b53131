"""What Kubernetes and other processes see: the contracts between Damselfly's parts.

``v1alpha1`` the custom resources (the CRDs are generated from them, ``crdgen``);
``ruleset`` the rule model and its digest; ``rules`` ProxyRules to a rule set;
``report`` the rules-report Lease; ``labels`` the labels on Damselfly's objects;
``scheduler``, ``schedulerclient`` and ``hashring`` the peer-scheduler wire.
``peerwire`` the peer-peer wire (the piece stream, one piece by Range).
Nothing here imports a runtime (peer, scheduler, operator): see ``.importlinter``.
"""
