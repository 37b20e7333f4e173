"""Judging images: text–image agreement (CLIP) and the style presets' quality rules."""
