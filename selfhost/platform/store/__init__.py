"""The platform's state.

- :mod:`.db`: :class:`~.db.Store`, SQLite (apps, releases, slugs, config vars, formation,
  tokens, jobs, stages; every public method one transaction) plus content-addressed blobs.
  It knows nothing about HTTP: it raises :class:`selfhost.platform.errors.Refused`.
"""
