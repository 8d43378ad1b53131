"""Which requests go through the swarm: compiled rules, the task id, and where rule sets come from (file, Kubernetes)."""
