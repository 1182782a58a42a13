"""Operations wiring: `/metrics`, `/dashboard/`, `/review/` on the worker's web server, the state
behind them, and alert forwarding. Thin: the logic is in the pure modules of this package.

- Review queue: every worker reads the review and feedback topics in full (no consumer group, to the
  exact high watermark, then follows them), so the queue survives restarts and each worker's page
  shows the whole queue. Answers from the page go to the feedback topic keyed by id; the feedback
  agent turns them into the final `human` result.
- Drift: every worker follows `drift.status` for the dashboard's drift plots and the drift gauges.
- Alerts: the leader checks review-queue limits every few seconds and posts an alert per episode to
  STREAMS_ALERT_WEBHOOK_URL; the `forward-alerts` agent posts every drift alert there too.
- Web authentication: a middleware on the web server lets `/healthz`, `/readyz`, `/metrics` and the
  login pages through and asks every other path (ours and Faust's own, such as `/table/`) who is asking
  (streams/ops/auth.py: proxy header, token or session cookie); 401 without an answer. The answer view
  checks size, CSRF token, rate and task permission before it publishes, and records the identity as
  the reviewer.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs, urlencode

import faust
import orjson
from aiohttp import web as aioweb
from aiokafka.errors import ConsumerStoppedError
from faust.types import StreamT
from faust.web import Request, Response, View
from faust.web.drivers.aiohttp import Web as AiohttpWeb
from prometheus_client import CONTENT_TYPE_LATEST

from streams.alerting import QueueAlarm, WebhookForwarder
from streams.classify.stall import StallWatch
from streams.kafka_io import TopicFeed
from streams.kafka_security import kafka_client_options
from streams.ops import pages
from streams.ops.auth import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    SESSION_TTL_S,
    Authenticator,
    Identity,
    RateLimiter,
    Refusal,
    RequestFacts,
    ReviewersFile,
    Signer,
    is_trusted,
    login_csrf,
    login_nonce,
    safe_next,
)
from streams.ops.review_queue import answer_record
from streams.ops.stats import DriftHistory, History
from streams.publishing import Output
from streams.stamps import now_iso

if TYPE_CHECKING:
    from streams.app import ClassifyApp
    from streams.settings import Settings
    from streams.worker import Services

log = logging.getLogger(__name__)
SAMPLE_S = 5.0
#: Paths anyone may ask for: probes, Prometheus, and the way to log in. Everything else needs an identity.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/login", "/logout"})
ANSWER_MAX_BYTES = 8 * 1024  # id, label, a note of up to 2000 characters (percent-encoded), the CSRF token
LOGIN_MAX_BYTES = 2 * 1024
IDENTITY = "llm_classify.identity"  # where the middleware leaves the Identity on the aiohttp request
#: On every page behind authentication and the login page: no caching of texts, no framing (a framed
#: review page could be clicked on by another site), nothing loaded from elsewhere.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}


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
    stalls: StallWatch[tuple[str, int]] = StallWatch(after_s=settings.stall_after_s)
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
        for stall in stalls.observe(now, waiting, s.progress.acked, s.progress.idle_s(now)):
            log.warning("requests partition %s[%d] stalled: %d request(s) waiting, none done for %.0f s while "
                        "the worker sat idle; consumer: %s", *stall.partition, stall.lag, stall.idle_s,
                        consumer_view(app, stall.partition))
        metrics.state.stalled = stalls.stalled()

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

    auth = build_authenticator(settings)
    answer_limits = RateLimiter(settings.review_answer_rate / 60.0, settings.review_answer_burst)
    cast(AiohttpWeb, app.web).web_app.middlewares.append(web_guard(auth))

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

    def viewer(request: Request) -> pages.Viewer:
        who = identity(request)
        return pages.Viewer(who.name, auth.csrf_for(who, time.time()), who.session)

    @app.page("/dashboard/")
    class DashboardView(View):
        async def get(self, request: Request) -> Response:
            return self.html(pages.dashboard(tasks, metrics.traffic, history, drift_history, queue, loaded.is_set(),
                                             viewer=viewer(request), signals=s.calibrators.signals()))

    def forbidden_task(who: Identity, task: str | None) -> str | None:
        if task and task in tasks and not who.may_answer(task):
            return f"{who.name} may not review {task} items"
        return None

    @app.page("/review/")
    class ReviewView(View):
        async def get(self, request: Request) -> Response:
            q, who = request.query, identity(request)
            task = q.get("task") or None
            if (refused := forbidden_task(who, task)) is not None:
                return self.html(pages.message_page("Forbidden", refused), status=403)
            return self.html(pages.review_page(tasks, queue, _order(q.get("order")),
                                               task if task in tasks else None, answered=q.get("answered"),
                                               error=q.get("error"), loaded=loaded.is_set(), viewer=viewer(request),
                                               allowed=who.tasks))

    @app.page("/review/items.json")
    class ReviewItemsView(View):
        async def get(self, request: Request) -> Response:
            q, who = request.query, identity(request)
            if (refused := forbidden_task(who, q.get("task") or None)) is not None:
                return self.json({"ok": False, "message": refused}, status=403)
            try:
                limit = min(max(int(q.get("limit", "50")), 0), 1000)
            except ValueError:
                limit = 50
            items = pages.visible_items(queue, q.get("task") or None, _order(q.get("order")), limit, who.tasks)
            depth = {k: v for k, v in queue.stats(time.time()).items() if who.may_answer(k)}
            return self.json(pages.item_json(items, depth) | {"loaded": loaded.is_set(), "reviewer": who.name,
                                                             "csrf": auth.csrf_for(who, time.time())})

    async def answer(rid: str, label: str, reviewer: str, note: str | None = None) -> tuple[int, str]:
        """Publish a reviewer's answer; (HTTP status, message). The item leaves this worker's queue at once."""
        item = queue.pending.get(rid)
        if item is None:
            return 409, f"item {rid!r} is not pending (already answered, or unknown)"
        if label not in tasks.tasks[item.task].labels:
            return 400, f"label {label!r} is not one of {list(tasks.tasks[item.task].labels)}"
        record = answer_record(item, label, reviewer, note)
        await s.publish(Output("feedback", rid.encode(), orjson.dumps(record)))
        queue.add_answer(record, time.time())
        log.info("review item %s (%s) answered %r by %s", rid, item.task, label, reviewer)
        return 200, "answered"

    @app.page("/review/answer")
    class AnswerView(View):
        async def post(self, request: Request) -> Response:
            req, who, now = _aio(request), identity(request), time.time()
            as_json = req.content_type == "application/json"

            def refuse(status: int, message: str, **headers: str) -> Response:
                if as_json:
                    return self.json({"ok": False, "message": message}, status=status, headers=headers)
                return self.html(pages.message_page(f"Refused ({status})", message), status=status,
                                 headers=headers)

            body = await read_body(req, ANSWER_MAX_BYTES)
            if body is None:
                return refuse(413, f"an answer is at most {ANSWER_MAX_BYTES} bytes")
            form = parse_body(body, as_json)
            token = form.get("csrf") or req.headers.get("X-CSRF-Token")
            if who.needs_csrf and (req.headers.get("Sec-Fetch-Site") == "cross-site"
                                   or not auth.csrf_ok(who, str(token or ""), now)):
                log.warning("refused an answer by %s from %s: no valid CSRF token (a stale form, or a forged "
                            "cross-site post)", who.name, req.remote)
                return refuse(403, "this form is stale or was not sent from the review page: reload /review/ "
                                   "and answer again")
            wait = answer_limits.take(who.name, now)
            if wait > 0:
                return refuse(429, f"too many answers from {who.name}: wait {wait:.0f} s "
                                   f"(STREAMS_REVIEW_ANSWER_RATE per minute)", **{"Retry-After": f"{wait:.0f}"})
            rid, label = str(form.get("id") or ""), str(form.get("label") or "")
            item = queue.pending.get(rid)
            if not rid or not label:
                status, message = 400, "send a form or JSON object with id and label"
            elif item is not None and not who.may_answer(item.task):
                return refuse(403, f"{who.name} may not answer {item.task} items")
            else:  # the reviewer is who authenticated; a `reviewer` in the body is ignored
                note = form.get("note")
                status, message = await answer(rid, label, who.name, str(note) if note else None)
            if as_json:
                return self.json({"ok": status == 200, "message": message, "reviewer": who.name}, status=status)
            params = {"order": _order(form.get("order"))}
            if form.get("filter"):
                params["task"] = str(form["filter"])
            params["answered" if status == 200 else "error"] = rid if status == 200 else message
            return self.text("", status=303, headers={"Location": f"/review/?{urlencode(params)}"})

    @app.page("/login")
    class LoginView(View):
        """A reviewer token once, for a session cookie (HttpOnly, SameSite=Strict, 12 h)."""

        async def get(self, request: Request) -> Response:
            if not auth.enabled:
                return self.text("", status=303, headers={"Location": "/review/"})
            return login_response(auth, 200, safe_next(request.query.get("next")))

        async def post(self, request: Request) -> Response:
            req, now = _aio(request), time.time()
            if not auth.enabled:
                return self.text("", status=303, headers={"Location": "/review/"})
            body = await read_body(req, LOGIN_MAX_BYTES)
            form = parse_body(body or b"", False)
            where = safe_next(str(form.get("next") or ""))
            nonce = req.cookies.get(LOGIN_COOKIE)
            if body is None:
                return login_response(auth, 413, where, f"a login is at most {LOGIN_MAX_BYTES} bytes")
            if (req.headers.get("Sec-Fetch-Site") == "cross-site" or not nonce
                    or not auth.signer.check(str(form.get("csrf") or ""), "login", nonce)):
                return login_response(auth, 403, where, "this login form is stale or came from another site; "
                                                        "log in again here")
            result = await asyncio.to_thread(auth.login, str(form.get("token") or ""), req.remote, now)
            if isinstance(result, Refusal):
                return login_response(auth, result.status, where, result.message)
            who, cookie = result
            log.info("%s logged in from %s", who.name, req.remote)
            response = aioweb.Response(status=303, headers={"Location": where, **PAGE_HEADERS})
            response.set_cookie(SESSION_COOKIE, cookie, max_age=int(SESSION_TTL_S), path="/", httponly=True,
                                samesite="Strict", secure=_secure(req, auth))
            response.del_cookie(LOGIN_COOKIE, path="/login")
            return _resp(response)

    @app.page("/logout")
    class LogoutView(View):
        async def post(self, request: Request) -> Response:
            response = aioweb.Response(status=303, headers={"Location": "/login", **PAGE_HEADERS})
            response.del_cookie(SESSION_COOKIE, path="/")
            return _resp(response)


# --------------------------------------------------------------------------- web authentication


def build_authenticator(settings: Settings) -> Authenticator:
    """The worker's Authenticator from its settings; logs what it will accept."""
    if settings.web_secret:
        key = settings.web_secret.encode()
    else:
        key = secrets.token_bytes(32)
        if settings.web_auth_enabled:
            log.info("STREAMS_WEB_SECRET_FILE is not set: browser sessions are signed with a key of this worker "
                     "process; they end when it restarts and do not carry to other workers")
    auth = Authenticator(enabled=settings.web_auth_enabled, signer=Signer(key),
                         reviewers=ReviewersFile(settings.reviewers_file) if settings.reviewers_file else None,
                         proxies=tuple(settings.trusted_proxies or ()),
                         proxy_header=settings.proxy_user_header or "X-Forwarded-User")
    if not auth.enabled:
        log.warning("STREAMS_WEB_AUTH=off: /review/, /dashboard/ and the answer API are open to anyone who reaches "
                    "%s:%d (local development only)", settings.web_host, settings.web_port)
    elif not auth.configured:
        log.warning("web authentication is on but %s; /review/ and /dashboard/ answer 401", auth.why_not_configured())
    return auth


