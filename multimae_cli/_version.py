"""The package version, on its own so that modules inside the package never import the package `__init__`."""

__version__ = "0.1.0"
