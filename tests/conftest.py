"""Shared test fixtures: array backends and random OT problems.

``backend`` runs a test once per array library: NumPy and PyTorch on the CPU always, CuPy and
CUDA PyTorch only where a CUDA device is present (otherwise the test is skipped, never faked).
Libraries are imported lazily inside the fixture so that collection stays fast.

``problem_factory`` returns :func:`random_problem`, the generator of random NumPy OT problems
that the solver tests share; tests convert its output with ``backend.asarray``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest


@functools.cache
def _torch() -> Any:
    if importlib.util.find_spec("torch") is None:
        return None
    return importlib.import_module("torch")


@functools.cache
def _cupy_with_device() -> Any:
    if importlib.util.find_spec("cupy") is None:
        return None
    try:
        cupy = importlib.import_module("cupy")
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
    except Exception:  # no driver, no device, broken install: CuPy is unusable here
        return None
    return cupy


@dataclass(frozen=True)
class Backend:
    """One array library (and device) that the tests run on.

    ``asarray`` copies a NumPy array into the library (``dtype`` a name such as ``"float32"``;
    ``None`` keeps the NumPy dtype, e.g. for boolean masks); ``to_numpy`` copies back to float
    NumPy arrays on the host.
    """

    name: str
    module: Any
    device: str | None = None

    def asarray(self, x: Any, dtype: str | None = "float64") -> Any:
        x = np.asarray(x)
        if dtype is not None:
            x = x.astype(dtype)
        if self.name.startswith("torch"):
            # torch.tensor copies, so a test can never alias the caller's NumPy buffer
            return self.module.tensor(x, device=self.device)
        if self.name == "cupy":
            return self.module.array(x)
        return x.copy()

    def to_numpy(self, x: Any) -> np.ndarray:
        if self.name.startswith("torch"):
            return x.detach().cpu().numpy()
        if self.name == "cupy":
            return self.module.asnumpy(x)
        return np.asarray(x)

    def dtype(self, name: str) -> Any:
        """The library's dtype object called ``name`` (``"float32"``, ``"float64"``, ...)."""
        if self.name == "numpy":
            return np.dtype(name)
        return getattr(self.module, name)

    def device_of(self, x: Any) -> str:
        """A comparable description of where ``x`` lives."""
        if self.name.startswith("torch"):
            return str(x.device)
        if self.name == "cupy":
            return f"cuda:{x.device.id}"
        return "cpu"

    def __repr__(self) -> str:
        return self.name


def make_backend(name: str) -> Backend:
    """Build a :class:`Backend` by name, or skip the calling test when it is unavailable."""
    if name == "numpy":
        return Backend("numpy", np)
    if name == "torch":
        torch = _torch()
        if torch is None:
            pytest.skip("PyTorch is not installed")
        return Backend("torch", torch, "cpu")
    if name == "torch-cuda":
        torch = _torch()
        if torch is None or not torch.cuda.is_available():
            pytest.skip("no CUDA device for PyTorch")
        return Backend("torch-cuda", torch, "cuda")
    if name == "cupy":
        cupy = _cupy_with_device()
        if cupy is None:
            pytest.skip("CuPy with a CUDA device is not available")
        return Backend("cupy", cupy)
    raise ValueError(f"unknown backend {name!r}")


BACKEND_PARAMS = [
    pytest.param("numpy", id="numpy"),
    pytest.param("torch", id="torch"),
    pytest.param("cupy", id="cupy", marks=pytest.mark.gpu),
    pytest.param("torch-cuda", id="torch-cuda", marks=pytest.mark.gpu),
]


@pytest.fixture(scope="session", params=BACKEND_PARAMS)
def backend(request: pytest.FixtureRequest) -> Backend:
    """Every available array library: NumPy, CPU PyTorch; CuPy and CUDA PyTorch on a GPU."""
    return make_backend(request.param)


@pytest.fixture(scope="session", params=["numpy", "torch"])
def cpu_backend(request: pytest.FixtureRequest) -> Backend:
    """The CPU libraries only (for tests about host-side behaviour such as warnings)."""
    return make_backend(request.param)


def random_problem(
    rng: np.random.Generator,
    n: int,
    m: int,
    *,
    batch: int | None = None,
    cost_scale: float = 1.0,
    mass_b: float = 1.0,
    zero_a: int = 0,
    zero_b: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random float64 OT problem ``(C, a, b)``.

    ``C`` has entries uniform in ``[0, cost_scale]`` and shape ``(n, m)`` (``(batch, n, m)``
    when ``batch`` is given); ``a`` sums to 1 and ``b`` to ``mass_b`` per problem, with entries
    bounded away from zero except for ``zero_a`` (``zero_b``) entries set exactly to zero.
    """
    lead = () if batch is None else (batch,)
    C = cost_scale * rng.random((*lead, n, m))
    a = rng.random((*lead, n)) + 0.05
    b = rng.random((*lead, m)) + 0.05
    if zero_a:
        a[..., rng.choice(n, zero_a, replace=False)] = 0.0
    if zero_b:
        b[..., rng.choice(m, zero_b, replace=False)] = 0.0
    a = a / a.sum(axis=-1, keepdims=True)
    b = mass_b * b / b.sum(axis=-1, keepdims=True)
    return C, a, b


@pytest.fixture(scope="session")
def problem_factory() -> Any:
    """:func:`random_problem` (a session fixture, so hypothesis tests may use it)."""
    return random_problem


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> Any:
    """Small tensors run fastest on one thread; two threads on a busy 2-core machine are slow."""
    torch = _torch()
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _numpy_blas_threads() -> list[int]:
    """Thread counts of NumPy's BLAS pools, as threadpoolctl reports them: the libraries inside
    NumPy's installation (a wheel's ``numpy.libs``), or every BLAS library when NumPy has none
    of its own (a NumPy linked against a system BLAS)."""
    import os

    import threadpoolctl

    site = os.path.dirname(os.path.dirname(os.path.abspath(np.__file__)))
    dirs = tuple(os.path.join(site, name) + os.sep for name in ("numpy.libs", "numpy"))
    pools = [p for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
    own = [p for p in pools if os.path.abspath(p["filepath"]).startswith(dirs)]
    return [p["num_threads"] for p in own or pools]


@pytest.fixture
def numpy_blas_threads() -> Any:
    """:func:`_numpy_blas_threads` (needs threadpoolctl)."""
    pytest.importorskip("threadpoolctl")
    return _numpy_blas_threads
