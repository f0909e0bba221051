"""The router for web dynos (the data plane): ``table`` is what the daemon publishes,
``proxy`` routes requests by it, ``service`` runs the proxy as a process of its own."""
