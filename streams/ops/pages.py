"""HTML for the dashboard and the review page. Pure: state in, a string out; plots are inline SVG.

No JavaScript and nothing fetched from elsewhere: the pages work on machines without internet, and
the review page is plain HTML forms.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import cast
from urllib.parse import urlencode

from streams.ops import plots
from streams.ops.review_queue import Order, PendingItem, ReviewQueue
from streams.ops.stats import DriftHistory, History, TrafficStats, audited_accuracy, reliability
from streams.tasks import TaskRegistry

NO_VALUE = "\u2013"  # an en dash: shown where a figure has no value yet

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:18px;color:#222;background:#f6f7f9}
h1{font-size:20px;margin:0 0 4px} h2{font-size:17px;margin:18px 0 6px}
nav a{margin-right:14px} .muted{color:#666;font-size:12px}
.task{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 14px;margin:12px 0}
.kpis{display:flex;flex-wrap:wrap;gap:10px;margin:6px 0 10px}
.kpi{background:#f0f3f7;border-radius:5px;padding:6px 10px;min-width:120px}
.kpi b{display:block;font-size:18px} .kpi span{font-size:11px;color:#555}
.plots{display:flex;flex-wrap:wrap;gap:8px} .plots svg{border:1px solid #e3e3e3;border-radius:4px}
.alert{color:#b00020;font-weight:bold}
.item{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 14px;margin:10px 0;max-width:900px}
.item .text{white-space:pre-wrap;margin:6px 0 8px;font-size:15px}
.probs span{display:inline-block;margin-right:12px;font-size:13px}
.pbar{display:inline-block;height:8px;background:#1f77b4;vertical-align:middle;margin-left:4px}
button{margin-right:6px;padding:4px 12px;font-size:14px;cursor:pointer}
nav form{display:inline;margin:0} nav .who{float:right} nav .who button{font-size:12px;padding:1px 8px}
.login{background:#fff;border:1px solid #ddd;border-radius:6px;padding:14px 18px;max-width:560px}
.login input[type=password]{width:100%;box-sizing:border-box;padding:6px;font-size:14px;margin:6px 0 10px}
"""


@dataclass(frozen=True)
class Viewer:
    """Who is looking at a page (authenticated by streams/ops/auth.py): shown in the navigation, and the
    CSRF token the page's forms carry."""

    name: str
    csrf: str = ""
    can_log_out: bool = False  # a browser session (cookie), which the logout button ends


def _csrf_field(viewer: Viewer | None) -> str:
    return f'<input type="hidden" name="csrf" value="{escape(viewer.csrf)}">' if viewer and viewer.csrf else ""


def _page(title: str, body: str, refresh_s: int | None = None, viewer: Viewer | None = None) -> str:
    refresh = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s else ""
    who = ""
    if viewer is not None:
        logout = (f'<form method="post" action="/logout">{_csrf_field(viewer)}<button type="submit">log out</button>'
                  f'</form>' if viewer.can_log_out else "")
        who = f'<span class="who muted">signed in as <b class="viewer">{escape(viewer.name)}</b> {logout}</span>'
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">{refresh}<title>{escape(title)}</title>'
            f'<style>{STYLE}</style></head><body><nav><a href="/dashboard/">dashboard</a>'
            f'<a href="/review/">review queue</a><a href="/metrics">metrics</a>{who}</nav>{body}</body></html>')


def login_page(csrf: str, next_path: str = "/review/", message: str | None = None,
               can_log_in: bool = True) -> str:
    """The login form: a reviewer token (from `python -m streams review reviewers add NAME`) once, then a
    session cookie. `csrf` is the MAC of the login cookie's nonce."""
    note = f'<p class="alert">{escape(message)}</p>' if message else ""
    form = (f'<form class="login" method="post" action="/login"><input type="hidden" name="csrf" '
            f'value="{escape(csrf)}"><input type="hidden" name="next" value="{escape(next_path)}">'
            f'<label for="token">reviewer token</label><input type="password" id="token" name="token" '
            f'autocomplete="current-password" required><button type="submit">log in</button>'
            f'<p class="muted">Scripts send the token as <code>Authorization: Bearer TOKEN</code> instead.</p>'
            f'</form>') if can_log_in else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Log in</title>'
            f'<style>{STYLE}</style></head><body><h1>llm-classify: log in</h1>{note}{form}</body></html>')


def message_page(title: str, message: str, back: str = "/review/") -> str:
    """A refusal or an error, with the way back."""
    return _page(title, f'<h1>{escape(title)}</h1><p class="alert">{escape(message)}</p>'
                        f'<p><a href="{escape(back)}">back</a></p>')


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _kpi(value: str, label: str, cls: str = "") -> str:
    return f'<div class="kpi {cls}"><b>{escape(value)}</b><span>{escape(label)}</span></div>'


