"""Token prices and the cost estimate of one model call, with prompt tokens served from a cache priced apart.

Hosted APIs bill the prompt tokens they reuse from their prompt cache at a discount (OpenAI: half or less of
the input price; DeepSeek: about a tenth), and a self-hosted server spends almost nothing on them, so a cost
estimate that prices every prompt token alike overstates what a prefix-stable prompt costs. Prices are
declared once, per model, in `STREAMS_TOKEN_PRICES` (`streams.settings.TokenPrices` parses and validates
them); this module only holds the price triple and the arithmetic, so the metrics and the tests share it.
"""

from __future__ import annotations

from typing import NamedTuple


class TokenPrice(NamedTuple):
    """USD per million tokens of one model: uncached prompt, completion, and cached prompt tokens."""

    prompt: float
    completion: float
    cached: float

    @classmethod
    def of(cls, prompt: float, completion: float, cached: float | None = None) -> TokenPrice:
        """The price with `cached` defaulting to the uncached prompt price.

        That default is the one place the rule is written. It never underestimates (no provider bills a cache
        read above its input price), and it keeps a price list written before cached tokens were counted
        giving exactly the estimate it gave before, since cached tokens are a part of the prompt tokens.
        """
        return cls(prompt, completion, prompt if cached is None else cached)

    def cost_usd(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        """Estimated USD of a call: `cached_tokens` (a part of `prompt_tokens`) at the cached price, the rest of
        the prompt at the prompt price. The cached count is clamped to [0, prompt_tokens], as the reply parser
        does, so an inconsistent report cannot make the uncached remainder negative."""
        cached = min(max(cached_tokens, 0), prompt_tokens)
        return ((prompt_tokens - cached) * self.prompt + cached * self.cached
                + completion_tokens * self.completion) / 1e6
