"""`python -m streams screenshot`: a PNG of the dashboard (or any worker page) in headless Chromium.

Drives Debian's chromium (`apt-get install chromium`; or CHROMIUM=/path) through Playwright's
Python package; `playwright install` is never needed, since no browser is downloaded. The pages need a
login: the reviewer token is read from `--token-file` or $STREAMS_REVIEW_TOKEN, never from the command
line (which other users of the machine can read), and sent as a bearer token.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: Flags that work in containers and on machines without internet.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


def chromium_path() -> str | None:
    """$CHROMIUM, else Debian's /usr/bin/chromium, else chromium on PATH; None when there is none."""
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@contextmanager
def browser() -> Iterator[Any]:
    """A headless Chromium (Playwright Browser), closed on exit; Playwright gives each launch a fresh
    temporary profile (it refuses --user-data-dir)."""
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    if path is None:
        raise RuntimeError("no Chromium found: apt-get install -y chromium (or set CHROMIUM=/path/to/chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def screenshot(url: str, out: Path, width: int = 1400, height: int = 900, full_page: bool = True,
               token: str | None = None) -> Path:
    """Load the page (as the reviewer whose token is given), wait until its plots are in, and write a PNG."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with browser() as b:
        page = b.new_page(viewport={"width": width, "height": height}, extra_http_headers=headers)
        page.goto(url, wait_until="load", timeout=30_000)
        page.wait_for_selector("svg.plot, .item, body", timeout=15_000)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=full_page)
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m streams screenshot", description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:6066/dashboard/",
                        help="page to capture (default: the dashboard of a worker on the default port)")
    parser.add_argument("--out", default="dashboard.png", help="PNG file to write")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--token-file", type=Path,
                        help="file holding a reviewer token (`python -m streams review reviewers add NAME`); "
                             "default: $STREAMS_REVIEW_TOKEN")
    args = parser.parse_args(argv)
    token = (args.token_file.read_text().strip() if args.token_file else os.environ.get("STREAMS_REVIEW_TOKEN"))
    if not token:
        print("note: no reviewer token (--token-file or STREAMS_REVIEW_TOKEN): a worker with authentication on "
              "shows its login form", file=sys.stderr)
    try:
        path = screenshot(args.url, Path(args.out), args.width, args.height, token=token)
    except Exception as exc:  # noqa: BLE001 - the CLI's boundary: no browser, page unreachable...: one line, exit 1
        print(f"error: screenshot of {args.url} failed: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0
