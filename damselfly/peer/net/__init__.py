"""The egress guard and HTTP helpers.

Which addresses the peer may dial, Range parsing, hop-by-hop headers.
"""
