"""Imports every command module so each registers itself on the app."""

from emoengine.cli import (  # noqa: F401
    batch_cmd,
    bench_cmd,
    demo_cmd,
    export_cmd,
    info_cmd,
    layers_cmd,
    report_cmd,
    run_cmd,
    serve_cmd,
)
