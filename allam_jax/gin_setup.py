"""Gin wiring: the only place library classes become configurable (configuration enters at the edge)."""

from __future__ import annotations

import dataclasses
import inspect
import io
import math
import os
import re
import tokenize
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import gin
from gin import config as gin_config
from gin import resource_reader
from gin.config import ConfigurableReference

from allam_jax.checkpoint.emergency import CheckpointConfig
from allam_jax.core import config_types
from allam_jax.core.errors import ConfigError
from allam_jax.core.partitioning import PartitioningConfig
from allam_jax.data.registry import DATA_PARTS, DATA_SOURCES, DEFAULT_DATA_SOURCE, lazy
from allam_jax.model.config import ModelConfig
from allam_jax.objectives import OBJECTIVES, make_objective
from allam_jax.objectives.lm import StepConfig
from allam_jax.train.experiment import Experiment, TrainerConfig
from allam_jax.train.heldout_watch import HeldoutWatch
from allam_jax.train.optimizer import OptimizerConfig

REPO_GIN_DIR = Path(__file__).resolve().parents[1] / "gin_configs"

ModelConfigG = gin.external_configurable(ModelConfig, "ModelConfig")
OptimizerConfigG = gin.external_configurable(OptimizerConfig, "OptimizerConfig")
_STEP_DEFAULTS = {f.name: f.default for f in dataclasses.fields(StepConfig)}


# former spellings still read, each with what replaces it (the configuration reference lists them from here)
LEGACY_SPELLINGS: dict[str, str] = {
    "StepConfig.grad_accum_steps": "TrainerConfig.grad_accum_steps (any objective)",
    "experiment.dpo = @DpoConfig()": "experiment.objective = 'dpo', configured by DpoConfig.*",
}


def _step_config(z_loss_weight: float = _STEP_DEFAULTS["z_loss_weight"],
                 num_languages: int = _STEP_DEFAULTS["num_languages"],
                 logits_chunk_size: int = _STEP_DEFAULTS["logits_chunk_size"],
                 grad_accum_steps: Optional[int] = None) -> tuple[StepConfig, Optional[int]]:
    """gin's ``StepConfig``: the dataclass, plus ``grad_accum_steps``, its former field (now
    ``TrainerConfig.grad_accum_steps``), still read so configs that set it keep working."""
    return StepConfig(z_loss_weight, num_languages, logits_chunk_size), grad_accum_steps


StepConfigG = gin.external_configurable(_step_config, "StepConfig")
PartitioningConfigG = gin.external_configurable(PartitioningConfig, "PartitioningConfig")
TrainerConfigG = gin.external_configurable(TrainerConfig, "TrainerConfig")
HeldoutWatchG = gin.external_configurable(HeldoutWatch, "HeldoutWatch")
CheckpointConfigG = gin.external_configurable(CheckpointConfig, "CheckpointConfig")


for _entry in (*DATA_SOURCES.values(), *DATA_PARTS.values()):
    if not _entry.imports_tensorflow:
        gin.external_configurable(_entry.load(), _entry.name)


def _register_seqio_configurables() -> None:
    """The seqio pipeline imports TensorFlow (seconds); its configurables (``data.registry.lazy()``) are
    registered lazily, only when a gin file mentions them, so ``allam info`` and the tokenizer commands stay
    fast."""
    global _SEQIO_REGISTERED
    if not _SEQIO_REGISTERED:
        for entry in lazy():
            gin.external_configurable(entry.load(), entry.name)
        _SEQIO_REGISTERED = True


_SEQIO_REGISTERED = False


def register(*classes: type) -> None:
    """Makes classes configurable under their own names (once): a client of this module (the recipe)
    registers its knobs here, so this module imports none of its clients."""
    for cls in classes:
        try:
            gin.get_configurable(cls.__name__)
        except ValueError:
            gin.external_configurable(cls, cls.__name__)


def configurables(*extra: type) -> dict[str, Callable]:
    """Name -> class or function of every configurable this project registers (the lazily registered seqio ones
    and the objectives' configs included), after registering ``extra`` (a client's own knobs)."""
    _register_seqio_configurables()
    register(*extra, *(cls.config_class for cls in OBJECTIVES.values() if cls.config_class is not StepConfig))
    out: dict[str, Callable] = {}
    for _, configurable in gin_config._REGISTRY.items():  # noqa: SLF001 - gin has no public walk
        if configurable.module.startswith("allam_jax"):
            out.setdefault(configurable.name, configurable.wrapped)
    return out


