"""The LLM layer: one engine interface, three engines, a content-addressed cache, and the client
every LLM stage holds.

* `types`   — Request, SamplingParams, Result, TokenLogprob, Engine (the interface)
* `config`  — EngineConfig (the YAML `llm:` section)
* `models`  — resolve_model / load_causal_lm (the embedded SmolLM2, Hub names, local paths)
* `engines` — create_engine, TransformersEngine, VLLMEngine (lazy import), OpenAIEngine
* `cache`   — LLMCache (SQLite WAL), request_key
* `client`  — LLMClient (cache + one batched engine call + validation), engine_config_for
* `stage`   — GenerateStage (`generate`)
* `server`  — an OpenAI-compatible server over the transformers engine (`datacraft serve`)
* `testing` — ServerThread and a fault-injecting server for tests
"""
