"""cross_pictures: ImageNet classification over HTTP, fast on few CPU cores."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cross-pictures")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
