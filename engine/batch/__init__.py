"""`emoengine.engine.batch`: many videos. The work items, the worker that runs `run` on each and the aggregation
(videos.py), driven on Ray Data by ray_driver.py.
"""
