"""`data/` of a run loads straight into TRL: SFT rows carry no (all-null) `chosen` / `rejected`,
preference rows carry `prompt` / `chosen` / `rejected` and no `messages`; both read back as a run."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
from trl.data_utils import is_conversational, maybe_extract_prompt

from datacraft.io.readers import ReadOptions, read_all
from datacraft.pipeline.config import load_config
from datacraft.pipeline.run import run_config

from .conftest import DATA


def _run(tmp_path: Path, corpus: str, name: str) -> Path:
    out = tmp_path / name
    config = load_config(data={
        "name": name,
        "input": {"path": str(DATA / corpus), "limit": 40},
        "stages": [{"name": "heuristics"}, {"name": "filter", "where": ["length.response >= 1"]}],
        "output": {"path": str(out), "format": "parquet"},
    })
    run_config(config)
    return out


def _load(out: Path) -> datasets.Dataset:
    files = sorted(str(p) for p in (out / "data").glob("*.parquet"))
    # a cache of its own: `datasets` may reuse the cache of earlier files with the same names
    return datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(out.parent / "hf_cache"))


def test_sft_rows_load_into_trl_without_preference_columns(tmp_path: Path) -> None:
    out = _run(tmp_path, "selfinstruct_60.jsonl", "sft")
    ds = _load(out)
    assert ds.num_rows == 40
    assert "messages" in ds.column_names
    assert not {"chosen", "rejected", "prompt"} & set(ds.column_names)
    # TRL's own format check: the whole conversation under `messages`, never a null column
    assert all(is_conversational(ds[i]) for i in range(ds.num_rows))
    assert ds[0]["messages"][-1]["role"] == "assistant"
    back, dropped = read_all(str(out))
    assert back.height == 40 and dropped.height == 0
    assert back["chosen"].null_count() == 40  # the batch layout keeps its canonical columns


def test_preference_rows_load_into_trl_as_prompt_chosen_rejected(tmp_path: Path) -> None:
    source, _ = read_all(str(DATA / "llamafactory_dpo_60.jsonl"), ReadOptions(limit=40))
    out = _run(tmp_path, "llamafactory_dpo_60.jsonl", "dpo")
    ds = _load(out)
    assert ds.num_rows == 40
    assert {"prompt", "chosen", "rejected"} <= set(ds.column_names)
    assert "messages" not in ds.column_names
    row = ds[0]
    assert is_conversational(row)
    # the explicit-prompt format: TRL takes the prompt as written, not a prefix of chosen/rejected
    assert maybe_extract_prompt(row)["prompt"] == row["prompt"]
    assert [m["role"] for m in row["prompt"]] == ["user"] and [m["role"] for m in row["chosen"]] == ["assistant"]
    # ... and it is still a datacraft run: read back, the prompt is the rows' `messages` again
    back, dropped = read_all(str(out))
    assert dropped.height == 0
    by_id = source.select("id", "messages", "chosen").sort("id")
    assert back.select("id", "messages", "chosen").sort("id").equals(by_id)


def test_mixed_rows_keep_both_layouts_readable(tmp_path: Path) -> None:
    """A batch of SFT and preference rows together keeps `messages` + `chosen` / `rejected` (nulls
    where a row has none): the one layout that holds both; it reads back unchanged."""
    from datacraft.core.rows import concat_batches, to_output_frame

    sft, _ = read_all(str(DATA / "selfinstruct_60.jsonl"), ReadOptions(limit=3))
    pref, _ = read_all(str(DATA / "llamafactory_dpo_60.jsonl"), ReadOptions(limit=2))
    written = to_output_frame(concat_batches([sft, pref]))
    assert {"messages", "chosen", "rejected"} <= set(written.columns) and "prompt" not in written.columns
    path = tmp_path / "mixed.parquet"
    written.write_parquet(path)
    back, _ = read_all(str(path))
    assert back.height == 5 and back["chosen"].null_count() == 3


@pytest.mark.slow
def test_sft_trainer_takes_a_step_on_written_data(tmp_path: Path) -> None:
    """One real SFTTrainer step of the embedded model on `data/` as written (no column renamed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from datacraft.llm.models import resolve_model

    out = _run(tmp_path, "selfinstruct_60.jsonl", "sft")
    ds = _load(out).select_columns(["messages"]).select(range(4))
    path = resolve_model("embedded")
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    args = SFTConfig(output_dir=str(tmp_path / "ckpt"), max_steps=1, per_device_train_batch_size=2, max_length=64,
                     report_to=[], save_strategy="no", use_cpu=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    result = trainer.train()
    assert result.global_step == 1