# the seqio configurables' names, registered (importing TensorFlow) only when a config mentions one
_SEQIO_NAMES = tuple(entry.name for entry in lazy())
gin.constant("allam.DEFAULT_GIN_DIR", str(REPO_GIN_DIR))


def _guard_package_lookup() -> None:
    """gin resolves ``include 'a/b.gin'`` by also treating ``a`` as a Python package; a plain folder ``a/`` where
    the user stands (``runs/`` after a recipe run) is then a namespace package without a file, and gin's check
    crashes (``expected str ... not NoneType``) before the next search path (``gin_configs/``) is tried. Make
    that check answer 'not here' instead, so the search goes on."""
    def exists(path: str) -> bool:
        try:
            return resource_reader.system_path_file_exists(path)
        except (TypeError, ValueError, ImportError):
            return False

    gin_config._FILE_READERS[:] = [  # noqa: SLF001 - gin offers registration, not replacement
        (reader, exists if check is resource_reader.system_path_file_exists else check)
        for reader, check in gin_config._FILE_READERS
    ]


_guard_package_lookup()


def _one_line(e: BaseException) -> str:
    if isinstance(e, tokenize.TokenError):  # ('unexpected EOF in multi-line statement', (1, 0))
        return f"{e.args[0]} (an unclosed bracket or quote?)"
    text = re.sub(r"<ast\.\w+ object at 0x[0-9a-f]+>", "a bare name (quote a string; write @Name() for a "
                  "configurable)", str(e))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines[:3]) if lines else type(e).__name__


class Override:
    """Typed values for parameters of one configurable (a config class, or ``build_experiment``).

    :func:`parse` applies them after the gin files and before the bindings: a file's value is replaced,
    a user's binding still wins. Names are checked when an override is made, so a renamed field fails at
    once, not when a run starts. A class as a value means a configured instance of it (gin's ``@Name()``).
    """

    def __init__(self, target: Union[type, Callable], **values: Any):
        self.name = _gin_name(target)
        known = _parameter_names(target)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{self.name} has no parameter(s) {unknown}; it has {sorted(known)}")
        self.values = dict(values)

    def bind(self) -> None:
        for field, value in self.values.items():
            if isinstance(value, type):
                value = ConfigurableReference(_gin_name(value), True)
            gin.bind_parameter(f"{self.name}.{field}", value)

    def __repr__(self) -> str:
        return f"Override({self.name}, {', '.join(f'{k}={v!r}' for k, v in self.values.items())})"


def _gin_name(target: Union[type, Callable]) -> str:
    return "experiment" if target is build_experiment else target.__name__


def _parameter_names(target: Union[type, Callable]) -> set[str]:
    if dataclasses.is_dataclass(target):
        return {f.name for f in dataclasses.fields(target) if f.init}
    return set(inspect.signature(target).parameters)


def parse(gin_files: Sequence[str], bindings: Sequence[str] = (), overrides: Sequence[Override] = ()) -> None:
    """Parses gin files, then applies ``overrides``, then the bindings; any problem becomes a one-line
    ConfigError naming it."""
    gin.clear_config()
    register(*(cls.config_class for cls in OBJECTIVES.values() if cls.config_class is not StepConfig))
    for extra in os.environ.get("ALLAM_GIN_PATH", "").split(os.pathsep) + [str(REPO_GIN_DIR), os.getcwd()]:
        if extra:
            gin.add_config_file_search_path(extra)
    for f in gin_files:
        if not Path(f).is_file() and not (REPO_GIN_DIR / f).is_file():
            raise FileNotFoundError(f"gin file not found: {f}")
    files = [f if Path(f).is_file() else str(REPO_GIN_DIR / f) for f in gin_files]
    texts = _config_texts(files, bindings) + [f"{o.name} {v.__name__ if isinstance(v, type) else ''}"
                                              for o in overrides for v in o.values.values()]
    if any(re.search(rf"\b{n}\b", t) for t in texts for n in _SEQIO_NAMES):
        _register_seqio_configurables()
    errors = (ValueError, SyntaxError, KeyError, TypeError, OSError, tokenize.TokenError)
    try:
        gin.parse_config_files_and_bindings(files, [], finalize_config=False)
        for override in overrides:
            override.bind()
    except errors as e:
        raise ConfigError(f"bad gin configuration: {_one_line(e)}") from None
    _COMMAND_LINE_BINDINGS[:] = list(bindings)
    for binding in bindings:  # one at a time, so an error names its binding
        try:
            gin.parse_config_files_and_bindings([], [binding], finalize_config=False)
        except errors as e:
            raise ConfigError(f"bad gin binding {binding!r}: {_one_line(e)}") from None
    config_types.check_bindings(gin_config._CONFIG, _configurable)  # noqa: SLF001 - gin has no public walk


