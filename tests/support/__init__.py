"""Helpers every test needs: free ports, real subprocesses, waiting for readiness."""
