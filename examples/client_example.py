"""Publish 20 requests with streams.client and print what became of each.

Run it while `make demo` runs, with the broker address the demo prints (the demo's topics have no prefix):

    STREAMS_BROKER=kafka://127.0.0.1:PORT .venv/bin/python examples/client_example.py
"""

from __future__ import annotations

import asyncio

from streams.client import DeadLetter, StreamsClient

TEXTS = [
    "A triumph from start to finish.", "Dull, overlong and badly acted.", "The best film of the year.",
    "I walked out after an hour.", "Funny, moving and beautifully shot.", "A tedious, clumsy mess.",
    "Its warmth wins you over.", "Neither the script nor the cast can save it.", "A small gem.",
    "Loud, empty and forgettable.", "The performances are superb.", "A chore to sit through.",
    "Smart, tense and surprising.", "The jokes fall flat.", "A joy for the whole family.",
    "Predictable from the first scene.", "A bold, confident debut.", "It never comes to life.",
    "Gripping to the last minute.", "A lazy sequel.",
]


async def main() -> None:
    # STREAMS_BROKER, STREAMS_TOPIC_PREFIX and the Kafka security variables, as the worker reads them.
    async with StreamsClient.from_env() as client, \
            client.outcomes(start="latest", dead_letters=True) as outcomes:  # open it before publishing
        ids = await client.publish_many({"task": "movie_sentiment", "text": text} for text in TEXTS)
        waiting = dict(zip(ids, TEXTS, strict=True))
        print(f"published {len(ids)} requests to {client.topic('requests')}")
        async with asyncio.timeout(600):
            async for outcome in outcomes:  # each id once, whatever a worker crash replays
                text = waiting.pop(outcome.id or "", None)
                if text is None:
                    continue  # someone else's request
                if isinstance(outcome, DeadLetter):
                    print(f"dead letter  {outcome.error_type}: {outcome.message}")
                else:
                    confidence = "--" if outcome.confidence is None else f"{outcome.confidence:.2f}"
                    why = f" ({outcome.review_reason})" if outcome.decision == "review" else ""
                    print(f"{outcome.decision:<6} {outcome.label!s:<7} {confidence}  {text}{why}")
                if not waiting:
                    break


if __name__ == "__main__":
    asyncio.run(main())
