"""The distributions: ``python -m build`` makes an sdist and a wheel without warnings; the wheel
ships ``otcl/py.typed`` and the license, its metadata carries the SPDX license and the version
of ``otcl/_version.py``, and the core install needs no SciPy or PyTorch; the sdist carries the
test suite (``tests/conftest.py``) and the docs sources, but no installed npm packages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("build", reason="the build package (dev extra) is not installed")


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(wheel, sdist, build log), built once from the checkout without build isolation (the
    dev extra installs the build backend, setuptools)."""
    out = tmp_path_factory.mktemp("dist")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    (wheel,) = out.glob("otcl-*.whl")
    (sdist,) = out.glob("otcl-*.tar.gz")
    return wheel, sdist, log


def _version() -> str:
    scope: dict[str, str] = {}
    exec((ROOT / "otcl" / "_version.py").read_text("utf-8"), scope)
    return scope["__version__"]


@pytest.mark.slow
def test_build_gives_no_warnings(dists: tuple[Path, Path, str]) -> None:
    _, _, log = dists
    warnings = [line for line in log.splitlines() if "warning" in line.lower()]
    assert not warnings, "\n".join(warnings)


@pytest.mark.slow
def test_wheel_ships_types_license_and_metadata(dists: tuple[Path, Path, str]) -> None:
    wheel, _, _ = dists
    version = _version()
    assert wheel.name.startswith(f"otcl-{version}-")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        dist_info = f"otcl-{version}.dist-info"
        metadata = Parser().parsestr(zf.read(f"{dist_info}/METADATA").decode("utf-8"))
    assert "otcl/py.typed" in names
    assert "otcl/_version.py" in names
    assert f"{dist_info}/licenses/LICENSE" in names, sorted(n for n in names if "dist-info" in n)
    assert not any(n.startswith(("tests/", "docs/", "benchmarks/")) for n in names)
    assert metadata["Version"] == version
    assert metadata["License-Expression"] == "MIT"
    core = [r for r in metadata.get_all("Requires-Dist", []) if "extra ==" not in r]
    assert sorted(r.split(">")[0].split("=")[0].strip() for r in core) == [
        "array-api-compat",
        "numpy",
    ], core
    classifiers = metadata.get_all("Classifier", [])
    assert "Programming Language :: Python :: 3.10" in classifiers
    assert "Typing :: Typed" in classifiers


@pytest.mark.slow
def test_sdist_carries_the_test_suite(dists: tuple[Path, Path, str]) -> None:
    _, sdist, _ = dists
    with tarfile.open(sdist) as tf:
        top = tf.getnames()[0].split("/")[0]
        names = {n.removeprefix(f"{top}/") for n in tf.getnames()}
    for needed in (
        "LICENSE",
        "pyproject.toml",
        "otcl/py.typed",
        "tests/conftest.py",
        "tests/test_packaging.py",
        "docs/index.md",
        "mkdocs.yml",
        "tools/docs-assets/package-lock.json",
    ):
        assert needed in names, needed
    assert not any("node_modules" in n or n.startswith("docs/assets/vendor") for n in names)
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("index", ["", "https://download.pytorch.org/whl/cpu"])
def test_makefile_torch_index_applies_to_the_torch_install_only(index: str, tmp_path) -> None:
    """``make ... TORCH_INDEX=URL`` installs the pinned torch from ``URL`` and everything else
    from pip's configured indexes; without it no index is named (dry run: nothing installed)."""
    venv = tmp_path / "venv"
    proc = subprocess.run(
        ["make", "--dry-run", "--always-make", f"VENV={venv}", f"TORCH_INDEX={index}",
         f"{venv}/bin/.installed"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    installs = [line for line in proc.stdout.splitlines() if " install " in line]
    torch_lines = [line for line in installs if '"torch==' in line]
    assert len(torch_lines) == 1, installs
    if index:
        assert f'--index-url "{index}"' in torch_lines[0]
    others = [line for line in installs if line not in torch_lines]
    assert any('-e ".[dev]"' in line for line in others), installs
    assert not any("--index-url" in line for line in (others if index else installs)), installs
