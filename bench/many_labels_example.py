"""The task file's commented many-label example (`config/tasks.toml`, `support_intent`) on the local model.

Ten support intents whose names share first tokens ("account_access", "account_deletion", ...), answered
with letter codes. Prints what the server's tokenizer (`/tokenize`, llama.cpp) says about the names and the
codes (`streams.confidence.collisions`: the names collide, so without codes the worker refuses the task), then,
for 20 hand-written support messages and each option order, the first-token label mass (share of the top-20
first-token mass on the codes, the issue's "above 0.9"), the tokens that took the rest, and the share of
answers matching the label each message was written for (20 messages: a sanity check, not an accuracy figure).
One call per message and order, through the worker's `ModelClient.first_token` (Gemma 3 270M, llama.cpp).

    nice -n 10 .venv/bin/python bench/many_labels_example.py     # about a minute on 2 idle cores
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/many_labels_example.py`: import from the repo
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams.classify.model_client import ModelClient
from streams.classify.probabilities import LabelMatcher, label_scores
from streams.confidence.collisions import collisions
from streams.localdev.model_server import LocalModelServer
from streams.tasks import Task, parse_tasks
from tests.unit.test_label_options import TASK_FILES, uncommented_example

MESSAGES = (
    ("I can't log in, it says my password is wrong", "account_access"),
    ("Please delete my account and all my data", "account_deletion"),
    ("How do I change the email address on my profile?", "account_update"),
    ("I want my money back for order 1234", "billing_refund"),
    ("Can you send me a receipt for last month?", "billing_invoice"),
    ("You charged my card twice this week", "billing_dispute"),
    ("My parcel was supposed to arrive on Monday and it's still not here", "shipping_delay"),
    ("The mug arrived smashed", "shipping_damage"),
    ("Does this charger work with a 2019 laptop?", "product_question"),
    ("Do you have a shop in Leeds?", "other"),
    ("Locked out after too many attempts", "account_access"),
    ("Cancel my subscription and refund the last payment", "billing_refund"),
    ("Tracking hasn't moved in five days", "shipping_delay"),
    ("Which size should I order, I'm usually a medium?", "product_question"),
    ("The box was missing one of the two cables", "shipping_damage"),
    ("I need an invoice with our VAT number on it", "billing_invoice"),
    ("There's a charge from you I don't recognise", "billing_dispute"),
    ("Update my delivery address please", "account_update"),
    ("Close my account", "account_deletion"),
    ("What are your opening hours?", "other"),
)


async def run(task: Task) -> None:
    client = ModelClient(120, 2)
    try:
        for order in ("fixed", "shuffled"):
            t = replace(task, prompt=replace(task.prompt, option_order=order))
            masses: list[float] = []
            hits, lost = 0, defaultdict[str, float](float)
            for i, (text, label) in enumerate(MESSAGES):
                rt = t.for_request(f"example-{i}")
                reply = await client.first_token(rt, text)
                matcher = LabelMatcher(rt.answers)
                s = label_scores(reply.top_logprobs or [], matcher)
                masses.append(s.label_mass)
                hits += rt.labels[int(s.probabilities.argmax())] == label
                for tok, lp in reply.top_logprobs or []:
                    if matcher.index(tok) < 0:
                        lost[repr(tok)] += math.exp(lp) / s.topk_mass / len(MESSAGES)
            top = ", ".join(f"{tok} {share:.3f}" for tok, share in sorted(lost.items(), key=lambda kv: -kv[1])[:6])
            print(f"{order}: label mass mean {sum(masses) / len(masses):.3f}, min {min(masses):.3f}; "
                  f"answers matching the intended label {hits}/{len(MESSAGES)}; calls {len(MESSAGES)}")
            print(f"  rest of the top-20 mass: {top}")
    finally:
        await client.close()


def main() -> None:
    whole, _ = uncommented_example(TASK_FILES[0])
    with LocalModelServer(parallel=2) as server:
        task = parse_tasks(whole, "config/tasks.toml", {"MODEL_BASE_URL": server.base_url}).tasks["support_intent"]
        for what, t in (("names", replace(task, codes=())), ("codes", task)):
            groups, how = collisions(t)
            print(f"{what}: answers sharing a first token ({how}): {groups or 'none'}")
        asyncio.run(run(task))


if __name__ == "__main__":
    main()
