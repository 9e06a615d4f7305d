"""Stages by name. Modules are imported lazily so a no-model pipeline never imports torch."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from datacraft.core.stage import RunContext, Stage

# name → "module:Class"
_BUILTIN: dict[str, str] = {
    # cheap tier
    "heuristics": "datacraft.stages.score.heuristics:HeuristicsStage",
    "filter": "datacraft.stages.transform.filter:FilterStage",
    "exact_dedup": "datacraft.stages.dedup.exact:ExactDedupStage",
    "near_dedup": "datacraft.stages.dedup.minhash:MinHashDedupStage",
    "write": "datacraft.stages.handoff.write:WriteStage",
    # embeddings, dedup, selection
    "embed": "datacraft.stages.vectors.embed:EmbedStage",
    "semantic_dedup": "datacraft.stages.dedup.semantic:SemanticDedupStage",
    "select": "datacraft.stages.select.submodular:SubmodularSelectStage",
    "smart_mixture": "datacraft.stages.select.mixture:SmartMixtureStage",
    "deita_select": "datacraft.stages.select.deita:DeitaSelectStage",
    "cherry_select": "datacraft.stages.select.cherry:CherrySelectStage",
    # scoring
    "quality": "datacraft.stages.score.quality:QualityStage",
    "complexity": "datacraft.stages.score.complexity:ComplexityStage",
    "reward": "datacraft.stages.score.quality:RewardModelStage",
    "diversity": "datacraft.stages.score.diversity:DiversityStage",
    "ifd": "datacraft.stages.score.ifd:IFDStage",
    "ds2_rate": "datacraft.stages.score.ds2_rate:DS2RateStage",
    "ds2_curate": "datacraft.stages.score.ds2:DS2CurateStage",
    "pref_head": "datacraft.stages.score.pref_head:PrefHeadStage",
    # synthesis
    "generate": "datacraft.stages.synthesize.generate:GenerateStage",
    "multihop": "datacraft.stages.synthesize.multihop:MultiHopStage",
    "reflection": "datacraft.stages.synthesize.reflection:ReflectionStage",
    "mosaic": "datacraft.stages.synthesize.mosaic:MosaicStage",
    "dpo_pairs": "datacraft.stages.synthesize.dpo:DPOPairsStage",
    # hand-off
    "decontaminate": "datacraft.stages.handoff.decontaminate:DecontaminateStage",
    "train": "datacraft.stages.handoff.train:TrainStage",
}
_EXTRA: dict[str, type[Stage]] = {}


class UnknownStageError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def register(cls: type[Stage]) -> type[Stage]:
    """Class decorator for stages defined outside the built-in list (plugins, tests)."""
    _EXTRA[cls.name] = cls
    return cls


def stage_names() -> list[str]:
    """Every registered name: the built-in stages and those added with `register`."""
    return sorted({*_BUILTIN, *_EXTRA})


def stage_class(name: str) -> type[Stage]:
    if name in _EXTRA:
        return _EXTRA[name]
    spec = _BUILTIN.get(name)
    if spec is None:
        raise UnknownStageError(f"unknown stage {name!r}; known stages: {', '.join(stage_names())}")
    module, cls = spec.split(":")
    return getattr(importlib.import_module(module), cls)


def build_stage(name: str, params: dict[str, Any] | None = None, *, label: str | None = None, context: RunContext | None = None) -> Stage:
    return stage_class(name)(params or {}, label=label, context=context)
