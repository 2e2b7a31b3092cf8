"""Imports every command module so each registers itself on the app."""

from emoengine.cli import export_cmd  # noqa: F401
