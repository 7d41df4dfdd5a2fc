"""The data sources ``experiment.data`` can name, by their gin names (beside ``objectives.OBJECTIVES``), and the
seqio pipeline's configurable parts. Each entry says where its class lives and whether importing it starts
TensorFlow (seconds): gin registers the light ones at once and the others only when a config mentions one.

Add a source: a class implementing ``data.batch.DataSource`` and one line in ``DATA_SOURCES``."""

from __future__ import annotations

import dataclasses
import importlib


@dataclasses.dataclass(frozen=True)
class Registered:
    name: str  # the gin name
    target: str  # "module:Class"
    imports_tensorflow: bool = True
    picked_when_bound: bool = False  # experiment.data unset: chosen when the config binds one of its fields

    def load(self) -> type:
        module, _, cls = self.target.partition(":")
        return getattr(importlib.import_module(module), cls)


DATA_SOURCES: dict[str, Registered] = {r.name: r for r in (
    Registered("TextFileData", "allam_jax.data.text_files:TextFileData", imports_tensorflow=False,
               picked_when_bound=True),
    Registered("SeqioData", "allam_jax.data.pipeline:SeqioData"),
    Registered("CachedData", "allam_jax.data.cached_pipeline:CachedData"),
    Registered("SftData", "allam_jax.align.sft_data:SftData"),
    Registered("DpoData", "allam_jax.align.preference_data:DpoData"),
)}
DEFAULT_DATA_SOURCE = "SeqioData"  # experiment.data unset and no picked_when_bound source bound

# configurable parts of the sources above (gin: ``SeqioData.cleaning = @CleaningConfig()``)
DATA_PARTS: dict[str, Registered] = {r.name: r for r in (
    Registered("MixtureSchedule", "allam_jax.data.pipeline:MixtureSchedule"),
    Registered("CleaningConfig", "allam_jax.data.sources:CleaningConfig"),
    Registered("ParallelRendering", "allam_jax.data.sources:ParallelRendering"),
    Registered("CorpusPaths", "allam_jax.data.tasks:CorpusPaths"),
    Registered("ChatTemplate", "allam_jax.align.chat:ChatTemplate", imports_tensorflow=False),
)}


def lazy() -> list[Registered]:
    """The entries registered only when a config mentions them (their import starts TensorFlow)."""
    return [r for r in (*DATA_SOURCES.values(), *DATA_PARTS.values()) if r.imports_tensorflow]


__all__ = ["DATA_PARTS", "DATA_SOURCES", "DEFAULT_DATA_SOURCE", "Registered", "lazy"]
