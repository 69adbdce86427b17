"""The ``otcl`` command line: usage errors, ``otcl check`` and ``python -m otcl``."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from otcl.cli import main


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["study", "--seeds", "0"],
        ["study", "--seeds", "three"],
        ["study", "--epochs", "-2"],
        ["study", "--seed", "-1"],
        ["study", "--quick", "--full"],
        ["study", "--tiny", "--quick"],
        ["study", "--device", "tpu"],
        ["study", "--sections", "equivalences,bogus"],
        ["study", "--sections", ","],
        ["study", "--threads", "0"],
        ["study", "--jobs", "0"],
        ["study", "--dataset", "cifar100"],
        ["study", "--dataset"],
        ["study", "--out"],
        ["study", "--unknown-flag"],
        ["check", "--device", "gpu"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: otcl" in err
    assert "Traceback" not in err


def test_cuda_request_without_cuda_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(SystemExit) as exc:
        main(["study", "--device", "cuda", "--tiny", "--out", "unused"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "CUDA" in err
    assert "usage: otcl study" in err  # the subcommand's usage line, not the top-level one


def test_errors_after_parsing_show_the_subcommand_usage(
        tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    with pytest.raises(SystemExit) as exc:
        main(["study", "--dataset", "cifar10", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: otcl study ") and "--data-dir" in err
    assert not (tmp_path / "o").exists()


def test_module_entry_point_usage_error_has_no_traceback() -> None:
    proc = subprocess.run([sys.executable, "-m", "otcl", "study", "--seeds", "x"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "usage: otcl" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    from otcl import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["study", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--quick", "--full", "--tiny", "--out", "--seed", "--seeds", "--device",
                 "--dataset", "--jobs"):
        assert flag in out
    # argparse does not %-format descriptions: a doubled percent sign would be printed as is
    assert "95% confidence intervals" in " ".join(out.split())
    for argv in (["--help"], ["study", "--help"], ["check", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        assert "%%" not in capsys.readouterr().out


def test_check_passes_on_numpy_and_torch(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    assert main(["check", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("numpy ", "torch-cpu "))]
    assert any(line.startswith("numpy ") for line in rows)
    assert any(line.startswith("torch-cpu ") for line in rows)
    assert not any(line.rstrip().endswith("FAIL") for line in rows)
    assert any("infonce_is_row_projection" in line and line.rstrip().endswith("PASS")
               for line in rows)
    assert "OK: all" in out


def test_check_fails_when_the_solver_is_wrong(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A solver that ignores part of eps must be caught (POT and marginal checks)."""
    pytest.importorskip("ot")
    import otcl

    real = otcl.sinkhorn

    def wrong(cost, a=None, b=None, *, eps, **kw):
        # the balanced log-domain solve silently uses a different eps
        if "rho_a" not in kw and kw.get("domain") == "log":
            eps = 1.2 * eps
        return real(cost, a, b, eps=eps, **kw)

    monkeypatch.setattr(otcl, "sinkhorn", wrong)
    assert main(["check", "--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "FAILED:" in out
    failing = [line for line in out.splitlines() if line.rstrip().endswith("FAIL")]
    assert any("vs POT" in line for line in failing)


def test_study_reports_missing_library_parts(monkeypatch: pytest.MonkeyPatch, tmp_path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import otcl.experiments.study as study

    monkeypatch.setattr(study, "missing_features", lambda sections: ["otcl.torch.GCAUOT"])
    assert main(["study", "--tiny", "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "otcl.torch.GCAUOT" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("argv", "extra"), [(["study", "--tiny", "--out", "unused"], "study"),
                                            (["check"], "torch")])
def test_without_torch_one_line_and_status_2(argv: list[str], extra: str, tmp_path) -> None:
    """A core-only install: torch cannot be imported (simulated by ``sys.modules["torch"] = None``,
    which makes ``import torch`` raise ImportError)."""
    code = ("import sys; sys.modules['torch'] = None; from otcl.cli import main; "
            f"sys.exit(main({argv!r}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [f'otcl {argv[0]} needs PyTorch: pip install "otcl[{extra}]"']
    assert proc.stdout == ""
    assert not (tmp_path / "unused").exists()


def test_bad_arguments_are_reported_before_any_work(tmp_path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A bad value after valid ones still stops the run before anything is written."""
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as exc:
        main(["study", "--tiny", "--out", str(out), "--dataset", "mnist1d", "--seed", "x"])
    assert exc.value.code == 2
    assert not out.exists()
    assert "--seed" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["file", "under-file", "read-only"])
def test_study_out_that_cannot_be_written_is_a_usage_error(
        where: str, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unusable --out is found by creating it and writing a file there, before any section."""
    pytest.importorskip("torch")
    target = tmp_path / "a-file"
    target.write_text("x")
    out = {"file": target, "under-file": target / "sub",
           "read-only": tmp_path / "read-only" / "sub"}[where]
    if where == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only directories")
        out.parent.mkdir()
        out.parent.chmod(0o500)
    try:
        with pytest.raises(SystemExit) as exc:
            main(["study", "--tiny", "--out", str(out), "--no-progress", "--jobs", "1"])
    finally:
        if where == "read-only":
            out.parent.chmod(0o700)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("usage: otcl study ")
    assert f"--out {out}: cannot write" in captured.err and "Traceback" not in captured.err
    assert "[1/3]" not in captured.out  # no section started
    assert target.read_text() == "x"
    assert out == target or not out.exists()


def test_study_out_probe_leaves_only_the_directory(tmp_path) -> None:
    pytest.importorskip("torch")
    from otcl.experiments.study import prepare_out_dir

    out = prepare_out_dir(tmp_path / "a" / "b")
    assert out.is_dir() and list(out.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "missing", "named"),
    [
        ([], {"scipy", "mnist1d", "tqdm"}, "scipy, mnist1d"),  # --no-progress: tqdm not needed
        (["--sections", "equivalences,domain"], {"scipy", "mnist1d"}, "scipy"),
        (["--dataset", "digits"], {"sklearn", "mnist1d"}, "scikit-learn"),
        (["--progress-bars"], {"tqdm", "matplotlib"}, "matplotlib, tqdm"),
    ],
)
def test_study_reports_missing_packages_before_any_work(
        argv: list[str], missing: set[str], named: str, monkeypatch: pytest.MonkeyPatch,
        tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None):
        return None if name in missing else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    progress = [] if "--progress-bars" in argv else ["--no-progress"]
    argv = [a for a in argv if a != "--progress-bars"]
    out = tmp_path / "o"
    assert main(["study", "--tiny", "--out", str(out), *progress, *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        f'otcl study needs {named}: pip install "otcl[study]"']
    assert captured.out == ""
    assert not out.exists()
