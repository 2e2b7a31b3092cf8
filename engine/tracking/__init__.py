"""`emoengine.engine.tracking`: where the faces are and who they are. Detectors behind one contract
(tracking.detectors), detection on keyframes with optical flow between them (keyframes.py, flow.py), and ids
and temporal smoothing over time (tracker.py).
"""
