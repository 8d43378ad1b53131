"""The egress guard and HTTP helpers: which addresses the peer may dial, Range parsing, hop-by-hop headers."""
