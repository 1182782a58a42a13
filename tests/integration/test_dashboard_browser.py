"""End to end in headless Chromium: the pages refuse a browser that has not logged in (401), a reviewer logs in
with their token, the dashboard's plots carry data, the reviewer answers on the review page, and the final
`human` result reaches the results topic under their name. Forms posted from other origins (one on the same
site, one cross-site) are refused and publish nothing.

Needs Debian's chromium (`make test` installs it when it can) and the `playwright` Python package (no
browser download). A missing browser fails the test, never skips it.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams import schemas
from streams.localdev.broker import EmbeddedBroker
from streams.ops.screenshot import browser, chromium_path
from tests.integration.harness import SyntheticModel, Worker, collect, drift_cli, produce, run, wait_ready
from tests.integration.test_ops import ops_tasks, wait_for

DRIFT = """window_s = 2
canaries = ["[[label=fresh]] a canary"]
canary_repeats = 2
canary_interval_s = 2
"""


def _need_browser() -> None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing = "the playwright package (pip install -e '.[test]')"
    else:
        missing = "" if chromium_path() else "chromium (apt-get install -y chromium)"
    if missing:  # a failure, never a skip: a skipped browser test would pass `make test` unseen
        pytest.fail(f"the browser test cannot run: {missing} is missing")


def _traffic(worker: Worker, seconds: int, start: int) -> int:
    """Each second: 6 confident items (auto, half of them audited) and 3 doubtful ones (review)."""
    n = start
    for _ in range(seconds):
        batch = []
        for j in range(9):
            rid = f"b{n}"
            text = f"item {n} [[label={'fresh' if n % 2 else 'rotten'}]]" if j < 6 else f"doubtful {n}"
            batch.append((rid.encode(), orjson.dumps({"id": rid, "task": "sentiment", "text": text})))
            n += 1
        run(produce(worker.bootstrap, worker.topic("requests"), batch))
        time.sleep(1)
    return n


class Attacker(ThreadingHTTPServer):
    """Another origin's page: a form that posts an answer to the worker, as a malicious site would."""

    def __init__(self, target: str, rid: str) -> None:
        page = (f'<!doctype html><html><body><form method="post" action="{target}/review/answer">'
                f'<input type="hidden" name="id" value="{rid}"><input type="hidden" name="label" value="fresh">'
                f'<button id="go" type="submit">win a prize</button></form></body></html>').encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def url(self, host: str) -> str:
        return f"http://{host}:{self.server_address[1]}/"


def _forged_post(page: Any, url: str) -> int:
    """Open the attacker's page, press its button; the status the worker answered the forged POST with."""
    page.goto(url)
    with page.expect_response(lambda r: "/review/answer" in r.url and r.request.method == "POST") as info:
        page.click("#go")
    return int(info.value.status)


def _plots(page) -> dict[str, int]:  # type: ignore[no-untyped-def]
    pairs = page.locator('section[data-task="sentiment"] svg.plot').evaluate_all(
        "els => els.map(e => [e.getAttribute('aria-label'), Number(e.dataset.points)])")
    return dict(pairs)


