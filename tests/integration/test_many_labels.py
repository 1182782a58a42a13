"""A 10-label task whose names share first tokens, on the real broker, a real worker process and the synthetic
model: with option codes every item is classified in one call and the results name labels; without codes the
worker refuses to start and names the colliding labels."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from streams.localdev.broker import EmbeddedBroker
from streams.schemas import validate
from tests.integration.harness import SyntheticModel, Worker, collect, produce, run, wait_ready

NAMES = ("account_access", "account_deletion", "account_update", "billing_refund", "billing_invoice",
         "billing_dispute", "shipping_delay", "shipping_damage", "product_question", "other")


def _tasks(path: Path, base_url: str, codes: bool) -> Path:
    labels = ", ".join(f'{{name = "{n}", description = "about {n.replace("_", " ")}"}}' for n in NAMES)
    path.write_text(f"""
[[task]]
name = "support"
labels = [{labels}]
{'codes = "letters"' if codes else ""}
[task.model]
base_url = "{base_url}"
name = "synthetic"
[task.routing]
review_threshold = 0.6
min_label_mass = 0.5
[[task.prompt.examples]]
text = "I was charged twice for one order"
label = "billing_dispute"
""")
    return path


def test_ten_labels_sharing_first_tokens_classify_with_codes_and_are_refused_without(
        broker: EmbeddedBroker, workdir: Path) -> None:
    with SyntheticModel(workdir, "--labels", ",".join(NAMES)) as model:
        # Without codes: refused before traffic (exit 2, the ConfigError naming the colliding labels).
        refused = Worker(broker.bootstrap, _tasks(workdir / "plain.toml", model.base_url, codes=False), workdir)
        done = subprocess.run([sys.executable, "-m", "streams", "worker"], env=refused.env, capture_output=True,
                              text=True, timeout=30)
        assert done.returncode == 2, done.stderr[-2000:]
        assert "'account_access' / 'account_deletion' / 'account_update'" in done.stderr
        assert "'shipping_delay' / 'shipping_damage'" in done.stderr and 'codes = "letters"' in done.stderr
        assert "'other'" not in done.stderr and model.stats()["requests"] == 0

        # With codes: one call per item, label mass near 1, the result names the label. Every text is its own, so
        # the answer cache (repeated texts are answered once) saves no call.
        worker = Worker(broker.bootstrap, _tasks(workdir / "codes.toml", model.base_url, codes=True), workdir)
        items = [(f"r{i}", NAMES[i % len(NAMES)]) for i in range(30)]
        with worker.process() as proc:
            wait_ready(proc)
            run(produce(broker.bootstrap, worker.topic("requests"), [
                (rid.encode(), orjson.dumps({"id": rid, "task": "support", "text": f"help {rid} [[label={name}]]"}))
                for rid, name in items]))
            got = run(collect(broker.bootstrap, [worker.topic("results"), worker.topic("review")],
                              lambda r: len(r) >= len(items), 30))
        records = {r.json()["id"]: r.json() for r in got}
        assert len(records) == len(items) and all(r.topic == worker.topic("results") for r in got)
        for rid, name in items:
            rec = records[rid]
            validate("classification_result", rec)
            assert rec["label"] == name and rec["label_mass"] > 0.9 and set(rec["probabilities"]) == set(NAMES)
        assert model.stats()["requests"] == len(items)  # one first-token call per item, nothing else
