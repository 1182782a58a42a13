"""The composition root: one place that builds the worker from settings and tasks.

`build_services` makes every shared object once (model client with its metrics observer, calibrator
registry, drift accumulator, classifier, review queue, publisher); each agents module then registers
its agents, timers and pages on the app with them. Nothing here runs at import.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import faust

from streams.app import ClassifyApp, build_app, build_topics, quiet_http_logs
from streams.calibration import agents as calibration_agents
from streams.calibration.registry import CalibratorRegistry
from streams.classify import agents as classify_agents
from streams.classify.answer_cache import AnswerCache
from streams.classify.model_client import ModelClient
from streams.classify.service import Classifier
from streams.classify.stall import AgentProgress
from streams.confidence.collisions import refuse_collisions
from streams.drift import agents as drift_agents
from streams.drift.monitor import DriftAccumulator
from streams.ops import agents as ops_agents
from streams.ops.metrics import ServiceMetrics, count_retries
from streams.ops.review_queue import ReviewQueue
from streams.ops.tracing import Tracing
from streams.publishing import KafkaPublisher, Publish
from streams.settings import Settings
from streams.tasks import TaskRegistry, load_tasks

log = logging.getLogger(__name__)


@dataclass
class Services:
    """What the agents modules share; built once per worker by `build_services`."""

    settings: Settings
    tasks: TaskRegistry
    app: ClassifyApp
    topics: dict[str, faust.TopicT]
    metrics: ServiceMetrics
    tracing: Tracing
    model: ModelClient
    calibrators: CalibratorRegistry
    accumulator: DriftAccumulator
    classifier: Classifier
    queue: ReviewQueue
    publish: Publish
    #: Acks per partition and input waits of the classify agent, read by the stall watch.
    progress: AgentProgress = field(default_factory=AgentProgress)
    #: Raw answers of texts already answered, shared through the answer-cache topic; None when off.
    answers: AnswerCache | None = None


def build_services(settings: Settings, tasks: TaskRegistry) -> Services:
    app = build_app(settings)
    topics = build_topics(app, settings)
    metrics = ServiceMetrics(settings.token_prices)
    tracing = Tracing.from_endpoint(settings.otlp_endpoint, settings.app_id)
    app.tracing = tracing
    model = ModelClient(settings.model_timeout_s, settings.model_max_retries, observer=metrics, tracing=tracing,
                        max_in_flight=settings.max_in_flight,
                        min_in_flight=min(settings.min_in_flight, settings.max_in_flight),
                        pacing=settings.model_pacing_enabled)
    metrics.state.gates = model.gates  # the same dict: endpoints appear as their first call is made
    metrics.state.pacers = model.pacers  # likewise
    calibrators = CalibratorRegistry(tasks)
    accumulator = DriftAccumulator(tasks)
    answers = answer_cache(settings, tasks, metrics)
    classifier = Classifier(tasks, model, settings.max_text_chars, settings.deadletter_excerpt_bytes,
                            calibrators, accumulator.observe, tracing, answers)
    queue = ReviewQueue({name: t.labels for name, t in tasks.tasks.items()}, max_items=settings.review_queue_max)
    publish = KafkaPublisher(app.maybe_start_producer,
                             {logical: topic.get_topic_name() for logical, topic in topics.items()}, tracing)
    return Services(settings, tasks, app, topics, metrics, tracing, model, calibrators, accumulator, classifier,
                    queue, publish, answers=answers)


def answer_cache(settings: Settings, tasks: TaskRegistry, metrics: ServiceMetrics) -> AnswerCache | None:
    """The worker's answer cache, or None when STREAMS_ANSWER_CACHE_ENTRIES is 0 or no task uses one. Warns where
    a task's own setting goes against its model's sampling (the classify agents log which tasks use it)."""
    on = sorted(name for name, t in tasks.tasks.items() if t.caches_answers)
    for name, t in tasks.tasks.items():
        if t.answer_cache and t.samples:
            log.warning("task %s: answer_cache = true although it samples (temperature > 0 or self-consistency): "
                        "a repeated text gets the first answer drawn, not a new draw", name)
    if settings.answer_cache_entries == 0:
        if any(t.answer_cache for t in tasks.tasks.values()):
            log.warning("STREAMS_ANSWER_CACHE_ENTRIES=0 turns the answer cache off, also for the tasks that set "
                        "answer_cache = true")
        return None
    if not on:
        return None
    cache = AnswerCache(settings.answer_cache_entries, settings.answer_cache_ttl_s,
                        observe=metrics.answer_cache_lookup)
    metrics.answer_cache_entries.set_function(lambda: len(cache))
    return cache


def build_worker(env: Mapping[str, str] | None = None) -> ClassifyApp:
    """Settings and tasks validated (ConfigError names what to fix), services built, every agent registered."""
    settings = Settings.from_env(env)
    tasks = load_tasks(settings.tasks_file, env)
    refuse_collisions(tasks)  # before any traffic: colliding answers would go to review one by one
    services = build_services(settings, tasks)
    quiet_http_logs()
    count_retries(services.metrics)
    for module in (classify_agents, calibration_agents, drift_agents, ops_agents):
        module.register(services)
    return services.app
