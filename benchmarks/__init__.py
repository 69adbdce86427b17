"""The otcl benchmark suite: ``python -m benchmarks --out benchmarks/results``.

Every case runs in a fresh Python process (``python -m benchmarks.case <kind> <params>``) so that
one case's heap, page-fault and thread-pool state cannot bias another. Each reported row is a
ratio against a baseline measured in the same run, next to its absolute time. See
``benchmarks/README.md`` for what every row means.
"""
