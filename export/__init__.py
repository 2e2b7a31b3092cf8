"""`emoengine.export`: build time. Our PyTorch EmoNet and its checkpoint loading, the ONNX export (taps,
metadata, verification), the fp16 and int8 conversions, TensorRT engine building and its cache
(engine_cache.py), the one artifact table (artifacts.py) that both `emoengine export` (targets.py) and the
backends' lazy preparation (prepare.py) walk.
Nothing here runs per frame.
"""