def _aio(request: Request) -> aioweb.Request:
    return cast(aioweb.Request, request)


def _resp(response: aioweb.StreamResponse) -> Response:
    return cast(Response, response)


def identity(request: Request) -> Identity:
    """The identity the middleware found (it lets no request without one reach a protected view)."""
    return cast(Identity, _aio(request)[IDENTITY])


def _secure(req: aioweb.Request, auth: Authenticator) -> bool:
    """Whether the browser reached us over HTTPS (directly, or through a trusted proxy that says so)."""
    return req.secure or (is_trusted(req.remote, auth.proxies) and req.headers.get("X-Forwarded-Proto") == "https")


async def read_body(req: aioweb.Request, limit: int) -> bytes | None:
    """The request body, or None when it is longer than `limit` bytes (read no further than that)."""
    if req.content_length is not None and req.content_length > limit:
        return None
    body = b""
    while len(body) <= limit:
        chunk = await req.content.read(limit + 1 - len(body))
        if not chunk:
            return body
        body += chunk
    return None


def parse_body(body: bytes, as_json: bool) -> Mapping[str, Any]:
    """A JSON object or a urlencoded form (first value of each field); {} when it is neither."""
    try:
        if as_json:
            data = orjson.loads(body)
            return data if isinstance(data, dict) else {}
        return {k: v[0] for k, v in parse_qs(body.decode("utf-8"), max_num_fields=20).items()}
    except (ValueError, UnicodeDecodeError):
        return {}


