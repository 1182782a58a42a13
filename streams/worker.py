"""The composition root: one place that builds the worker from settings and tasks.

`build_services` makes every shared object once (model client with its metrics observer, calibrator
registry, drift accumulator, classifier, review queue, publisher); each agents module then registers
its agents, timers and pages on the app with them. Nothing here runs at import.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import faust

from streams.app import ClassifyApp, build_app, build_topics, quiet_http_logs
from streams.calibration import agents as calibration_agents
from streams.calibration.registry import CalibratorRegistry
from streams.classify import agents as classify_agents
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


def build_services(settings: Settings, tasks: TaskRegistry) -> Services:
    app = build_app(settings)
    topics = build_topics(app, settings)
    metrics = ServiceMetrics(settings.token_prices)
    tracing = Tracing.from_endpoint(settings.otlp_endpoint, settings.app_id)
    app.tracing = tracing
    model = ModelClient(settings.model_timeout_s, settings.model_max_retries, observer=metrics, tracing=tracing,
                        max_in_flight=settings.max_in_flight, min_in_flight=settings.min_in_flight)
    metrics.state.gates = model.gates  # the same dict: endpoints appear as their first call is made
    calibrators = CalibratorRegistry(tasks)
    accumulator = DriftAccumulator(tasks)
    classifier = Classifier(tasks, model, settings.max_text_chars, settings.deadletter_excerpt_bytes,
                            calibrators, accumulator.observe, tracing)
    queue = ReviewQueue({name: t.labels for name, t in tasks.tasks.items()}, max_items=settings.review_queue_max)
    publish = KafkaPublisher(app.maybe_start_producer,
                             {logical: topic.get_topic_name() for logical, topic in topics.items()}, tracing)
    return Services(settings, tasks, app, topics, metrics, tracing, model, calibrators, accumulator, classifier,
                    queue, publish)


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
