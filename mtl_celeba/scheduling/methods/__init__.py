"""The field's multi-task methods beside DST, one module each, all on the strategy contract.

Loss weighting: :mod:`.si`, :mod:`.rlw`, :mod:`.dwa`, :mod:`.uw`, :mod:`.gradnorm`, :mod:`.famo`.
Gradient aggregation (weights from the Gramian of the task gradients w.r.t. the shared
features): :mod:`.mgda`, :mod:`.pcgrad`, :mod:`.cagrad`, :mod:`.imtlg`, :mod:`.nashmtl`,
:mod:`.alignedmtl`, :mod:`.upgrad`. Each is ``strategy=<module name>`` (``conf/strategy/``).
"""
