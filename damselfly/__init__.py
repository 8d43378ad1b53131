"""Damselfly: a Kubernetes-native peer-to-peer cache for large HTTP downloads."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("damselfly")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
