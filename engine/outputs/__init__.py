"""`emoengine.engine.outputs`: everything a run writes. The run folder as a whole (run_outputs.py), writers that
appear only when complete (writers.py), annotators, encoders on their own threads, feature-map pictures, the
per-tap files, the timeline, and report.html (outputs.report).
"""
