"""The strategies' names: the one place that says which name is the baseline, which the
single-task reference, and in which order the report lists them.

A strategy's name is its config file's stem (``conf/strategy/NAME.yaml``, whose ``name:``
repeats it), recorded as ``config.strategy`` in metrics.json; its callback class records the
same name under ``schedule.strategy`` (tests/test_layout.py checks all three agree).
"""

#: The plain multi-task baseline (every task, weight 1) each configuration is paired with.
BASELINE = "mtl"
#: Single-task learning, the reference of Δm%.
REFERENCE = "stl"
#: The order strategies are listed in: MTL (the paired baseline), the dropping strategies, the
#: field's methods (loss weighting, then gradient aggregation), STL (the reference) last.
#: Strategies not listed here follow the listed methods alphabetically, before STL.
STRATEGY_ORDER = (
    BASELINE, "random_drop", "dst", "dst_shuffled", "dst_uniform", "dst_norm_only",
    "si", "rlw", "dwa", "uw", "gradnorm", "famo",
    "mgda", "pcgrad", "cagrad", "imtlg", "nashmtl", "alignedmtl", "upgrad",
    "fairgrad", "gradvac", "graddrop", "config", "dbmtl",
    REFERENCE,
)  # fmt: skip
