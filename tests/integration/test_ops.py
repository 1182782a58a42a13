"""Operations on the real broker: /metrics, the review queue (restart, CLI), review-queue alerts to a webhook."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson

from streams import schemas
from streams.localdev.broker import EmbeddedBroker
from tests.integration.harness import (
    FaultProxyProcess,
    SyntheticModel,
    Worker,
    collect,
    http_json,
    produce,
    run,
    scrape,
    total,
    wait_ready,
    write_tasks,
)

TRACEPARENT = ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
PRICE = (1000.0, 2000.0)  # USD per million prompt / completion tokens for model "synthetic"


def ops_tasks(workdir: Path, base_url: str, audit_rate: float = 0.0, drift: str = "") -> Path:
    """Threshold 0.8: unmarked texts (p = 0.7) go to review, `[[label=X]]` texts (p = 0.97) are auto."""
    path = write_tasks(workdir / "tasks.toml", base_url, model="synthetic", threshold=0.8)
    text = path.read_text().replace("min_label_mass = 0.5\n", f"min_label_mass = 0.5\naudit_rate = {audit_rate}\n")
    path.write_text(text + (f"\n[task.drift]\n{drift}" if drift else ""))
    return path


def requests(prefix: str, n_auto: int, n_review: int) -> list[tuple[bytes, bytes]]:
    out = [(f"{prefix}a{i}", f"confident {i} [[label={'fresh' if i % 3 else 'rotten'}]]") for i in range(n_auto)]
    out += [(f"{prefix}r{i}", f"doubtful {i}") for i in range(n_review)]
    return [(rid.encode(), orjson.dumps({"id": rid, "task": "sentiment", "text": text})) for rid, text in out]


class Hook(ThreadingHTTPServer):
    """A webhook receiver: records every JSON body posted to it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                hook.received.append(orjson.loads(self.rfile.read(int(self.headers["content-length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


def readyz(port: int) -> dict[str, Any]:
    """/readyz's body, whether it answers 200 (ready) or 503 (not yet)."""
    try:
        return http_json(f"http://127.0.0.1:{port}/readyz")
    except urllib.error.HTTPError as exc:
        assert exc.code == 503, exc.code
        return dict(orjson.loads(exc.read()))


def wait_for(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def test_metrics_endpoint_exposes_every_listed_series(broker: EmbeddedBroker, workdir: Path) -> None:
    n_auto, n_review = 30, 12
    hook = Hook()
    with SyntheticModel(workdir) as model, \
            FaultProxyProcess(workdir, model.base_url, "--fault-rate", "0.25", "--kinds", "rate_limit_retry_after",
                              "--retry-after-s", "0.05", "--seed", "3") as proxy:
        worker = Worker(broker.bootstrap, ops_tasks(workdir, proxy.base_url, audit_rate=0.5), workdir,
                        extra_env={"STREAMS_TOKEN_PRICES": f"synthetic={PRICE[0]}:{PRICE[1]}",
                                   "STREAMS_REVIEW_ALERT_DEPTH": "5", "STREAMS_ALERT_WEBHOOK_URL": hook.url,
                                   "STREAMS_MODEL_MAX_RETRIES": "6"})
        with worker.process() as proc:
            wait_ready(proc)
            t = {k: worker.topic(k) for k in ("requests", "results", "review", "deadletter", "feedback")}
            bad = [(b"bad", b"{not json"), (b"bad2", orjson.dumps({"id": "x", "task": "nope", "text": "t"}))]
            run(produce(broker.bootstrap, t["requests"], [*requests("m", n_auto, n_review), *bad]))
            got = run(collect(broker.bootstrap, [t["results"], t["review"], t["deadletter"]],
                              lambda g: len({r.key for r in g}) >= n_auto + n_review + 2, timeout_s=60))
            by_topic = Counter(r.topic for r in got)
            audits = sum(1 for r in got if r.topic == t["review"] and r.json().get("audit"))

            # Everything emitted is counted; the lag on requests returns to 0 once offsets are committed.
            def settled() -> Any:
                m = scrape(worker.web_port)
                lag = {k: v for k, v in m.get("llm_classify_consumer_lag", {}).items() if ("topic", t["requests"]) in k}
                done = total(m.get("llm_classify_requests_total", {})) >= n_auto + n_review + 2 + audits
                return m if done and len(lag) == worker.partitions and not any(lag.values()) else None

            m = wait_for(settled, 30, "all outcomes counted and the requests lag back to 0")
            # One reviewer answer: the queue shrinks by one.
            rid = next(r.json()["id"] for r in got if r.topic == t["review"] and not r.json().get("audit"))
            run(produce(broker.bootstrap, t["feedback"], [(rid.encode(), orjson.dumps(
                {"id": rid, "task": "sentiment", "label": "rotten"}))]))
            after = wait_for(lambda: (x := scrape(worker.web_port)) and
                             total(x["llm_classify_review_queue_depth"]) == by_topic[t["review"]] - 1 and x,
                             20, "the answered item to leave the queue")
            wait_for(lambda: hook.received, 20, "a review-queue alert at the webhook")

    req = m["llm_classify_requests_total"]
    assert total(req, outcome="auto") == by_topic[t["results"]] == n_auto
    assert total(req, outcome="review") == n_review and total(req, outcome="audit") == audits > 0
    assert total(req, outcome="dead_letter") == by_topic[t["deadletter"]] == 2
    assert total(m["llm_classify_review_reasons_total"], reason="low_confidence") == n_review
    calls = total(m["llm_classify_model_calls_total"])
    assert calls == n_auto + n_review
    assert total(m["llm_classify_model_latency_seconds_count"]) == calls
    assert total(m["llm_classify_model_latency_seconds_bucket"], le="+Inf") == calls
    assert total(m["llm_classify_model_retries_total"]) > 0, "the proxy answered 429 to a quarter of the calls"
    assert "family:llm_classify_model_errors" in m  # counted per kind once a call fails after retries
    assert total(m["llm_classify_model_calls_in_flight"]) == 0
    conf = m["llm_classify_confidence_count"]
    assert total(conf, decision="auto") == n_auto and total(conf, decision="review") == n_review
    assert total(m["llm_classify_confidence_bucket"], decision="review", le="0.7") == n_review
    prompt = total(m["llm_classify_tokens_total"], kind="prompt")
    completion = total(m["llm_classify_tokens_total"], kind="completion")
    assert prompt > 0 and completion == n_auto + n_review  # one token per call
    cost = total(m["llm_classify_estimated_cost_usd_total"], task="sentiment")
    assert abs(cost - (prompt * PRICE[0] + completion * PRICE[1]) / 1e6) < 1e-9
    depth = m["llm_classify_review_queue_depth"]
    assert total(depth, task="sentiment") == n_review + audits
    assert 0 < total(m["llm_classify_review_queue_oldest_age_seconds"], task="sentiment") < 120
    assert total(after["llm_classify_review_queue_depth"], task="sentiment") == n_review + audits - 1
    for name in ("drift_statistic", "drift_threshold", "drift_p_value", "drift_alert_open"):
        assert f"family:llm_classify_{name}" in m, name  # values once a drift status exists (browser test)

    alert = hook.received[0]
    schemas.validate("review_queue_alert", alert)
    assert alert["state"] == "open" and alert["task"] == "sentiment" and alert["depth"] > 5
    assert len([a for a in hook.received if a["state"] == "open"]) == 1, "one alert per episode"


def answer_cli(worker: Worker, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams", "review", *args], env=worker.env, input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_review_queue_survives_a_restart_and_the_cli_answers_oldest_first(broker: EmbeddedBroker,
                                                                         workdir: Path) -> None:
    with SyntheticModel(workdir) as model:
        worker = Worker(broker.bootstrap, ops_tasks(workdir, model.base_url), workdir)
        t = {k: worker.topic(k) for k in ("requests", "results", "review", "feedback")}
        with worker.process() as proc:
            wait_ready(proc)
            run(produce(broker.bootstrap, t["requests"], requests("q", 2, 6)))
            reviews = run(collect(broker.bootstrap, [t["review"]], lambda g: len(g) >= 6, timeout_s=60))
            assert len(reviews) == 6
            # A terminal reviewer answers the two oldest (label by number, then by name), skips one, quits.
            cli = answer_cli(worker, "--reviewer", "terminal", stdin="1\nrotten\ns\nq\n")
            assert cli.returncode == 0, cli.stdout + cli.stderr
            answered = run(collect(broker.bootstrap, [t["feedback"]], lambda g: len(g) >= 2, timeout_s=30))
            # The worker that is running turns the answers into final results (a stopped one cannot).
            human = run(collect(broker.bootstrap, [t["results"]],
                                lambda g: sum(r.json()["decision"] == "human" for r in g) >= 2, timeout_s=30))
        # A fresh worker process rebuilds the queue from the topics: the four unanswered items, oldest first.
        with worker.process() as proc:
            wait_ready(proc)
            items = wait_for(lambda: (d := _json(worker, "/review/items.json")) and d["loaded"] and d["items"],
                             30, "the queue to load")
        listing = answer_cli(worker, "--list", "--json")
    fb = [r.json() for r in answered]
    for record in fb:
        schemas.validate("feedback", record)
    order = [r.json()["id"] for r in sorted(reviews, key=lambda r: (r.json()["processed_at"], r.json()["id"]))]
    # The CLI offers the oldest items first: "1" answered the oldest with label 1, "rotten" the next one.
    assert {f["id"]: f["label"] for f in fb} == {order[0]: "fresh", order[1]: "rotten"}
    assert all(f["reviewer"] == "terminal" for f in fb)
    assert {h.json()["id"] for h in human if h.json()["decision"] == "human"} == set(order[:2])
    assert [i["id"] for i in items] == order[2:], "answered items are not offered again after a restart"
    assert [i["id"] for i in orjson.loads(listing.stdout)["items"]] == order[2:]


def _json(worker: Worker, path: str) -> Any:
    """A protected page, as the worker's reviewer (bearer token); None while the worker does not answer."""
    try:
        return worker.get_json(path)
    except OSError:
        return None


def test_metrics_count_every_call_of_a_self_consistency_task(broker: EmbeddedBroker, workdir: Path) -> None:
    """Calls are counted inside the model client, so a method that samples several answers per request
    shows every sample's call on /metrics, and the count matches what the model server saw."""
    n = 12
    with SyntheticModel(workdir, "--seed", "5") as model:
        path = write_tasks(workdir / "tasks.toml", model.base_url, model="synthetic", threshold=0.6)
        path.write_text(path.read_text() + '\n[task.confidence]\nmethods = ["self_consistency"]\n'
                        '[task.confidence.self_consistency]\nbatch = 1\nmin_samples = 3\nbudget = 8\n')
        worker = Worker(broker.bootstrap, path, workdir,
                        extra_env={"STREAMS_TOKEN_PRICES": f"synthetic={PRICE[0]}:{PRICE[1]}"})
        with worker.process() as proc:
            wait_ready(proc)
            live = http_json(f"http://127.0.0.1:{worker.web_port}/healthz")
            ready = wait_for(lambda: (r := readyz(worker.web_port)) and r["ready"] and r, 30, "readiness")
            msgs = [(f"sc{i}".encode(), orjson.dumps({"id": f"sc{i}", "task": "sentiment", "text": f"film {i}"}))
                    for i in range(n)]
            run(produce(broker.bootstrap, worker.topic("requests"), msgs, headers=[TRACEPARENT]))
            got = run(collect(broker.bootstrap, [worker.topic("results"), worker.topic("review")],
                              lambda g: len({r.key for r in g}) >= n, timeout_s=60))
            records = {r.key: r.json() for r in got if not r.json().get("audit")}
            m = wait_for(lambda: (x := scrape(worker.web_port)) and
                         total(x.get("llm_classify_requests_total", {})) >= n and x, 20, "every outcome counted")
            served = model.stats()["requests"]
    assert live == {"live": True}
    assert ready["state_loaded"] and ready["assigned_partitions"] >= worker.partitions and not ready["rebalancing"]
    assert all(r["method"] == "self_consistency" for r in records.values())
    assert all(TRACEPARENT in r.headers for r in got), "every output carries the request's trace context"
    calls = sum(r["requests"] for r in records.values())
    assert calls >= 3 * n, "at least min_samples calls per request (one sample per call)"
    assert total(m["llm_classify_model_calls_total"], task="sentiment") == calls == served
    assert total(m["llm_classify_model_latency_seconds_count"], task="sentiment") == calls
    prompt = sum(r["usage"]["prompt_tokens"] for r in records.values())
    assert total(m["llm_classify_tokens_total"], task="sentiment", kind="prompt") == prompt > 0
