"""The reader's site, checked in a real browser, offline.

The built book (``_build/html``) is served on 127.0.0.1 and headless Chromium visits every page
through the DevTools protocol (over a pipe: no extra Python package). Every other host is made
unreachable, so a page that needs the network fails here. For each page the test checks:

* no JavaScript error (uncaught exception, ``console.error``) and no failed request;
* every formula rendered by the self-hosted MathJax 3: each ``.math`` element holds an
  ``mjx-container``, no ``mjx-merror`` (a TeX error) and no raw ``$…$``/``\\(…\\)`` left in prose;
* every image loaded (``naturalWidth > 0``);
* every saved widget view rendered by the self-hosted widget manager;
* every internal link resolves: the file exists and its ``#fragment`` is an id on the target page.

Search is tried once (``search.html?q=LoRA`` must list results), and screenshots of a few key pages
(one also in the theme's dark mode) are saved under ``_build/screenshots/`` for review.

Which site: ``SITE_HTML`` (``make site-check`` points it at the ``_build/html`` that ``build-check``
just built); unset, the test builds the book into a temporary folder first.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urldefrag, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "_build" / "screenshots"
# Pages whose screenshots are saved (file stems, matched at the end of the page path), plus the
# first chapter, in light and dark mode.
KEY_PAGES = ("book/intro", "book/notation", "book/api", "book/how_to_run", "book/status")
PAGE_TIMEOUT_S = 60.0


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


# --------------------------------------------------------------------------------------------
# A minimal DevTools-protocol client over --remote-debugging-pipe (fd 3: commands in, fd 4: out).
# --------------------------------------------------------------------------------------------
class Browser:
    """Headless Chromium driven over a pipe; one tab, events recorded per page."""

    def __init__(self, binary: str, profile: str) -> None:
        to_browser_r, self._to_browser_w = os.pipe()
        self._from_browser_r, from_browser_w = os.pipe()

        def wire_fds() -> None:  # runs in the child: fds 3 and 4 are the protocol pipe
            read_end, write_end = os.dup(to_browser_r), os.dup(from_browser_w)  # out of 3/4's way
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        args = [
            binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
            f"--user-data-dir={profile}", "--remote-debugging-pipe", "--window-size=1280,900",
            # Offline: every host but the local server is unreachable.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(3, 4), preexec_fn=wire_fds,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=True)

    def _read_message(self, deadline: float) -> dict[str, Any]:
        import select

        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self._from_browser_r], [], [], left)
            if ready:
                chunk = os.read(self._from_browser_r, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe (it crashed or exited)")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session: bool = False, timeout: float = PAGE_TIMEOUT_S,
             **params: Any) -> dict[str, Any]:
        self._next_id += 1
        request: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            request["sessionId"] = self.session
        os.write(self._to_browser_w, json.dumps(request).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            message = self._read_message(deadline)
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def wait_for_event(self, method: str, timeout: float = PAGE_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not any(e["method"] == method for e in self.events):
            self.events.append(self._read_message(deadline))

    def evaluate(self, expression: str, timeout: float = PAGE_TIMEOUT_S) -> Any:
        result = self.call("Runtime.evaluate", session=True, timeout=timeout, expression=expression,
                           awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"evaluating a check failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", session=True, url=url)
        self.wait_for_event("Page.loadEventFired")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", session=True, format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except Exception:  # noqa: BLE001 — closing is best effort; the process is killed below
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser_w)
        os.close(self._from_browser_r)


# The checks run inside each page once it has loaded. It waits for MathJax's typesetting and the
# widget manager, makes lazy images load, then reports what a reader would see.
PAGE_CHECK_JS = r"""
(async () => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const WIDGET_DOM = ".jupyter-widgets, .lm-Widget, .p-Widget, .widget-area";
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  const imgs = [...document.images];
  imgs.forEach(img => { img.loading = "eager"; });
  await Promise.all(imgs.map(img => img.complete ? null :
      new Promise(r => { img.addEventListener("load", r); img.addEventListener("error", r); setTimeout(r, 15000); })));
  const views = document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]');
  for (let i = 0; i < 100 && views.length &&
       document.querySelectorAll(WIDGET_DOM).length === 0; i++) {
    await sleep(100);
  }
  const main = document.querySelector("main") || document.body;
  const mathEls = [...main.querySelectorAll(".math")];
  const unrendered = mathEls.filter(el => !el.querySelector("mjx-container") &&
      !(el.tagName === "MJX-CONTAINER")).map(el => el.textContent.trim().slice(0, 80));
  const errors = [...new Set([...main.querySelectorAll("mjx-merror")]
      .map(el => (el.getAttribute("data-mjx-error") || el.textContent).slice(0, 80)))];
  // Raw TeX left in prose: text outside code, outputs and rendered math that still looks like TeX.
  const walker = document.createTreeWalker(main, NodeFilter.SHOW_TEXT, {
    acceptNode: n => n.parentElement.closest(
      "pre, code, script, style, textarea, mjx-container, .math, .cell_output, .output, .highlight, .bibtex")
      ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT });
  const rawTex = [];
  const texPattern = /\$\$|\$[^$\s][^$]*\$|\\\(|\\\[|\\(frac|alpha|theta|mathbb|mathrm|top|sum|cdot|times|le|ge|sqrt)\b/;
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (texPattern.test(n.textContent)) rawTex.push(n.textContent.trim().slice(0, 80));
  }
  const brokenImages = imgs.filter(img => !(img.complete && img.naturalWidth > 0))
      .map(img => img.getAttribute("src"));
  const widgetViews = views.length;
  const widgetsRendered = document.querySelectorAll(WIDGET_DOM).length;
  const links = [...document.querySelectorAll("a[href]")].map(a => a.href);
  const ids = [...document.querySelectorAll("[id]")].map(el => el.id)
      .concat([...document.querySelectorAll("a[name]")].map(a => a.name));
  return {title: document.title, mathCount: mathEls.length, unrendered, errors, rawTex, brokenImages,
          imageCount: imgs.length, widgetViews, widgetsRendered, links, ids};
})()
"""

SEARCH_JS = r"""
(async () => {
  for (let i = 0; i < 200; i++) {
    const hits = document.querySelectorAll("#search-results li, ul.search li");
    if (hits.length) return hits.length;
    await new Promise(r => setTimeout(r, 100));
  }
  return 0;
})()
"""


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built HTML folder: ``SITE_HTML`` when set, else a fresh build into a temp dir."""
    given = os.environ.get("SITE_HTML")
    if given:
        html = Path(given).resolve()
        if not (html / "index.html").exists():
            pytest.fail(f"SITE_HTML={given} has no index.html: build the book first (make build-check)")
        return html
    out = tmp_path_factory.mktemp("site")
    jb = Path(sys.executable).parent / "jupyter-book"
    proc = subprocess.run([str(jb), "build", str(ROOT), "--path-output", str(out), "--all"],
                          capture_output=True, text=True, cwd=ROOT)
    html = out / "_build" / "html"
    if not (html / "index.html").exists():
        pytest.fail(f"the book did not build:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return html


@pytest.fixture(scope="session")
def server(site: Path):
    handler = functools.partial(QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def site_pages(site: Path) -> list[str]:
    """Every reader-facing HTML page of the site, as paths relative to its root."""
    skip = ("_static/", "_sources/", "_images/", "mathjax/", "widgets/")
    pages = []
    for path in sorted(site.rglob("*.html")):
        rel = path.relative_to(site).as_posix()
        if rel.startswith(skip) or rel == "index.html":  # index.html only redirects to the intro
            continue
        pages.append(rel)
    return pages


def problems_from_events(events: list[dict[str, Any]], origin: str) -> list[str]:
    """JavaScript errors, failed requests and requests that left 127.0.0.1."""
    found = []
    requests: dict[str, str] = {}
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if "/favicon.ico" in json.dumps(params):
            continue  # Chromium asks for it by itself; no page of ours links it
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            found.append(f"JavaScript exception: {str(text)[:300]}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            found.append(f"console.error: {text[:300]}")
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            entry = params["entry"]
            found.append(f"browser error: {entry.get('text', '')[:200]} {entry.get('url', '')}")
        elif method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            requests[params["requestId"]] = url
            if url.startswith(("http:", "https:", "ws:", "wss:")) and not url.startswith(origin):
                found.append(f"request to the network (the site must work offline): {url}")
        elif method == "Network.responseReceived" and params["response"]["status"] >= 400:
            found.append(f"HTTP {params['response']['status']}: {params['response']['url']}")
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            found.append(f"failed to load {requests.get(params['requestId'], '?')}: {params.get('errorText')}")
    return sorted(set(found))


@pytest.fixture(scope="session")
def crawl(site: Path, server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Visit every page once; return per-page results, problems, and search hits."""
    binary = chromium_binary()
    if binary is None:
        pytest.fail("Chromium is needed for the browser test: run 'make setup' (it installs 'chromium')")
    pages = site_pages(site)
    assert pages, f"no HTML pages under {site}"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    browser = Browser(binary, profile)
    results: dict[str, Any] = {}
    chapters = [p for p in pages if p.startswith("notebooks/")]
    shots = {p for p in pages if p.removesuffix(".html").endswith(KEY_PAGES)} | set(chapters[:1])
    try:
        for page in pages:
            browser.open(f"{server}/{page}")
            result = browser.evaluate(PAGE_CHECK_JS)
            result["problems"] = problems_from_events(browser.events, server)
            results[page] = result
            if page in shots:
                stem = page.removesuffix(".html").replace("/", "__")
                browser.screenshot(SCREENSHOTS / f"{stem}.png")
                if page.startswith("notebooks/") or page.endswith("book/intro.html"):
                    browser.evaluate("document.documentElement.dataset.theme = 'dark';"
                                     "document.documentElement.dataset.mode = 'dark'; 1")
                    time.sleep(0.3)
                    browser.screenshot(SCREENSHOTS / f"{stem}__dark.png")
                    if browser.evaluate("(() => { const img = document.querySelector('main .cell_output img');"
                                        " if (img) img.scrollIntoView(); return !!img; })()"):
                        time.sleep(0.3)  # a figure in dark mode: its white background must show
                        browser.screenshot(SCREENSHOTS / f"{stem}__dark_figure.png")
        browser.open(f"{server}/search.html?q=LoRA")
        search_hits = browser.evaluate(SEARCH_JS)
        search_problems = problems_from_events(browser.events, server)
    finally:
        browser.close()
        shutil.rmtree(profile, ignore_errors=True)
    return {"pages": results, "search_hits": search_hits, "search_problems": search_problems}


def page_ids(site: Path, rel: str, crawl: dict[str, Any]) -> set[str]:
    if rel in crawl["pages"]:
        return set(crawl["pages"][rel]["ids"])
    text = (site / rel).read_text(errors="replace")
    return set(re.findall(r'\b(?:id|name)="([^"]+)"', text))


def test_every_page_was_visited(site: Path, crawl: dict[str, Any]) -> None:
    pages = crawl["pages"]
    assert "book/intro.html" in pages and "book/api.html" in pages, sorted(pages)
    chapters = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    toc = (ROOT / "_toc.yml").read_text()
    for nb in chapters:
        if f"notebooks/{nb.stem}" in toc:
            assert f"notebooks/{nb.stem}.html" in pages, f"{nb.name} is in _toc.yml but has no page"


def test_no_javascript_errors_and_no_network(crawl: dict[str, Any]) -> None:
    bad = {page: r["problems"] for page, r in crawl["pages"].items() if r["problems"]}
    assert not bad, "pages with JavaScript errors, failed or off-site requests:\n" + json.dumps(bad, indent=1)


def test_every_formula_rendered(crawl: dict[str, Any]) -> None:
    bad = {}
    for page, r in crawl["pages"].items():
        issues = ([f"not typeset: {t}" for t in r["unrendered"]] + [f"TeX error: {t}" for t in r["errors"]]
                  + [f"raw TeX in the text: {t}" for t in r["rawTex"]])
        if issues:
            bad[page] = issues
    assert not bad, "formulas not rendered by MathJax:\n" + json.dumps(bad, indent=1, ensure_ascii=False)
    assert crawl["pages"]["book/intro.html"]["mathCount"] > 0, "the intro's formula was not found"


def test_every_image_loaded(crawl: dict[str, Any]) -> None:
    bad = {page: r["brokenImages"] for page, r in crawl["pages"].items() if r["brokenImages"]}
    assert not bad, f"images that did not load: {json.dumps(bad, indent=1)}"


def test_widgets_render_from_saved_state(crawl: dict[str, Any]) -> None:
    bad = {page: f"{r['widgetsRendered']} rendered of {r['widgetViews']} saved views"
           for page, r in crawl["pages"].items() if r["widgetViews"] and not r["widgetsRendered"]}
    assert not bad, f"widgets not rendered (self-hosted widget manager): {bad}"


def test_every_internal_link_resolves(site: Path, server: str, crawl: dict[str, Any]) -> None:
    broken = set()
    for page, r in crawl["pages"].items():
        for link in r["links"]:
            if not link.startswith(server):
                continue
            url, fragment = urldefrag(link)
            rel = unquote(urlsplit(url).path).lstrip("/")
            target = site / rel
            if target.is_dir():
                target, rel = target / "index.html", (rel.rstrip("/") + "/index.html").lstrip("/")
            if not target.is_file():
                broken.add(f"{page} -> {rel} (no such file)")
            elif fragment and rel.endswith(".html") and unquote(fragment) not in page_ids(site, rel, crawl):
                broken.add(f"{page} -> {rel}#{fragment} (no such anchor)")
    assert not broken, "broken internal links:\n" + "\n".join(sorted(broken))


def test_search_works_offline(crawl: dict[str, Any]) -> None:
    assert not crawl["search_problems"], crawl["search_problems"]
    assert crawl["search_hits"] > 0, "searching the site for 'LoRA' found nothing"


def test_screenshots_saved(crawl: dict[str, Any]) -> None:
    shots = sorted(p.name for p in SCREENSHOTS.glob("*.png"))
    assert "book__intro.png" in shots, shots
    for shot in SCREENSHOTS.glob("*.png"):
        assert shot.stat().st_size > 5000, f"{shot.name} looks blank"


def test_chapter_pages_have_colab_and_download_buttons(site: Path) -> None:
    config = (ROOT / "_config.yml").read_text()
    repo = re.search(r"^\s*url:\s*https://github\.com/(\S+?)/?\s*$", config, re.M)
    assert repo, "_config.yml needs repository.url (a GitHub URL) for the Colab button"
    chapters = sorted((site / "notebooks").glob("[0-9][0-9]_*.html")) if (site / "notebooks").exists() else []
    for page in chapters:
        html = page.read_text()
        colab = f"https://colab.research.google.com/github/{repo.group(1)}/blob/main/notebooks/{page.stem}.ipynb"
        assert colab in html, f"{page.name}: no Colab launch button pointing at {colab}"
        assert f"_sources/notebooks/{page.stem}.ipynb" in html, f"{page.name}: no .ipynb download button"


# --------------------------------------------------------------------------------------------
# The checks catch what they are for: a page broken on purpose fails the build and the browser check.
# --------------------------------------------------------------------------------------------
BROKEN_PAGE = """# Broken on purpose

A reference to a missing label, {ref}`no-such-label`; a citation of a missing key, {cite}`no_such_key_2099`;
a formula with a TeX error, $\\frac{1}{$; and one that is fine, $x^2$.
"""


@pytest.fixture(scope="session")
def broken_book(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """The book's own configuration around one broken page, built with warnings as errors."""
    book = tmp_path_factory.mktemp("broken")
    shutil.copy(ROOT / "_config.yml", book / "_config.yml")
    (book / "_toc.yml").write_text("format: jb-book\nroot: book/intro\n")
    (book / "book").mkdir()
    (book / "book" / "intro.md").write_text(BROKEN_PAGE)
    (book / "book" / "references.bib").symlink_to(ROOT / "book" / "references.bib")
    (book / "book" / "_ext").symlink_to(ROOT / "book" / "_ext")
    (book / "_vendor").symlink_to(ROOT / "_vendor")
    jb = Path(sys.executable).parent / "jupyter-book"
    proc = subprocess.run([str(jb), "build", str(book), "--path-output", str(book), "--all", "-W", "-n", "--keep-going"],
                          capture_output=True, text=True, cwd=book)
    return proc, book / "_build" / "html"


def test_warnings_as_errors_build_fails_on_a_broken_reference_and_citation(broken_book) -> None:
    proc, _ = broken_book
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"the broken page built without an error:\n{log[-2000:]}"
    assert "no-such-label" in log, f"no warning for the missing label:\n{log[-2000:]}"
    assert "no_such_key_2099" in log, f"no warning for the missing citation:\n{log[-2000:]}"


def test_browser_check_catches_an_unrendered_formula(broken_book) -> None:
    _, html = broken_book
    page = html / "book" / "intro.html"
    assert page.exists(), "--keep-going should still write the broken page"
    binary = chromium_binary()
    if binary is None:
        pytest.fail("Chromium is needed for the browser test: run 'make setup' (it installs 'chromium')")
    handler = functools.partial(QuietHandler, directory=str(html))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    browser = Browser(binary, profile)
    try:
        browser.open(f"http://127.0.0.1:{httpd.server_address[1]}/book/intro.html")
        result = browser.evaluate(PAGE_CHECK_JS)
    finally:
        browser.close()
        shutil.rmtree(profile, ignore_errors=True)
        httpd.shutdown()
        httpd.server_close()
    assert result["mathCount"] == 2, result
    assert result["errors"] or result["unrendered"] or result["rawTex"], (
        f"the page check missed the broken formula: {result}")
