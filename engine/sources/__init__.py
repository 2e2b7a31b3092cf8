"""`emoengine.engine.sources`: where frames come from. One iterator of owned RGB frames (frame_source.py) over
a video file or stream (video.py, with container_checks.py refusing truncated files), an image or a folder
(images.py), or a camera; opener.py picks the source for what the user named.
"""
