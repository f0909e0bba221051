"""The Invoke tasks: thin adapters that parse arguments, call library code and report.

Each domain module exposes its tasks; the root ``tasks.py`` assembles them into the
namespace. :func:`selfhost.cli.base.task` is the one place where selfhost errors become
messages and exit codes.
"""
