"""`emoengine.engine`: run time, grouped by what each part owns: sources/ (frames in), tracking/ (detectors,
keyframes, flow, ids), model/ (crops, the EmoNet model class, taps), backends/ (one runner contract, one row per
backend), run/ (the pipeline and `run_pipeline`), outputs/ (writers, videos, report.html), batch/ (many videos
on Ray). No torch needed except by the torch backends.
"""
