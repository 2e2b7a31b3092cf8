"""report.html for every run and index.html for every batch: pages a person opens from a file:// URL.

`build_report(folder)` works only from the files of a finished run folder, so `run` (at commit) and
`emoengine report FOLDER` (rebuilding, also for runs made before reports existed) share one code path.
"""

from emoengine.engine.outputs.report.build import build_report, rebuild, render_report
from emoengine.engine.outputs.report.rundata import REPORT_NAME

__all__ = ["REPORT_NAME", "build_report", "rebuild", "render_report"]
