"""The simulated VLLM (an OpenAI-compatible HTTP server) for tests, benchmarks and demos.

Not part of the runtime package: the wheel ships tasks, flows and expectations only.
"""
