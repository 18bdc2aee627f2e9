"""Upstream runtime: peers and their state, balancers, keep-alive pool."""
