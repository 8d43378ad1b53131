"""Which requests go through the swarm.

Compiled rules, the task id, and where rule sets come from (a file, Kubernetes).
"""
