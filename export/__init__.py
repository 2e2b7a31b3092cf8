"""`emoengine.export`: build time. Our PyTorch EmoNet and its checkpoint loading, the ONNX export (taps,
metadata, verification), the fp16 and int8 conversions, TensorRT engine building and its cache, the artifacts
backends make once (artifacts.py), and the export-target table behind `emoengine export` (targets.py).
Nothing here runs per frame.
"""
