"""The result of an OT solve: potentials plus everything derivable from them, computed lazily
from a snapshot of the inputs."""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from otcl.backend import Array, logsumexp
from otcl.solvers.problem import Problem

__all__ = ["ConvergenceWarning", "NonFiniteGradientWarning", "Transport"]


class ConvergenceWarning(UserWarning):
    """An iterative solve stopped before reaching its tolerance (or met numerical trouble)."""


class NonFiniteGradientWarning(RuntimeWarning):
    """A gradient computed by otcl has NaN or inf entries (it is returned as computed)."""


def warn_nonfinite_gradient(where: str, dtype: Any, eps: Any = None) -> None:
    """Warn ([`NonFiniteGradientWarning`][otcl.NonFiniteGradientWarning]) that the gradient computed
    by ``where`` is not finite, with the likely cause; the caller has already found a non-finite
    entry."""
    at = "" if eps is None else f" at eps = {eps:.3g}"
    warnings.warn(
        f"{where}: the gradient has NaN or inf entries ({dtype}{at}). Likely cause: eps too "
        "small for the dtype (exp((max C - min C) / eps) or a loss term such as RINCE's "
        "exp(q / eps) leaves the floating-point range); raise eps, compute in float64, or "
        "check the inputs for NaN / inf.",
        NonFiniteGradientWarning,
        stacklevel=_caller_stacklevel(),
    )


@dataclass(eq=False)
class Transport:
    """Entropic / unbalanced transport plan in potential form.

    The plan is ``P_ij = exp((f_i + g_j - C_ij) / eps)`` (zero on masked entries). Shapes are
    ``(n,)``, ``(m,)``, ``(n, m)`` for one problem and ``(B, n)``, ... for a batch; they follow the
    input. POT's scalings relate as ``f = eps * log(u)``, ``g = eps * log(v)``.

    Attributes
    ----------
    f, g:
        Dual potentials (arrays of the input's library, dtype and device).
    n_iter:
        Sinkhorn rounds performed (one round = one row and one column update), per problem.
    error:
        The stopping criterion at the last check, per problem: the relative row-marginal error
        ``||P 1 - a||_1 / ||a||_1`` for balanced problems, the fixed-point residual
        ``max |log u_new - log u_old|`` for unbalanced ones. ``None`` in fixed-iteration mode.
    converged:
        ``error <= tol`` per problem; ``None`` in fixed-iteration mode (``tol=None``).
    domain:
        ``"kernel"``, ``"stabilized"`` or ``"log"``: the iteration actually used.
    problem:
        The validated [`Problem`][otcl.solvers.problem.Problem] (batch-first copies of the inputs).
    """

    f: Array
    g: Array
    n_iter: Any
    error: Any
    converged: Any
    domain: str
    problem: Problem = field(repr=False)

    @property
    def eps(self) -> float | Array:
        return self.problem.eps

    def _out(self, x: Array) -> Array:
        return x if self.problem.batched else x[0, ...]

    @cached_property
    def _log_plan(self) -> Array:
        p = self.problem
        f, g = self._batched_potentials()
        return (f[:, :, None] + g[:, None, :]) / p.eps + p.log_kernel()

    def _batched_potentials(self) -> tuple[Array, Array]:
        if self.problem.batched:
            return self.f, self.g
        return self.f[None, :], self.g[None, :]

    @property
    def log_plan(self) -> Array:
        """``log P`` of shape ``(n, m)`` / ``(B, n, m)``; ``-inf`` on masked entries."""
        return self._out(self._log_plan)

    @cached_property
    def plan(self) -> Array:
        """The transport plan ``P`` of shape ``(n, m)`` / ``(B, n, m)``."""
        return self._out(self.problem.xp.exp(self._log_plan))

    @cached_property
    def row_mass(self) -> Array:
        """``P 1`` of shape ``(n,)`` / ``(B, n)``."""
        return self._out(self.problem.xp.exp(logsumexp(self._log_plan, 2, self.problem.xp)))

    @cached_property
    def col_mass(self) -> Array:
        """``P^T 1`` of shape ``(m,)`` / ``(B, m)``."""
        return self._out(self.problem.xp.exp(logsumexp(self._log_plan, 1, self.problem.xp)))

    def _relative_l1(self, mass: Array, target: Array) -> Array:
        xp = self.problem.xp
        if not self.problem.batched:
            mass = mass[None, :]
        err = xp.sum(xp.abs(mass - target), axis=-1) / xp.sum(target, axis=-1)
        return self._out(err)

    @cached_property
    def marginal_error_a(self) -> Array:
        """``||P 1 - a||_1 / ||a||_1`` per problem (not zero for a relaxed side)."""
        return self._relative_l1(self.row_mass, self.problem.a)

    @cached_property
    def marginal_error_b(self) -> Array:
        """``||P^T 1 - b||_1 / ||b||_1`` per problem (not zero for a relaxed side)."""
        return self._relative_l1(self.col_mass, self.problem.b)

    @cached_property
    def transport_cost(self) -> Array:
        """``<C, P>`` per problem (masked entries contribute nothing)."""
        xp = self.problem.xp
        plan = self.plan if self.problem.batched else self.plan[None, ...]
        return self._out(xp.sum(plan * self.problem.cost, axis=(1, 2)))


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _caller_stacklevel() -> int:
    """``stacklevel`` for a warning raised by our caller that points at the first frame outside
    otcl, i.e. at the user's line, however deep inside otcl the warning was raised."""
    frame = sys._getframe(1)  # the function that calls warnings.warn: stacklevel 1
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    return level


def finish_diagnostics(
    n_iter: np.ndarray,
    error: np.ndarray | None,
    tol: float | None,
    batched: bool,
    *,
    warn: bool,
    domain: str,
    trouble: str | None = None,
) -> tuple[Any, Any, Any]:
    """Turn per-problem host arrays into the result's fields and warn about non-convergence."""
    converged = None if error is None else np.asarray(error <= tol) & np.isfinite(error)
    if warn and (trouble is not None or (converged is not None and not converged.all())):
        bad = int((~converged).sum()) if converged is not None else len(n_iter)
        if error is not None:
            worst = float(np.nanmax(error))
            msg = (
                f"{bad} of {len(n_iter)} OT problem(s) did not converge in {int(n_iter.max())} "
                f"rounds ({domain} domain): largest error {worst:.3g} > tol {tol:.3g}."
            )
        else:
            msg = ""
        if trouble is not None:
            msg = f"{trouble} {msg}".strip()
        warnings.warn(msg, ConvergenceWarning, stacklevel=_caller_stacklevel())
    if not batched:
        return (
            int(n_iter[0]),
            None if error is None else float(error[0]),
            None if converged is None else bool(converged[0]),
        )
    return n_iter, error, converged
