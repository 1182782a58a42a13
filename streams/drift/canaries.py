"""Running a task's canary prompts: the same sampling for the baseline and for the live checks."""

from __future__ import annotations

import asyncio

from streams.classify.model_client import ModelClient
from streams.tasks import Task


async def canary_samples(client: ModelClient, task: Task) -> dict[str, list[dict[str, float]]]:
    """Every canary prompt, `canary_repeats` times: {prompt: [top-k token -> logprob, one per repeat]}."""

    async def one(prompt: str) -> dict[str, float]:
        return dict((await client.first_token(task, prompt)).top_logprobs or [])

    return {prompt: list(await asyncio.gather(*(one(prompt) for _ in range(task.drift.canary_repeats))))
            for prompt in task.drift.canaries}
