"""upsync: an nginx-syntax reverse proxy whose upstreams follow a service registry live."""

__version__ = "0.1.0"
SERVER_NAME = f"upsync/{__version__}"
