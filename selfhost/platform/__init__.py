"""Platform: slugs, the platform store and API, dynos, formation and compile workers.

This subpackage is named ``platform`` on purpose; it lives inside ``selfhost`` so it
never shadows Python's own ``platform`` module.
"""
