"""mammoclip: a reproducible re-implementation of Mammo-CLIP (Ghosh et al., MICCAI 2024)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mammoclip")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
