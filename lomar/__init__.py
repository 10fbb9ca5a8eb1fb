"""lomar: LoMaR (Local Masked Reconstruction) pretraining of vision transformers:
the models (``lomar.models``), the jobs (``lomar.engine``, the ``lomar`` command)
and their parts. The fused ops live in the sibling package ``lomar_ops``.

Kept import-light (no torch here): the command line starts fast."""

from ._version import __version__

__all__ = ["__version__"]
