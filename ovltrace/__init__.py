"""ovltrace: per-container observability of shared overlayfs upper filesystems."""

# the one place of the version (pyproject reads it; the image has no package metadata)
__version__ = "0.1.0"
