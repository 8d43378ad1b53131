"""The scheduler: tracks hosts, tasks and peers, and picks parents for peers."""
