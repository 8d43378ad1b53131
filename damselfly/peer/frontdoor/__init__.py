"""What a client talks to: the proxy port, cached responses, pass-through and tunnels."""
