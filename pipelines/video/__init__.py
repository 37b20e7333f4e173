"""Video backends. `video_registry.py` is the head; `video_base.py` is the interface;
`video_encoding.py` turns frames into MP4.
"""
