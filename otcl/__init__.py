"""otcl: contrastive losses as entropic / unbalanced optimal-transport alignment problems.

The same algorithms run on NumPy, CuPy, PyTorch (CPU and CUDA) and any array-API library.
"""

from otcl.solvers import ConvergenceWarning, Transport, row_projection, sinkhorn

__version__ = "0.1.0"

__all__ = ["ConvergenceWarning", "Transport", "__version__", "row_projection", "sinkhorn"]
