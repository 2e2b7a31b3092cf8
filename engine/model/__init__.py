"""`emoengine.engine.model`: EmoNet as the engine runs it. Face crops (crops.py), the model class that owns
pre/post-processing over any backend runner (emonet_model.py), the check that an ONNX file is our export
(model_check.py), and the taps a run writes (tapset.py).
"""
