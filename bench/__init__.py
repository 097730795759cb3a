"""capsbench: Capsule Networks versus max-pooling ConvNets on the claims made for capsules."""

from importlib import metadata

try:  # one version number: pyproject.toml's
    __version__ = metadata.version("capsbench")
except metadata.PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "unknown"
