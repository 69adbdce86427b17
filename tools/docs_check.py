"""Open the built documentation site in headless Chromium, from disk and with no network.

Usage: ``python tools/docs_check.py SITE_DIR [--out DIR] [--chromium PATH] [--page PAGE ...]``
(``make docs-check`` builds the site first). Standard library only: Chromium is driven through
its DevTools protocol over a pipe (``--remote-debugging-pipe``), so no driver is needed.

Checks, each a failure with a message:

* every page of the site: each local ``<a href>``, ``<link href>``, ``<script src>`` and
  ``<img src>`` names a file of the site, and a ``#fragment`` names an id of its target page;
* each opened page (``file://`` URL, host lookups disabled): formulas marked by arithmatex are all
  rendered by KaTeX (``.katex`` elements, no ``.katex-error``), a page with formulas has KaTeX's
  fonts loaded, nothing is printed to the console at error level, no script throws, no resource
  fails to load, and no request leaves the disk (only ``file:``, ``data:``, ``blob:`` URLs);
* the site search (material's search plugin) answers a query with results.

A screenshot of each opened page is saved as ``OUT/<page>.png``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

# The home page, a page of formulas, an API page, the changelog (included from CHANGELOG.md).
DEFAULT_PAGES = ("index.html", "concepts.html", "api/solvers.html", "changelog.html")
FORMULA_PAGES = ("concepts.html",)
SEARCH_QUERY = "sinkhorn"
TIMEOUT = 30.0

# State of a loaded page, as JSON: formulas, rendered formulas, KaTeX errors, KaTeX fonts.
PAGE_STATE_JS = """
(async () => {
  const marked = document.querySelectorAll(".arithmatex");
  const count = () => [...marked].filter((el) => el.querySelector(".katex")).length;
  // formulas are typeset when the theme publishes the page; give a loaded machine 15 s
  for (let i = 0; i < 150 && count() < marked.length; i++) {
    await new Promise((r) => setTimeout(r, 100));
  }
  const rendered = count();
  await document.fonts.ready;
  const fonts = [];
  document.fonts.forEach((f) => {
    const family = f.family.replace(/"/g, "");
    if (family.startsWith("KaTeX") && f.status === "loaded") fonts.push(family);
  });
  return JSON.stringify({
    title: document.title,
    formulas: marked.length,
    rendered: rendered,
    katex_errors: document.querySelectorAll(".katex-error").length,
    katex_fonts_loaded: fonts.length,
  });
})()
"""

# Types a query into material's search box and reports the number of results shown.
SEARCH_JS = """
(async (query) => {
  const input = document.querySelector("input.md-search__input");
  if (!input) return JSON.stringify({error: "no search box on the page"});
  input.focus();
  input.value = query;
  input.dispatchEvent(new Event("input", {bubbles: true}));
  input.dispatchEvent(new KeyboardEvent("keyup", {bubbles: true, key: "g"}));
  for (let i = 0; i < 300; i++) {  // up to 30 s: the index loads in a worker
    const items = document.querySelectorAll(".md-search-result__item");
    if (items.length > 0) return JSON.stringify({results: items.length});
    await new Promise((r) => setTimeout(r, 100));
  }
  const meta = document.querySelector(".md-search-result__meta");
  return JSON.stringify({results: 0, meta: meta ? meta.textContent : null});
})
"""

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-extensions",
    "--mute-audio",
    # no network: every host lookup fails, so a request that leaves the disk cannot succeed
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--window-size=1280,900",
)


# --------------------------------------------------------------------------- static link check


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.refs: list[tuple[str, str]] = []  # (tag, url)
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"] or "")
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"] or "")
        for key in ("href", "src"):
            url = a.get(key)
            if url is None or tag not in ("a", "link", "script", "img"):
                continue
            self.refs.append((tag, url))


def _parse(path: Path, cache: dict[Path, _Links]) -> _Links:
    if path not in cache:
        parser = _Links()
        parser.feed(path.read_text("utf-8", errors="replace"))
        cache[path] = parser
    return cache[path]


def check_links(site: Path) -> tuple[int, list[str]]:
    """Every local reference of every HTML page of ``site`` names an existing file (and id)."""
    problems: list[str] = []
    cache: dict[Path, _Links] = {}
    # 404.html is served by a web server at any depth, so its links are absolute by design
    pages = sorted(p for p in site.rglob("*.html") if p.name != "404.html")
    checked = 0
    for page in pages:
        for tag, url in _parse(page, cache).refs:
            parts = urlsplit(url)
            if parts.scheme or parts.netloc or url.startswith("//"):
                continue  # external (http, mailto, data, ...): not followed here
            where = f"{page.relative_to(site)}: <{tag}> {url!r}"
            if parts.path:
                target = (page.parent / unquote(parts.path)).resolve()
                if target.is_dir():
                    target = target / "index.html"
            else:
                target = page.resolve()
            checked += 1
            if not target.is_file():
                problems.append(f"{where}: no such file {target}")
                continue
            try:
                target.relative_to(site.resolve())
            except ValueError:
                problems.append(f"{where}: points outside the site")
                continue
            fragment = unquote(parts.fragment)
            is_page = target.suffix == ".html" and tag == "a"
            if fragment and is_page and fragment not in _parse(target, cache).ids:
                problems.append(f"{where}: no id {fragment!r} in {target.relative_to(site)}")
    return checked, problems


# ------------------------------------------------------------------------- DevTools over a pipe


class Browser:
    """Headless Chromium spoken to over ``--remote-debugging-pipe`` (fd 3 in, fd 4 out)."""

    def __init__(self, executable: str) -> None:
        self._profile = tempfile.mkdtemp(prefix="otcl-docs-check-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def wire_fds() -> None:  # runs in the child before exec: fd 3 = commands, fd 4 = replies
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.proc = subprocess.Popen(
            [
                executable,
                *CHROMIUM_FLAGS,
                "--remote-debugging-pipe",
                f"--user-data-dir={self._profile}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(3, 4),
            preexec_fn=wire_fds,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def close(self) -> None:
        with contextlib.suppress(Exception):  # the browser may be gone already
            self.send("Browser.close", timeout=5)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_chrome, self._from_chrome):
            os.close(fd)
        shutil.rmtree(self._profile, ignore_errors=True)

    def _read_message(self, deadline: float) -> dict | None:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self._from_chrome], [], [], left)
            if not ready:
                return None
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe (did it crash?)")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(
        self,
        method: str,
        params: dict | None = None,
        session: str | None = None,
        timeout: float = TIMEOUT,
    ) -> dict:
        self._next_id += 1
        message: dict = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply is None:
                raise TimeoutError(f"no answer to {method} within {timeout} s")
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, session: str, timeout: float = TIMEOUT) -> bool:
        deadline = time.monotonic() + timeout
        seen = len(self.events)
        while True:
            for event in self.events[seen:]:
                if event.get("method") == method and event.get("sessionId") == session:
                    return True
            seen = len(self.events)
            message = self._read_message(deadline)
            if message is None:
                return False
            self.events.append(message)

    def evaluate(self, session: str, expression: str) -> object:
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            session,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"script failed: {result['exceptionDetails']}")
        return result["result"].get("value")


def _page_problems(events: list[dict], session: str) -> list[str]:
    """Console errors, uncaught exceptions, failed loads and off-disk requests of one page."""
    problems: list[str] = []
    for event in events:
        if event.get("sessionId") != session:
            continue
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            problems.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exc = details.get("exception", {}).get("description") or details.get("text")
            problems.append(f"uncaught exception: {exc}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            problems.append(f"browser log error: {entry.get('text')} {entry.get('url', '')}")
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            problems.append(f"failed to load: {params.get('errorText')} ({params.get('type')})")
        elif method == "Network.requestWillBeSent":
            url = params.get("request", {}).get("url", "")
            if urlsplit(url).scheme not in ("file", "data", "blob", "about"):
                problems.append(f"request leaves the disk: {url}")
    return problems


def check_pages(site: Path, pages: list[str], out: Path, executable: str) -> list[str]:
    problems: list[str] = []
    browser = Browser(executable)
    try:
        for page in pages:
            path = site / page
            if not path.is_file():
                problems.append(f"{page}: not in the built site")
                continue
            target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
                "sessionId"
            ]
            for domain in ("Page", "Runtime", "Log", "Network"):
                browser.send(f"{domain}.enable", session=session)
            browser.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False},
                session,
            )
            browser.send("Page.navigate", {"url": path.resolve().as_uri()}, session)
            if not browser.wait_for("Page.loadEventFired", session):
                problems.append(f"{page}: did not finish loading within {TIMEOUT} s")
                continue
            state = json.loads(str(browser.evaluate(session, PAGE_STATE_JS)))
            shot = browser.send("Page.captureScreenshot", {"format": "png"}, session)
            png = out / (page.replace("/", "_").removesuffix(".html") + ".png")
            png.write_bytes(base64.b64decode(shot["data"]))
            if page == pages[0]:
                found = json.loads(str(browser.evaluate(session, f"{SEARCH_JS}({SEARCH_QUERY!r})")))
                if not found.get("results"):
                    problems.append(f"{page}: search for {SEARCH_QUERY!r} found nothing: {found}")
                state["search_results"] = found.get("results")
            browser.wait_for("never", session, timeout=0.5)  # collect late console messages
            page_problems = _page_problems(browser.events, session)
            if state["rendered"] != state["formulas"]:
                page_problems.append(
                    f"{state['formulas'] - state['rendered']} of {state['formulas']} formulas "
                    "not rendered by KaTeX"
                )
            if state["katex_errors"]:
                page_problems.append(f"{state['katex_errors']} KaTeX error boxes")
            if page in FORMULA_PAGES and state["formulas"] == 0:
                page_problems.append("no formulas found on a page of formulas")
            if state["formulas"] and not state["katex_fonts_loaded"]:
                page_problems.append("KaTeX's fonts did not load")
            problems += [f"{page}: {p}" for p in page_problems]
            verdict = "ok" if not page_problems else f"{len(page_problems)} problem(s)"
            print(f"  {page}: {json.dumps(state)} -> {png} [{verdict}]")
            browser.send("Target.closeTarget", {"targetId": target})
    finally:
        browser.close()
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("site", type=Path, help="the built site (mkdocs build --site-dir)")
    parser.add_argument("--out", type=Path, default=Path("site-check"), help="screenshots")
    parser.add_argument("--chromium", default=None, help="Chromium executable")
    parser.add_argument("--page", action="append", help="page to open (repeatable)")
    args = parser.parse_args(argv)

    site: Path = args.site
    if not (site / "index.html").is_file():
        print(f"docs-check: {site} holds no built site (index.html)", file=sys.stderr)
        return 2
    executable = args.chromium or next(
        (c for c in ("chromium", "chromium-browser", "google-chrome") if shutil.which(c)), None
    )
    if executable is None:
        print(
            "docs-check: no Chromium found; install it (Debian: apt-get install chromium)",
            file=sys.stderr,
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)

    checked, problems = check_links(site)
    print(f"docs-check: {checked} local links checked in {len(list(site.rglob('*.html')))} pages")
    pages = args.page or list(DEFAULT_PAGES)
    problems += check_pages(site, pages, args.out, executable)
    if problems:
        print(f"docs-check: {len(problems)} problem(s):", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(f"docs-check: {len(pages)} pages open cleanly from disk; screenshots in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
