"""The one version number of the distribution (both packages, lomar and lomar_ops):
pyproject.toml reads it from here, so the source tree and an installed wheel agree."""

__version__ = "0.1.0"
