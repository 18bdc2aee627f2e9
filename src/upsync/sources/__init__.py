"""Registry sources: each turns one registry into a stream of complete server lists."""