def test_dashboard_plots_and_a_review_answered_in_the_browser(broker: EmbeddedBroker, workdir: Path) -> None:
    _need_browser()
    with SyntheticModel(workdir) as model:
        worker = Worker(broker.bootstrap, ops_tasks(workdir, model.base_url, audit_rate=0.5, drift=DRIFT), workdir,
                        reviewer="browser")
        with worker.process() as proc:
            wait_ready(proc)
            n = _traffic(worker, 4, 0)
            time.sleep(1.5)  # the last partial drift summaries are flushed every second
            baseline = drift_cli(worker, "baseline", "--task", "sentiment", "--last-seconds", "60")
            assert baseline.returncode == 0, baseline.stdout + baseline.stderr
            _traffic(worker, 5, n)
            base = f"http://127.0.0.1:{worker.web_port}"
            with browser() as b:
                page = b.new_page(viewport={"width": 1400, "height": 1000})

                # Not logged in: every protected page answers 401, and the browser gets the login form.
                refused = {path: page.goto(f"{base}{path}").status
                           for path in ("/review/items.json", "/review/", "/dashboard/")}
                assert refused == dict.fromkeys(refused, 401), refused
                assert page.locator("form.login").count() == 1 and page.locator(".item").count() == 0
                page.fill("#token", worker.token + "x")
                page.click('form.login button[type="submit"]')
                assert page.locator(".alert").inner_text() == "unknown or wrong token"
                page.fill("#token", worker.token)
                page.click('form.login button[type="submit"]')
                page.wait_for_load_state("load")
                assert page.url == f"{base}/dashboard/", "back where the login started"
                assert page.locator("nav .viewer").inner_text() == "browser"
                cookie = next(c for c in page.context.cookies() if c["name"] == "llmc_session")
                assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

                seen: list[dict[str, int]] = [{}]

                def dashboard_ready() -> dict[str, int] | None:
                    page.goto(f"{base}/dashboard/")
                    plots = seen[0] = _plots(page)
                    wanted = ("Throughput", "Review rate", "Confidence (calibrated)", "Drift: traffic vs baseline",
                              "Drift: canaries vs baseline", "Review queue")
                    # A line needs two points (samples come every 5 s; one point draws a dot, not a line).
                    return plots if all(plots.get(k, 0) > 0 for k in wanted) and plots["Throughput"] >= 2 else None

                try:
                    before = wait_for(dashboard_ready, 40, "every dashboard plot to have data")
                except AssertionError as exc:
                    raise AssertionError(f"{exc}; data points per plot: {seen[0]}") from None
                # Rendered, not just present: the throughput line and the histogram bars have a size on screen.
                line = page.locator('svg[aria-label="Throughput"] polyline.series').bounding_box()
                bars = page.locator('svg[aria-label="Confidence (calibrated)"] rect.bar')
                assert line is not None and line["width"] > 50 and bars.count() >= 2
                heights = [bars.nth(i).bounding_box()["height"] for i in range(bars.count())]
                assert max(heights) > 100, f"the tallest bar spans most of the plot's height: {heights}"
                assert page.locator('svg[aria-label="Drift: traffic vs baseline"] polyline.threshold').count() >= 1

                # The review page: answer the oldest item, then an audited one, with the label buttons.
                page.goto(f"{base}/review/")
                first = page.locator(".item").first
                first_id = first.get_attribute("data-id")
                first_text = first.locator(".text").inner_text()
                first_audit = "audit sample" in first.inner_text()
                first_model_label = first.locator(".probs b").inner_text()
                assert first.locator('input[name="reviewer"]').count() == 0, "the reviewer is who logged in"
                assert len(first.locator('input[name="csrf"]').get_attribute("value") or "") > 20
                first.locator('button[value="rotten"]').click()
                page.wait_for_load_state("load")
                assert page.locator(".answered").inner_text().startswith(f"answered {first_id}")
                assert page.locator(f'.item[data-id="{first_id}"]').count() == 0, "not offered again"
                audited = page.locator(".item", has_text="audit sample").first
                audited_id = audited.get_attribute("data-id")
                audited_label = audited.locator(".probs b").inner_text()  # agree with the model this time
                audited.locator(f'button[value="{audited_label}"]').click()
                page.wait_for_load_state("load")
                page.goto(f"{base}/review/?order=confidence")
                assert page.locator(f'.item[data-id="{first_id}"]').count() == 0
                assert page.locator(f'.item[data-id="{audited_id}"]').count() == 0

                # Forged answers from other origins while logged in: a page on another port of the same host
                # (same site: the session cookie goes along, the CSRF token is missing) and one on another
                # site (localhost: the SameSite=Strict cookie stays home). Neither publishes anything.
                target_id = page.locator(".item").first.get_attribute("data-id")
                attacker = Attacker(base, str(target_id))
                try:
                    forged = {"same site, other origin": _forged_post(page, attacker.url("127.0.0.1")),
                              "cross-site": _forged_post(page, attacker.url("localhost"))}
                finally:
                    attacker.shutdown()
                    attacker.server_close()
                assert forged == {"same site, other origin": 403, "cross-site": 401}, forged
                page.goto(f"{base}/review/")
                assert page.locator(f'.item[data-id="{target_id}"]').count() == 1, "still waiting for an answer"

                def answers_on_dashboard() -> bool:
                    page.goto(f"{base}/dashboard/")
                    return _plots(page).get("Reliability (answered items)", 0) >= 2
                wait_for(answers_on_dashboard, 20, "the answers to reach the reliability diagram")
                accuracy = page.locator(".kpi", has_text="accuracy on audited items").inner_text()
                n_audited = 1 + first_audit
                correct = 1 + (first_audit and first_model_label == "rotten")
                assert f"{correct / n_audited:.1%}" in accuracy and f"(n={n_audited})" in accuracy, accuracy
                with urllib_open(f"{base}/metrics") as text:
                    metrics = {(s.name, tuple(sorted(s.labels.items()))): s.value
                               for f in text_string_to_metric_families(text) for s in f.samples}
            results = run(collect(broker.bootstrap, [worker.topic("results")],
                                  lambda g: sum(r.json()["decision"] == "human" for r in g) >= 2, timeout_s=30))
            feedback = run(collect(broker.bootstrap, [worker.topic("feedback")], lambda g: len(g) >= 2,
                                   timeout_s=10, settle_s=2))
            statuses = run(collect(broker.bootstrap, [worker.topic("drift_status")], lambda g: len(g) >= 1,
                                   timeout_s=10))
    human = {r.json()["id"]: r.json() for r in results if r.json()["decision"] == "human"}
    assert set(human) == {first_id, audited_id}
    assert human[first_id]["label"] == "rotten" and human[first_id]["reviewer"] == "browser"
    assert {r.json()["id"]: r.json()["reviewer"] for r in feedback} == {first_id: "browser", audited_id: "browser"}, \
        "the forged answers published nothing"
    for record in human.values():
        schemas.validate("classification_result", record)
    assert first_text.startswith(("item", "doubtful"))
    assert before["Throughput"] > 0
    # The drift gauges carry the drift status the dashboard plotted.
    families = statuses[-1].json()["last"]["traffic"]["families"]
    for family, v in families.items():
        key = ("llm_classify_drift_threshold", (("family", family), ("statistic", v["statistic"]),
                                                ("task", "sentiment")))
        assert metrics[key] == pytest.approx(v["threshold"])
    assert any(name == "llm_classify_drift_statistic" for name, _ in metrics)


class urllib_open:  # lower case on purpose: a tiny context manager, GET a URL and give its text
    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> str:
        import urllib.request

        with urllib.request.urlopen(self.url, timeout=5) as resp:
            return resp.read().decode()

    def __exit__(self, *exc: object) -> None:
        return None
