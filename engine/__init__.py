"""`emoengine.engine`: run time. Frame sources, face detectors, crops, the EmoNet model class over one runner
contract and its backends (engine.backends), the threaded pipeline, tracking, outputs and writers, `batch` on
Ray. No torch needed except by the torch backends.
"""
