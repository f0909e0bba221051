"""Compile jobs.

- :mod:`.service`: the daemon's side: the record of every job, leases, results, the
  app-compile release and the stage store;
- :mod:`.queue`: the queue (Huey on SQLite for one machine, Redis for many);
- :mod:`.worker`: the ``worker`` process type of every compiler slug (runs in a dyno).
"""
