"""The version of otcl, defined once: pyproject.toml reads it (setuptools dynamic version)."""

__version__ = "0.2.0.dev0"