def signal_banner(task: str, signals: Mapping[str, Mapping[str, object]]) -> str:
    """The signal verdict of the task's calibrators (`streams/calibration/signal.py`); a warning when one has none."""
    parts = []
    for key, sig in sorted(signals.items()):
        if not key.startswith(f"{task}/"):
            continue
        verdict = str(sig.get("verdict", "signal"))
        lo, hi = cast(Sequence[float], sig.get("auroc_interval") or (0.0, 0.0))
        text = (f"{escape(key.split('/', 1)[1])}: AUROC {float(cast(float, sig.get('auroc', 0.0))):.3f} "
                f"[{lo:.3f}, {hi:.3f}], raw accuracy {float(cast(float, sig.get('accuracy', 0.0))):.1%} vs majority "
                f"{float(cast(float, sig.get('majority_rate', 0.0))):.1%}: {escape(verdict)}")
        if verdict != "signal":
            text = (f"<strong>No signal</strong> — {text}. Every item goes to review; change the prompt, "
                    "examples or model, then calibrate again.")
        cls = "alert" if verdict != "signal" else "muted"
        parts.append(f'<p class="signal {cls}" data-verdict="{escape(verdict)}">{text}</p>')
    return "".join(parts)


def dashboard(tasks: TaskRegistry, traffic: TrafficStats, history: History, drift: DriftHistory,
              queue: ReviewQueue, loaded: bool, now: float | None = None, refresh_s: int = 10,
              viewer: Viewer | None = None, signals: Mapping[str, Mapping[str, object]] | None = None) -> str:
    """Per task: throughput, review rate, audited accuracy, plots, drift against thresholds, queue; and the
    calibrators' signal verdicts (`signals`, by calibrator key, from `CalibratorRegistry.signals`)."""
    now = time.time() if now is None else now
    parts = [(f'<h1>llm-classify dashboard</h1><p class="muted">{time.strftime("%Y-%m-%d %H:%M:%S")} · '
              f'throughput, review rate and confidence are this worker\'s share; review queue, answers and drift '
              f'are the whole service\'s (read from their topics){"" if loaded else " · loading review queue…"}</p>')]
    queue_stats = queue.stats(now)
    for name, task in tasks.tasks.items():
        rates = history.rates(name)
        counts: Mapping[str, int] = traffic.counts.get(name, {})
        classified = counts.get("auto", 0) + counts.get("review", 0)
        accuracy, n_audited = audited_accuracy(queue.outcomes.get(name, ()))
        q = queue_stats.get(name, {"depth": 0, "oldest_age_s": 0.0})
        status = drift.latest.get(name, {})
        drift_open = [k for k in ("data", "model") if status.get(f"{k}_drift_open")]
        kpis = [
            _kpi(f"{rates['throughput'][-1][1]:.2f}/s" if rates["throughput"] else NO_VALUE, "throughput (last 5 s)"),
            _kpi(f"{counts.get('review', 0) / classified:.1%}" if classified else NO_VALUE,
                 f"review rate ({classified} classified)"),
            _kpi(f"{accuracy:.1%}" if accuracy is not None else NO_VALUE, f"accuracy on audited items (n={n_audited})"),
            _kpi(str(int(q["depth"])), "review queue depth"),
            _kpi(_age(q["oldest_age_s"]) if q["depth"] else NO_VALUE, "oldest pending item"),
            _kpi(", ".join(drift_open) + " drift" if drift_open else "none", "open drift alerts",
                 "alert" if drift_open else ""),
        ]
        series = drift.series(name)
        traffic_families = {k: v for k, v in series.items() if k != "canary"}
        threshold = task.review_threshold if task.target_error is None else None
        charts = [
            plots.line_chart("Throughput", {"classified/s": rates["throughput"]}, "items/s"),
            plots.line_chart("Review rate", {"sent to review": rates["review_rate"]}, "share", y_max=1.0),
            plots.histogram_chart("Confidence (calibrated)", traffic.confidence.get(name, [0] * 20),
                                  threshold=threshold),
            plots.reliability_chart("Reliability (answered items)", reliability(queue.outcomes.get(name, ()))),
            plots.line_chart("Drift: traffic vs baseline", {k: [(t, v) for t, v, _, _ in s] for k, s in
                                                             traffic_families.items()},
                             (next(iter(drift.points.get(name, [{}])), {}).get("statistic") or "js") + " (bits)",
                             thresholds={k: [(t, th) for t, _, th, _ in s] for k, s in traffic_families.items()},
                             empty="no drift windows yet (capture a baseline: drift baseline)"),
            plots.line_chart("Drift: canaries vs baseline", {"canary KL": [(t, v) for t, v, _, _ in
                                                                           series.get("canary", [])]}, "nats",
                             thresholds={"canary KL": [(t, th) for t, _, th, _ in series.get("canary", [])]},
                             empty="no canary runs yet"),
            plots.line_chart("Review queue", {"pending items": rates["depth"]}, "items"),
            plots.line_chart("Oldest pending item", {"age": rates["oldest_age_s"]}, "seconds"),
        ]
        parts.append(f'<section class="task" data-task="{escape(name)}"><h2>{escape(name)} '
                     f'<span class="muted">{escape(task.model.name)} · labels {", ".join(map(escape, task.labels))}'
                     f'</span></h2>{signal_banner(name, signals or {})}<div class="kpis">{"".join(kpis)}</div>'
                     f'<div class="plots">{"".join(charts)}</div></section>')
    return _page("llm-classify dashboard", "".join(parts), refresh_s, viewer)


