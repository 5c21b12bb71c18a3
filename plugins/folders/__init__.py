"""Folders of image files, one folder per class (the generic fallback reader)."""
