"""Read-only views of the running proxy: upstream_show."""
