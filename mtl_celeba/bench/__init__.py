"""mtl-bench: training throughput (:mod:`.throughput`) and a small real sweep (:mod:`.sweep`).

The names here are light (no torch): the command line of :mod:`.__main__` uses them.
"""

from mtl_celeba.config import PROJECT_ROOT

#: mtl-bench's runs for each backbone, in the order they run.
VARIANTS = ("plain", "model_only", "fast", "naive", "mtl", "dst")
BENCH_OUT = PROJECT_ROOT / "outputs" / "bench" / "bench.json"
