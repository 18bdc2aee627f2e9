"""The HTTP front end: listeners, client connections, routing, upstream exchanges."""
