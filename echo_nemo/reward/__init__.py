"""Rule-based math reward: formats, sandboxed execution, math-verify, server, client."""

from echo_nemo.reward.formats import classify
from echo_nemo.reward.score import Score, score

__all__ = ["Score", "classify", "score"]
