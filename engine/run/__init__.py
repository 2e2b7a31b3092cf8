"""`emoengine.engine.run`: one run of the engine. The threaded pipeline with bounded queues (pipeline.py), the
record a frame carries through it (records.py), `run_pipeline` that opens, drives and summarises (driver.py),
`--resume` (resume.py) and the offline demo (demo.py).
"""