def _configurable(selector: str) -> Optional[tuple[str, Callable]]:
    """(name, class or function) of a bound selector; None for one gin does not know (reported by gin itself)."""
    try:
        found = gin_config._REGISTRY.get_match(selector)  # noqa: SLF001
    except (KeyError, ValueError):
        return None
    return (found.name, found.wrapped) if found is not None else None


_COMMAND_LINE_BINDINGS: list[str] = []  # the last parse()'s own bindings, checked against what is built


def _check_data_bindings(data: object) -> None:
    """A command-line binding of a data class the run does not build would be ignored in silence (gin binds
    any configurable): training would read other data than the user named."""
    used = type(data).__name__
    for binding in _COMMAND_LINE_BINDINGS:
        name = _binding_target(binding)
        if name in DATA_SOURCES and name != used:
            raise ConfigError(f"binding {binding.strip()!r} sets {name}, but this run's data is {used} "
                              f"(experiment.data): add  experiment.data = @{name}()  or bind {used} instead")


def _config_texts(files: Sequence[str], bindings: Sequence[str]) -> list[str]:
    """The text of every gin file reached from ``files`` through ``include`` lines (and the bindings); an
    include cycle or a file that is not UTF-8 is a ConfigError naming the files, before gin recurses forever."""
    texts = list(bindings)

    def visit(path: Path, chain: tuple[Path, ...]) -> None:
        here = path.resolve()
        if here in chain:
            cycle = chain[chain.index(here):] + (here,)
            raise ConfigError("gin include cycle: " + " -> ".join(str(p) for p in cycle))
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"gin file {path} is not UTF-8 text (byte {e.start}: "
                              f"{e.object[e.start:e.start + 1]!r}); save it as UTF-8") from None
        _check_tokens(path, text)
        texts.append(text)
        for line in text.splitlines():
            if line.strip().startswith("include "):
                name = line.strip()[len("include "):].strip().strip("'\"")
                for base in (path.parent, REPO_GIN_DIR):
                    if (base / name).is_file():
                        visit(base / name, chain + (here,))
                        break

    for f in files:
        visit(Path(f), ())
    return texts


def _check_tokens(path: Path, text: str) -> None:
    """Gin reads a file with Python's tokenizer, whose errors (an unclosed bracket or string) name no file."""
    try:
        for _ in tokenize.generate_tokens(io.StringIO(text).readline):
            pass
    except (tokenize.TokenError, SyntaxError) as e:
        message, where = (e.args[0], e.args[1]) if isinstance(e, tokenize.TokenError) else (e.msg, (e.lineno, 0))
        line = where[0] if isinstance(where, tuple) else "?"
        raise ConfigError(f"gin file {path}, line {line}: {message} (an unclosed bracket or quote?)") from None


def _binding_target(binding: str) -> str:
    """The configurable a binding line sets: ``scope/Name.param = v`` -> ``Name``."""
    return binding.split("=")[0].strip().split(".")[0].split("/")[-1]


def _binds(configurable: str) -> bool:
    return any("=" in line and _binding_target(line) == configurable for line in gin.config_str().splitlines())


def _build(factory, name: str):
    try:
        built = factory()
    except ConfigError as e:  # gin appends "In call to configurable ..." lines: keep the error one line
        raise ConfigError(str(e).splitlines()[0]) from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad gin value for {name}: {_one_line(e)}") from None
    _check_finite(built, name)
    return built


