"""The integration examples of docs/examples run: each file is imported by path and its
``main()`` called on tiny data. An example whose framework is not installed is skipped."""

from __future__ import annotations

import importlib.util
import math
import runpy
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


def load(name: str) -> ModuleType:
    path = EXAMPLES / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"otcl_example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_tested_and_short() -> None:
    files = sorted(p.stem for p in EXAMPLES.glob("*.py"))
    assert files == ["jax_optax_step", "lightning_module", "torch_loop"]
    for name in files:
        lines = (EXAMPLES / f"{name}.py").read_text("utf-8").splitlines()
        assert len(lines) <= 45, f"docs/examples/{name}.py has {len(lines)} lines"
        # each runs as a script too
        assert 'if __name__ == "__main__":' in lines, f"docs/examples/{name}.py"


def test_torch_loop() -> None:
    pytest.importorskip("torch")
    loss = load("torch_loop").main(n=64, dim=8, batch_size=16, steps=3)
    assert math.isfinite(loss)


def test_lightning_module() -> None:
    pytest.importorskip("torch")
    if importlib.util.find_spec("lightning") is None and (
        importlib.util.find_spec("pytorch_lightning") is None
    ):
        pytest.skip("neither lightning nor pytorch_lightning is installed")
    loss = load("lightning_module").main(n=64, dim=8, batch_size=16, epochs=1)
    assert math.isfinite(loss)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_lightning_module_as_a_script_prints_its_loss(capsys: pytest.CaptureFixture[str]) -> None:
    """``python docs/examples/lightning_module.py`` trains and prints the final loss."""
    pytest.importorskip("torch")
    if importlib.util.find_spec("lightning") is None and (
        importlib.util.find_spec("pytorch_lightning") is None
    ):
        pytest.skip("neither lightning nor pytorch_lightning is installed")
    runpy.run_path(str(EXAMPLES / "lightning_module.py"), run_name="__main__")
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed and math.isfinite(float(printed[-1]))


@pytest.mark.filterwarnings("ignore:Explicitly requested dtype:UserWarning")
def test_jax_optax_step() -> None:
    pytest.importorskip("jax")
    pytest.importorskip("optax")
    module = load("jax_optax_step")
    first = module.main(n=32, dim=8, steps=1)
    later = module.main(n=32, dim=8, steps=30)
    assert math.isfinite(first) and math.isfinite(later)
    assert later < first  # the step trains