def login_response(auth: Authenticator, status: int, next_path: str, message: str | None = None) -> Response:
    """The login page, with a fresh nonce in a cookie only /login sees; its MAC is the form's CSRF field."""
    nonce = login_nonce()
    if not auth.configured:
        message, can_log_in = auth.why_not_configured(), False
    else:
        can_log_in = True
    page = pages.login_page(login_csrf(auth.signer, nonce), next_path, message, can_log_in)
    response = aioweb.Response(text=page, content_type="text/html", status=status, headers=PAGE_HEADERS)
    response.set_cookie(LOGIN_COOKIE, nonce, max_age=3600, path="/login", httponly=True, samesite="Strict")
    return _resp(response)


Handler = Callable[[aioweb.Request], Awaitable[aioweb.StreamResponse]]


def web_guard(auth: Authenticator) -> Any:
    """aiohttp middleware: every path but OPEN_PATHS needs an identity; 401 (or 429) without one."""

    @aioweb.middleware
    async def guard(request: aioweb.Request, handler: Handler) -> aioweb.StreamResponse:
        if request.path in OPEN_PATHS:
            response = await handler(request)
            if request.path in ("/login", "/logout"):
                response.headers.update({k: v for k, v in PAGE_HEADERS.items() if k not in response.headers})
            return response
        facts = RequestFacts.of(request.headers, request.cookies, request.remote)
        if "authorization" in facts.headers:  # a token not seen lately costs an scrypt: off the event loop
            outcome = await asyncio.to_thread(auth.identify, facts, time.time())
        else:
            outcome = auth.identify(facts, time.time())
        if isinstance(outcome, Identity):
            request[IDENTITY] = outcome
            response = await handler(request)
            response.headers.update({k: v for k, v in PAGE_HEADERS.items() if k not in response.headers})
            return response
        return refusal(request, auth, outcome)

    return guard


def refusal(request: aioweb.Request, auth: Authenticator, outcome: Refusal | None) -> aioweb.StreamResponse:
    """401 (no or wrong credentials) or 429 (too many failures): the login page for a browser, else JSON."""
    if outcome is None:
        outcome = Refusal(401, "log in first: a reviewer token as `Authorization: Bearer TOKEN`, or the form at /login"
                          if auth.configured else auth.why_not_configured())
    headers = dict(PAGE_HEADERS)
    if outcome.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="llm-classify"'
    if outcome.retry_after_s > 0:
        headers["Retry-After"] = f"{max(outcome.retry_after_s, 1):.0f}"
    if request.method == "GET" and "text/html" in request.headers.get("Accept", ""):
        response = cast(aioweb.StreamResponse, login_response(auth, outcome.status, safe_next(request.path_qs),
                                                              outcome.message if outcome.status != 401
                                                              or "authorization" in request.headers else None))
    else:
        response = aioweb.json_response({"ok": False, "message": outcome.message}, status=outcome.status)
    response.headers.update(headers)
    return response
