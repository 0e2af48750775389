"""HTTP transports: thin routers that turn requests into pipeline calls and render its events."""
