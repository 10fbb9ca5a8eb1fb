"""lomar's version: the distribution's one number, kept in lomar_ops/_version.py (the
bottom package, so that lomar_ops imports nothing of lomar). Read from that file
without importing lomar_ops, which would import torch: ``lomar --help`` stays quick."""

import ast
import importlib.util
from pathlib import Path


def _read() -> str:
    spec = importlib.util.find_spec("lomar_ops")  # locates the package, runs none of it
    source = Path(spec.origin).with_name("_version.py").read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and node.targets[0].id == "__version__":
            return ast.literal_eval(node.value)
    raise RuntimeError("lomar_ops/_version.py holds no __version__")


__version__ = _read()
