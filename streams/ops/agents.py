"""Operations wiring: `/metrics`, `/dashboard/`, `/review/` on the worker's web server, the state
behind them, and alert forwarding. Thin: the logic is in the pure modules of this package.

- Review queue: every worker reads the review and feedback topics in full (no consumer group, to the
  exact high watermark, then follows them), so the queue survives restarts and each worker's page
  shows the whole queue. Answers from the page go to the feedback topic keyed by id; the feedback
  agent turns them into the final `human` result.
- Drift: every worker follows `drift.status` for the dashboard's drift plots and the drift gauges.
- Alerts: the leader checks review-queue limits every few seconds and posts an alert per episode to
  STREAMS_ALERT_WEBHOOK_URL; the `forward-alerts` agent posts every drift alert there too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import faust
import orjson
from aiokafka.errors import ConsumerStoppedError
from faust.types import StreamT
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST

from streams.alerting import QueueAlarm, WebhookForwarder
from streams.classify.stall import StallWatch
from streams.kafka_io import TopicFeed
from streams.kafka_security import kafka_client_options
from streams.ops import pages
from streams.ops.review_queue import answer_record
from streams.ops.stats import DriftHistory, History
from streams.publishing import Output
from streams.stamps import now_iso

if TYPE_CHECKING:
    from streams.app import ClassifyApp
    from streams.worker import Services

log = logging.getLogger(__name__)
SAMPLE_S = 5.0


def consumer_lag(app: faust.App) -> dict[tuple[str, int], int]:
    """High watermark minus committed offset for each partition this worker is assigned."""
    consumer = app.consumer
    committed = dict(getattr(consumer, "_committed_offset", {}))  # Faust keeps the next offset to read
    committed.update(app.monitor.tp_committed_offsets or {})
    out: dict[tuple[str, int], int] = {}
    for tp in consumer.assignment():
        hw = consumer.highwater(tp)
        if hw is None:
            continue
        done = committed.get(tp)
        out[(tp.topic, tp.partition)] = max(int(hw) - int(done or 0), 0)
    return out


def consumer_view(app: faust.App, tp: tuple[str, int]) -> dict[str, Any]:
    """What Faust's consumer holds about one partition: enough to tell a pause from a skip from a hang.

    A TP equals its (topic, partition) tuple, so the plain key looks up Faust's sets and dicts directly.
    """
    consumer = app.consumer

    def has(attr: str) -> bool | None:
        held = getattr(consumer, attr, None)
        return None if held is None else tp in held

    return {"assigned": tp in consumer.assignment(), "fetching": has("_active_partitions"),
            "paused": has("_paused_partitions"), "buffer_full": has("_buffered_partitions"),
            "read_offset": getattr(consumer, "_read_offset", {}).get(tp),
            "committed": getattr(consumer, "_committed_offset", {}).get(tp),
            "flow_active": getattr(consumer, "flow_active", None), "rebalancing": app.rebalancing,
            "unacked": len(getattr(consumer, "_unacked_messages", ()))}


def readiness(app: ClassifyApp) -> dict[str, Any]:
    """What `/readyz` reports: ready once state is loaded, no rebalance is running and partitions are held."""
    loaded = app.preloaded.is_set()
    assigned = len(app.consumer.assignment()) if loaded else 0
    rebalancing = bool(app.rebalancing)
    return {"ready": loaded and not rebalancing and assigned > 0, "state_loaded": loaded,
            "rebalancing": rebalancing, "assigned_partitions": assigned}


def _order(value: str | None) -> Any:
    return "confidence" if value == "confidence" else "oldest"


def register(s: Services) -> None:
    app, settings, tasks, queue, metrics = s.app, s.settings, s.tasks, s.queue, s.metrics
    drift_history = DriftHistory()
    history = History()
    metrics.state.queue = queue
    metrics.state.drift = drift_history
    loaded = asyncio.Event()
    #: Longer than any healthy rebalance: the group waits up to a session timeout for a dead member.
    stalls: StallWatch[tuple[str, int]] = StallWatch(after_s=max(3 * settings.session_timeout_s, 30.0))
    alarm = QueueAlarm(settings.review_alert_depth, settings.review_alert_age_s)
    webhook = WebhookForwarder(settings.alert_webhook_url)
    requests_topic = settings.topic("requests")

    def feeds() -> list[TopicFeed]:
        opts = kafka_client_options(settings)
        return [
            TopicFeed(settings.bootstrap_servers, settings.topic("review"), lambda r: queue.add_item(r, time.time()),
                      opts),
            TopicFeed(settings.bootstrap_servers, settings.topic("feedback"),
                      lambda r: queue.add_answer(r, time.time()) is not None, opts),
            TopicFeed(settings.bootstrap_servers, settings.topic("drift_status"),
                      lambda r: drift_history.add(r, time.time()), opts),
        ]

    @app.task
    async def follow_ops_state() -> None:
        """Read review items, answers (in that order) and drift statuses to their end, then follow them."""
        while True:
            current = feeds()
            try:
                for feed in current:
                    await feed.load()
                loaded.set()
                log.info("review queue loaded: %d pending, %d answered remembered", len(queue.pending),
                         len(queue.answered))
                await asyncio.gather(*(feed.follow() for feed in current))
            except (asyncio.CancelledError, ConsumerStoppedError):
                return
            except Exception:
                log.exception("review queue / drift status feed failed; reading again in 5 s")
                await asyncio.sleep(5)
            finally:
                for feed in current:
                    try:
                        await feed.stop()
                    except Exception:
                        log.debug("stopping a feed failed", exc_info=True)

    def watch_stalls(now: float, lag: dict[tuple[str, int], int]) -> None:
        waiting = {k: n for k, n in lag.items() if k[0] == requests_topic}
        for stall in stalls.observe(now, waiting, s.delivered):
            log.warning("requests partition %s[%d] stalled: %d request(s) waiting, none delivered for %.0f s; "
                        "consumer: %s", *stall.partition, stall.lag, stall.idle_s,
                        consumer_view(app, stall.partition))
        metrics.state.stalled = list(stalls.stalled(now))

    @app.timer(interval=SAMPLE_S)
    async def sample_ops() -> None:
        try:  # an exception inside a Faust timer stops the worker
            now = time.time()
            history.sample(now, metrics.traffic, queue.stats(now), tasks.tasks)
            metrics.state.lag = consumer_lag(app)
            watch_stalls(time.monotonic(), metrics.state.lag)
        except Exception:
            log.exception("ops sampling failed")

    @app.timer(interval=SAMPLE_S, on_leader=True)
    async def review_queue_alerts() -> None:
        try:  # an exception inside a Faust timer stops the worker
            if not alarm.enabled or not loaded.is_set():
                return
            for task, st in queue.stats(time.time()).items():
                alert = alarm.update(task, int(st["depth"]), st["oldest_age_s"], now_iso())
                if alert is not None:
                    log.warning("review queue alert for %s: %s (%s)", task, alert["state"], alert["reason"])
                    webhook.forward(alert)
        except Exception:
            log.exception("review queue alert check failed")

    @app.agent(s.topics["alerts"], name="forward-alerts")
    async def forward_alerts(stream: StreamT) -> None:
        """Every drift alert to STREAMS_ALERT_WEBHOOK_URL as well (one worker per alert: consumer group)."""
        async for value in stream:
            if not settings.alert_webhook_url or not value:
                continue
            try:
                webhook.forward(orjson.loads(value))
            except orjson.JSONDecodeError:
                log.warning("forward-alerts: skipping an unreadable drift alert")

    @app.page("/healthz")
    class LiveView(View):
        """Liveness: the event loop answers (a wedged worker stops answering and is restarted)."""

        async def get(self, request: Request) -> Response:
            return self.json({"live": True})

    @app.page("/readyz")
    class ReadyView(View):
        """Readiness: calibrators and baselines loaded, not rebalancing, and partitions assigned."""

        async def get(self, request: Request) -> Response:
            state = readiness(app)
            return self.json(state, status=200 if state["ready"] else 503)

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            # aiohttp refuses a content_type with parameters; the header carries Prometheus' version and charset.
            return self.bytes(metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/dashboard/")
    class DashboardView(View):
        async def get(self, request: Request) -> Response:
            return self.html(pages.dashboard(tasks, metrics.traffic, history, drift_history, queue, loaded.is_set()))

    @app.page("/review/")
    class ReviewView(View):
        async def get(self, request: Request) -> Response:
            q = request.query
            task = q.get("task") or None
            return self.html(pages.review_page(tasks, queue, _order(q.get("order")),
                                               task if task in tasks else None, answered=q.get("answered"),
                                               error=q.get("error"), loaded=loaded.is_set()))

    @app.page("/review/items.json")
    class ReviewItemsView(View):
        async def get(self, request: Request) -> Response:
            q = request.query
            try:
                limit = min(max(int(q.get("limit", "50")), 0), 1000)
            except ValueError:
                limit = 50
            items = queue.items(q.get("task") or None, _order(q.get("order")), limit)
            return self.json(pages.item_json(items, queue.stats(time.time())) | {"loaded": loaded.is_set()})

    async def answer(rid: str, label: str, reviewer: str | None, note: str | None = None) -> tuple[int, str]:
        """Publish a reviewer's answer; (HTTP status, message). The item leaves this worker's queue at once."""
        item = queue.pending.get(rid)
        if item is None:
            return 409, f"item {rid!r} is not pending (already answered, or unknown)"
        if label not in tasks.tasks[item.task].labels:
            return 400, f"label {label!r} is not one of {list(tasks.tasks[item.task].labels)}"
        record = answer_record(item, label, reviewer, note)
        await s.publish(Output("feedback", rid.encode(), orjson.dumps(record)))
        queue.add_answer(record, time.time())
        return 200, "answered"

    @app.page("/review/answer")
    class AnswerView(View):
        async def post(self, request: Request) -> Response:
            as_json = request.content_type == "application/json"  # type: ignore[attr-defined]  # aiohttp's
            try:
                form: Any = await request.json() if as_json else await request.post()
                rid, label = str(form.get("id") or ""), str(form.get("label") or "")
                reviewer = str(form.get("reviewer") or "").strip() or ("web" if not as_json else None)
                status, message = await answer(rid, label, reviewer, form.get("note") or None)
            except (ValueError, TypeError, AttributeError):
                status, message, rid, form = 400, "send a form or JSON object with id and label", "", {}
            if as_json:
                return self.json({"ok": status == 200, "message": message}, status=status)
            params = {"order": _order(form.get("order"))}
            if form.get("filter"):
                params["task"] = str(form["filter"])
            params["answered" if status == 200 else "error"] = rid if status == 200 else message
            return self.text("", status=303, headers={"Location": f"/review/?{urlencode(params)}"})
