"""End-to-end training-step throughput, LoMaR vs MAE vs BEiT: a thin
entry to ``lomar bench``, whose code lives in the package (lomar/benchmark/) so
that it also works where lomar is installed without this checkout.

    python bench/throughput.py --device cpu --quick --out bench/results/cpu-latest/throughput
    python bench/throughput.py --device cuda --out DIR     (make gpu-check runs the same,
                                                            python -m lomar bench: docs/gpu.md)"""

import sys

from lomar.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
