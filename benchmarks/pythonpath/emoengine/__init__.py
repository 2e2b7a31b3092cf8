"""`import emoengine` from the source tree, uninstalled: put benchmarks/pythonpath on PYTHONPATH.

For a machine where nothing may be installed (the lent GPU machine: benchmarks/device_check). pyproject's
package-dir maps `emoengine` to src/emoengine and each subpackage `emoengine.<x>` to the repository's top-level
folder `<x>` (export, engine, cli, benchmarks); a package whose search path is those two places gives the same
modules. The package's own __init__ (src/emoengine/__init__.py) then runs as it would installed.
"""

from pathlib import Path as _Path

_REPO = _Path(__file__).resolve().parents[3]
__path__ = [str(_REPO / "src" / "emoengine"), str(_REPO)]
__file__ = str(_REPO / "src" / "emoengine" / "__init__.py")
exec(compile(_Path(__file__).read_text(), __file__, "exec"))
