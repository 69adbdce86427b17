"""The documentation runs: every ```python block of README.md and docs/ executes, and the site
builds with ``mkdocs build --strict``.

Blocks of one page run in order in one namespace (a page reads like a notebook), in a temporary
working directory. Blocks fenced with another language (```bash, ```text, ...) are not run. An
``otcl.ConvergenceWarning`` raised by an example is an error: an example that demonstrates
non-convergence must catch the warning itself.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# each block must stay small; the limit is generous for a loaded two-core machine
BLOCK_SECONDS = 15.0

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass(frozen=True)
class Block:
    """A fenced code block: its language tag, first line number (1-based) and source."""

    lang: str
    line: int
    source: str


def fenced_blocks(text: str) -> list[Block]:
    """Every fenced block of a Markdown text (at any indentation, e.g. inside admonitions)."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        indent, fence = m["indent"], m["fence"]
        info = m["info"].strip()
        lang = info.split()[0].lstrip("{.").rstrip("}") if info else ""
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            close = _FENCE.match(lines[j])
            if (
                close is not None
                and close["fence"][0] == fence[0]
                and len(close["fence"]) >= len(fence)
                and not close["info"].strip()
            ):
                break
            line = lines[j]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            j += 1
        if j == len(lines):
            raise ValueError(f"unclosed code fence opened on line {i + 1}")
        blocks.append(Block(lang, i + 2, textwrap.dedent("\n".join(body)) + "\n"))
        i = j + 1
    return blocks


def doc_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def _page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_fence_parser_tells_languages_apart() -> None:
    text = (
        "intro\n```python\nx = 1\n```\n\n```bash\nmake test\n```\n"
        "!!! note\n    ```python\n    y = 2\n    ```\n````text\n```python\nnot code\n```\n````\n"
    )
    blocks = fenced_blocks(text)
    assert [(b.lang, b.line) for b in blocks] == [
        ("python", 3),
        ("bash", 7),
        ("python", 11),
        ("text", 14),
    ]
    assert blocks[2].source == "y = 2\n"
    assert blocks[3].source == "```python\nnot code\n```\n"
    with pytest.raises(ValueError, match="unclosed"):
        fenced_blocks("```python\nx = 1\n")


def test_pages_have_runnable_examples() -> None:
    """The parser finds the examples (guards against a test that silently runs nothing)."""
    counts = {
        _page_id(p): sum(b.lang == "python" for b in fenced_blocks(p.read_text("utf-8")))
        for p in doc_pages()
    }
    assert counts["README.md"] >= 2
    assert counts[str(Path("docs") / "index.md")] >= 3
    assert sum(counts.values()) >= 30, counts


@pytest.mark.parametrize("page", doc_pages(), ids=_page_id)
def test_python_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import otcl

    blocks = [b for b in fenced_blocks(page.read_text("utf-8")) if b.lang == "python"]
    if not blocks:
        pytest.skip("no python blocks on this page")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for block in blocks:
        where = f"{_page_id(page)}:{block.line}"
        code = compile(block.source, where, "exec")
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("error", otcl.ConvergenceWarning)
            try:
                exec(code, namespace)
            except Exception as exc:
                raise AssertionError(f"the example at {where} failed: {exc!r}") from exc
        elapsed = time.perf_counter() - start
        assert elapsed < BLOCK_SECONDS, f"the example at {where} took {elapsed:.1f} s"


def test_api_reference_covers_every_module() -> None:
    """Every public module of otcl has a ``::: module`` directive in docs/api/."""
    documented = set()
    for page in (DOCS / "api").glob("*.md"):
        documented |= set(re.findall(r"^:::\s+([\w.]+)", page.read_text("utf-8"), re.MULTILINE))
    modules = set()
    for path in (ROOT / "otcl").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] in ("__init__", "__main__") or any(p.startswith("_") for p in parts):
            continue
        modules.add(".".join(parts))
    assert modules, "no modules found"
    missing = sorted(modules - documented)
    assert not missing, f"modules without an API page entry in docs/api/: {missing}"


_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?")


def test_quoted_benchmark_numbers_were_measured() -> None:
    """Every number quoted in the measured section of the performance guide appears in the
    committed benchmark results. After ``make bench`` rewrites them, update the guide."""
    guide = (DOCS / "guides" / "performance.md").read_text("utf-8")
    start, end = guide.find("<!-- measured:start"), guide.find("<!-- measured:end -->")
    assert 0 <= start < end, "the performance guide lost its measured:start/end markers"
    section = guide[guide.index("-->", start) + 3 : end]
    quoted = set(_NUMBER.findall(section))
    results = ROOT / "benchmarks" / "results" / "results.md"
    measured = set(_NUMBER.findall(results.read_text("utf-8")))
    assert len(quoted) > 20, "the measured section quotes (almost) no numbers"
    missing = sorted(quoted - measured, key=float)
    assert not missing, f"numbers in docs/guides/performance.md not found in {results}: {missing}"


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed")
def test_site_builds_strict(tmp_path: Path) -> None:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "api" / "solvers.html").is_file()  # use_directory_urls: false