def _check_finite(value: Any, where: str) -> None:
    """Every float a config holds (in its fields, tuples and dicts) is finite: a learning rate of 1e999 or a
    rate of nan would otherwise train until the first NaN."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value}")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            _check_finite(getattr(value, f.name, None), f"{where}.{f.name}")
    elif isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            _check_finite(v, f"{where}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{where}[{k!r}]")


def model_config() -> ModelConfig:
    return _build(ModelConfigG, "ModelConfig")


def build(cls: type):
    """An instance of a class made configurable with :func:`register`, from the parsed config."""
    return _build(gin.get_configurable(cls.__name__), cls.__name__)


def chat_template():
    """The configured ChatTemplate (Llama-2-chat unless the config binds ``ChatTemplate.*``: gin_configs/chat/)."""
    _register_seqio_configurables()
    return _build(gin.get_configurable("ChatTemplate"), "ChatTemplate")


def partitioning_config() -> PartitioningConfig:
    return _build(PartitioningConfigG, "PartitioningConfig")


@gin.configurable("experiment")
def build_experiment(data: Optional[object] = None, objective: str = "lm", dpo: Optional[object] = None) -> Experiment:
    """Builds the run from the parsed gin config. ``experiment.data`` picks the input pipeline (unset: the seqio
    mixture, ``SeqioData``, or ``TextFileData`` when the config binds ``TextFileData`` parameters);
    ``experiment.objective`` a registered objective (``objectives.OBJECTIVES``), configured by its config
    class's bindings; ``experiment.dpo = @DpoConfig()`` is the older spelling of ``objective = 'dpo'``."""
    data = data if data is not None else _default_data()
    _check_data_bindings(data)
    step, legacy_accum = _build(StepConfigG, "StepConfig")
    trainer = _with_legacy_accum(_build(TrainerConfigG, "TrainerConfig"), legacy_accum)
    if dpo is not None:
        if objective not in ("lm", "dpo"):
            raise ConfigError(f"experiment.dpo is set but experiment.objective = {objective!r}: set one of them")
        objective, config = "dpo", dpo
    elif objective in OBJECTIVES and OBJECTIVES[objective].config_class is not StepConfig:
        name = OBJECTIVES[objective].config_class.__name__
        config = _build(gin.get_configurable(name), name)
    else:
        config = step
    made = make_objective(objective, config)
    data = data.with_features(made.batch_features())  # DPO's precomputed reference: every pair must carry it
    return Experiment(
        model=model_config(),
        optimizer=_build(OptimizerConfigG, "OptimizerConfig"),
        partitioning=_build(PartitioningConfigG, "PartitioningConfig"),
        trainer=trainer,
        data=data,
        objective=made,
        watch=_build(HeldoutWatchG, "HeldoutWatch"),
        checkpoint=_build(CheckpointConfigG, "CheckpointConfig"),
    )


def _default_data() -> object:
    """``experiment.data`` unset: the registered source marked ``picked_when_bound`` whose fields the config
    binds (``TextFileData``), else ``DEFAULT_DATA_SOURCE`` (the seqio mixture)."""
    bound = [e.name for e in DATA_SOURCES.values() if e.picked_when_bound and _binds(e.name)]
    name = bound[0] if bound else DEFAULT_DATA_SOURCE
    if DATA_SOURCES[name].imports_tensorflow:
        _register_seqio_configurables()
    return _build(gin.get_configurable(name), name)


def _with_legacy_accum(trainer: TrainerConfig, legacy: Optional[int]) -> TrainerConfig:
    """``StepConfig.grad_accum_steps`` (the former name) becomes ``TrainerConfig.grad_accum_steps``."""
    if legacy is None:
        return trainer
    if isinstance(legacy, bool) or not isinstance(legacy, int) or legacy <= 0:
        raise ConfigError(f"StepConfig.grad_accum_steps must be a positive integer, got {legacy!r}")
    try:
        current = gin.query_parameter("TrainerConfig.grad_accum_steps")
    except ValueError:
        current = None
    if current is not None and current != legacy:
        raise ConfigError(f"StepConfig.grad_accum_steps = {legacy} and TrainerConfig.grad_accum_steps = {current} "
                          "disagree; keep TrainerConfig.grad_accum_steps (the StepConfig name is the former one)")
    return dataclasses.replace(trainer, grad_accum_steps=legacy)
