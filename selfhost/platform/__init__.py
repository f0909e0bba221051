"""Platform: slugs, the platform store and API, dynos, formation and compile workers.

This subpackage is named ``platform`` on purpose; it lives inside ``selfhost`` so it
never shadows Python's own ``platform`` module. Its parts, by responsibility:

- :mod:`.slugs`: building slugs (the format, packing a final stage, lints, fetching apps);
- :mod:`.store`: the platform's state (SQLite and content-addressed blobs);
- :mod:`.runtime`: dynos, the formation's supervisor, and each dyno's network;
- :mod:`.jobs`: compile jobs (the daemon's service, the queue, the worker process type);
- :mod:`.api`: the HTTP API (routes, authentication and token scopes, errors);
- :mod:`.paths` (every path of a platform directory), :mod:`.errors` (what the
  platform refuses, without HTTP), :mod:`.tls` (the certificate authority of
  rendezvous), :mod:`.daemon` (assembles the parts and serves),
  :mod:`.client` (the Python client), ``app/`` (the platform's own app).
"""
