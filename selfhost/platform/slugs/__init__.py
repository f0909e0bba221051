"""Slugs: building the archives the platform runs.

- :mod:`.slug`: the byte-reproducible Heroku-format archive, its checks and unpacking;
- :mod:`.packaging`: a compiler's proven final stage plus an app → a slug;
- :mod:`.lint`: what would break when the slug runs from ``/app`` on its stack;
- :mod:`.appsource`: an app for an app-compile job, from git, a tarball or a directory.
"""
