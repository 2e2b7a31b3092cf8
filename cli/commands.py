"""Imports every command module so each registers itself on the app."""

from emoengine.cli import batch_cmd, bench_cmd, demo_cmd, export_cmd, info_cmd, layers_cmd, run_cmd  # noqa: F401
