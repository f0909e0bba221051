"""Running slugs: dynos and their network.

- :mod:`.dynos`: one-off and formation dynos in a fresh sandbox each, their lifecycle,
  output and logs, and the supervisor that keeps each app's formation running;
- :mod:`.network`: a network namespace per dyno, connected by pasta, behind nftables
  rules, prepared ahead in a pool;
- :mod:`.rendezvous`: attaching a client to a one-off dyno over TLS, as ``heroku run``
  does (not yet wired to the dynos' stdin).
"""
