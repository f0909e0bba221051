"""The platform's HTTP API (the part of Heroku's Platform API that selfhost needs), on
Starlette and uvicorn.

- :mod:`.server`: the server (uvicorn on a socket bound up front);
- :mod:`.web`: endpoints, the caller as a dependency (authentication, token scopes), the
  request as handlers see it, Heroku's error shape and response headers;
- routes per resource, each module with its route table: :mod:`.apps` (account, apps,
  releases, config vars, formation), :mod:`.slugs` (slugs and their blob URLs),
  :mod:`.dynos` (dynos and logs), :mod:`.jobs` (compile jobs and stages);
- :mod:`.models`: request models (a wrong field is a 422 naming it) and response
  models after Heroku's schema;
- :mod:`.auth`: who is calling (the master token, app-scoped dyno tokens);
- :mod:`.errors`: the one place where a refusal becomes an HTTP status;
- :mod:`.streams`: streamed response bodies (dyno output, logs, files);
- :mod:`.ranges`: Heroku's list ranges (``Range``, ``Content-Range``, ``Next-Range``).
"""
