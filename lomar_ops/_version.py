"""The one version number of the distribution (both packages, lomar_ops and lomar, which
takes it from here): pyproject.toml reads it from this file, so the source tree and an
installed wheel agree. It lives in the bottom package, so lomar_ops imports nothing of
lomar."""

__version__ = "0.1.0"
