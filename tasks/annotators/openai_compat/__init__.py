"""The `openai` backend: any OpenAI-compatible chat-completions endpoint.

- `annotator`: `OpenAIAnnotator`, the backend itself (response modes, the async loop, stops);
- `transport`: HTTP, retries with backoff, token buckets, image billing;
- `billing`: cost, estimates and the budget (a mixin of the annotator);
- `batch`: `annotator.mode: batch`, each round as OpenAI Batch jobs.
"""

from tasks.annotators.openai_compat.annotator import OpenAIAnnotator

__all__ = ["OpenAIAnnotator"]