def test_benchmark_tables_are_generated_from_the_committed_run() -> None:
    """``results.md``, ``summary.md`` and the README's table are what the report code makes of
    the committed ``results.json`` (nobody edited a number by hand, nothing is stale)."""
    if str(ROOT) not in sys.path:  # ``benchmarks`` is a top-level package of the checkout
        sys.path.insert(0, str(ROOT))
    import json

    from benchmarks.report import add_ratios, markdown
    from benchmarks.runner import README_END, README_START
    from benchmarks.targets import summary_markdown

    results = ROOT / "benchmarks" / "results"
    run = json.loads((results / "results.json").read_text("utf-8"))
    add_ratios(run["cases"])
    summary = summary_markdown(run)
    assert (results / "summary.md").read_text("utf-8") == summary
    assert (results / "results.md").read_text("utf-8") == markdown(run)
    readme = (ROOT / "README.md").read_text("utf-8")
    block = readme[readme.index(README_START) + len(README_START) : readme.index(README_END)]
    assert block.strip("\n") == summary.strip("\n"), "README table is stale: run make bench"


def test_docstrings_hold_no_sphinx_roles() -> None:
    """The API pages render docstrings with mkdocstrings, which shows a Sphinx role
    (``:func:`x```) as raw text: cross-references are written ``[`x`][otcl.x]`` instead."""
    role = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj|const):`")
    found = [f"{path.relative_to(ROOT)}:{n}"
             for path in sorted((ROOT / "otcl").rglob("*.py"))
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if role.search(line)]
    assert not found, found


def test_cli_guide_quotes_the_committed_raw_probe_accuracies() -> None:
    """The MNIST-1D row of the dataset table quotes the raw-input probe accuracy of the committed
    example reports (``examples/study-*/results.json``), rounded to 0.1 point."""
    import json

    guide = (DOCS / "guides" / "cli.md").read_text("utf-8")
    row = next(line for line in guide.splitlines() if line.startswith("| `mnist1d`"))
    quoted = [float(x) for x in re.findall(r"(\d+(?:\.\d+)?)%", row)]
    measured = []
    for size in ("quick", "full"):
        run = json.loads((ROOT / "examples" / f"study-{size}" / "results.json").read_text("utf-8"))
        measured.append(round(100 * run["datasets"]["mnist1d"]["raw_probe_accuracy"], 1))
    assert quoted == measured, (row, measured)


def test_method_table_names_callables_that_exist() -> None:
    """Every row of the method-connection table in concepts.md names otcl callables (bare names
    are attributes of ``otcl``) that exist; no row claims a method is missing."""
    import importlib

    import otcl

    page = (DOCS / "concepts.md").read_text("utf-8")
    start = page.index("| method | \\(d_M\\)")
    rows = page[start:page.index("\n\n", start)].splitlines()[2:]
    assert len(rows) >= 8, rows
    for row in rows:
        cell = row.rstrip(" |").rsplit(" | ", 1)[1]
        names = re.findall(r"`([\w.]+)(?:\(|`)", cell)
        assert names, f"no otcl callable named in {row!r}"
        for name in names:
            module_name, _, attr = name.rpartition(".")
            module = importlib.import_module(module_name) if module_name else otcl
            assert callable(getattr(module, attr, None)), f"{name} (row {row!r}) does not exist"


def test_claim_figures_are_those_the_cli_guide_describes() -> None:
    """The committed example reports have a ``claim_<key>.png`` for every claim decided on seeds
    and none for the two exact-identity claims, as the guide of the ``otcl`` command says."""
    import json

    guide = " ".join((DOCS / "guides" / "cli.md").read_text("utf-8").split())
    assert "all but the two exact-identity checks of section 1" in guide
    for size in ("quick", "full"):
        folder = ROOT / "examples" / f"study-{size}"
        run = json.loads((folder / "results.json").read_text("utf-8"))
        exact = [c["key"] for c in run["claims"] if c["direction"] == "exact"]
        assert len(exact) == 2, exact
        for claim in run["claims"]:
            has_figure = (folder / f"claim_{claim['key']}.png").is_file()
            assert has_figure == (claim["direction"] != "exact"), (size, claim["key"])