def _probabilities(item: PendingItem) -> str:
    if not item.probabilities:
        return '<span class="muted">the model gave no usable probabilities</span>'
    return "".join(f'<span>{escape(k)} {v:.2f}<i class="pbar" style="width:{max(v * 80, 1):.0f}px"></i></span>'
                   for k, v in sorted(item.probabilities.items(), key=lambda kv: -kv[1]))


def visible_items(queue: ReviewQueue, task: str | None, order: Order, limit: int,
                  allowed: frozenset[str] | None = None) -> list[PendingItem]:
    """Pending items of `task` (None: every task), only of the `allowed` tasks when that is not None."""
    if allowed is None:
        return queue.items(task, order, limit)
    return [i for i in queue.items(task, order, len(queue.pending)) if i.task in allowed][:max(limit, 0)]


def review_page(tasks: TaskRegistry, queue: ReviewQueue, order: Order = "oldest", task: str | None = None,
                limit: int = 20, answered: str | None = None, error: str | None = None, loaded: bool = True,
                now: float | None = None, viewer: Viewer | None = None,
                allowed: frozenset[str] | None = None) -> str:
    """Pending items with the model's view and why they are here; one button per label answers. Only items
    of the `allowed` tasks (None: all); the answer is recorded as the viewer's, who is never asked a name."""
    now = time.time() if now is None else now
    items = visible_items(queue, task, order, limit, allowed)
    total = sum(int(s["depth"]) for n, s in queue.stats(now).items()
                if (task is None or n == task) and (allowed is None or n in allowed))
    sort = " · ".join(
        f'<a href="/review/?{urlencode({"order": o, **({"task": task} if task else {})})}">'
        f'{"<b>" + label + "</b>" if o == order else label}</a>'
        for o, label in (("oldest", "oldest first"), ("confidence", "lowest confidence first")))
    filters = " · ".join([f'<a href="/review/?{urlencode({"order": order})}">all tasks</a>'] + [
        f'<a href="/review/?{urlencode({"order": order, "task": n})}">{escape(n)}</a>' for n in tasks.tasks
        if allowed is None or n in allowed])
    head = [(f'<h1>Review queue</h1><p class="muted">{total} pending{"" if loaded else " (loading…)"} · '
             f'sort: {sort} · {filters}</p>')]
    if answered:
        head.append(f'<p class="answered">answered <b>{escape(answered)}</b>; the final result follows on the '
                    f'results topic</p>')
    if error:
        head.append(f'<p class="alert">{escape(error)}</p>')
    if queue.overflow:
        head.append(f'<p class="alert">{queue.overflow} review items are not held (STREAMS_REVIEW_QUEUE_MAX); '
                    f'they appear after older ones are answered and the worker restarts</p>')
    rows = []
    for item in items:
        labels = tasks.tasks[item.task].labels if item.task in tasks else ()
        buttons = "".join(f'<button type="submit" name="label" value="{escape(lbl)}">{escape(lbl)}</button>'
                          for lbl in labels)
        why = item.reason + (f" ({item.model_error})" if item.model_error else "")
        conf = f"{item.confidence:.2f}" if item.confidence is not None else NO_VALUE
        rows.append(
            f'<div class="item" data-id="{escape(item.id)}"><div class="muted">{escape(item.task)} · id '
            f'{escape(item.id)} · waiting {_age(max(now - item.queued_at, 0))} · routed: <b>{escape(why)}</b>'
            f'{" · audit sample" if item.audit else ""}</div><div class="text">{escape(item.text)}</div>'
            f'<div class="probs">model: <b>{escape(str(item.label))}</b> at {conf} · {_probabilities(item)}</div>'
            f'<form method="post" action="/review/answer"><input type="hidden" name="id" value="{escape(item.id)}">'
            f'<input type="hidden" name="task" value="{escape(item.task)}">'
            f'<input type="hidden" name="order" value="{escape(order)}">'
            f'{f"""<input type="hidden" name="filter" value="{escape(task)}">""" if task else ""}'
            f'{_csrf_field(viewer)}<p>{buttons}</p></form></div>')
    if not rows:
        rows.append('<p class="empty">nothing waits for review</p>')
    return _page("Review queue", "".join(head + rows), viewer=viewer)


def item_json(items: Sequence[PendingItem], depth: Mapping[str, Mapping[str, float]]) -> dict[str, object]:
    return {"items": [i.to_dict() for i in items], "depth": {k: v["depth"] for k, v in depth.items()}}
