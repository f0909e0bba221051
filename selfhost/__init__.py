"""selfhost: bootstrap a compiler on a pinned Debian stack and run it on a Heroku-like platform.

Subpackages carry the design's names:

- ``selfhost.stages``: stacks, sandbox engines, the staged pipeline, the cache, diffs;
- ``selfhost.compilers``: the recipe model, source fetchers, one recipe per compiler;
- ``selfhost.platform``: slugs, the platform store and API, dynos, formation, workers;
- ``selfhost.cli``: the Invoke tasks (thin adapters over the above).
"""

__version__ = "0.1.0"
