"""Stages: stacks, sandbox engines, the bootstrap pipeline, the stage cache and diffs."""
