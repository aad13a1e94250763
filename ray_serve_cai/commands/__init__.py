"""Subcommand groups of the ``ray-serve-cai`` CLI, one module each."""
