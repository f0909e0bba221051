"""The platform's HTTP API (the part of Heroku's Platform API that selfhost needs).

- :mod:`.server`: the server, its route table and the app, release, slug and config
  routes;
- :mod:`.dynos`: dyno, formation and log routes; :mod:`.jobs`: compile-job and stage routes;
- :mod:`.auth`: who is calling (the master token, app-scoped dyno tokens) and what
  they may do;
- :mod:`.errors`: the one place where a refusal becomes an HTTP status;
- :mod:`.streams`: streamed response bodies (dyno output, logs, files);
- :mod:`.ranges`: Heroku's list ranges (``Range``, ``Content-Range``, ``Next-Range``).
"""
