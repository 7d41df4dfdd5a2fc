"""Logical-axis rules and the device mesh, owned by one object: the :class:`Partitioner`.

Parameters and activations carry logical axis names; ``logical_axis_rules`` map each name onto mesh
axes ``("data", "fsdp", "tensor")``. Rules are set in gin (``PartitioningConfig.logical_axis_rules``).
As in T5X, the model never sees devices: the trainer, evaluator, decoder and tools ask a Partitioner for
the mesh context, the batch sharding, sharded abstract parameters and jitted functions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from allam_jax.core.errors import ConfigError
from allam_jax.core.trees import ABSTRACT_KEY, strip_boxes

DATA_AXIS, FSDP_AXIS, TENSOR_AXIS = "data", "fsdp", "tensor"  # the mesh's axis names, spelled here only
MESH_AXES = (DATA_AXIS, FSDP_AXIS, TENSOR_AXIS)
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)

Rule = tuple[str, Union[None, str, tuple[str, ...]]]

DEFAULT_RULES: tuple[Rule, ...] = (
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
    ("layers", None),
)


@dataclasses.dataclass(frozen=True)
class PartitionedFunction:
    """A jitted function bound to a Partitioner's mesh and rules (T5X's ``PartitionedCallable``): call it, or
    ``.lower(...)`` it from abstract arrays for another topology; both trace the same program."""

    partitioner: "Partitioner"
    jitted: Any  # the jax.jit-wrapped function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.partitioner.activate():
            return self.jitted(*args, **kwargs)

    def lower(self, *args: Any, **kwargs: Any) -> Any:
        with self.partitioner.activate():
            return self.jitted.lower(*args, **kwargs)

    def trace(self, *args: Any, **kwargs: Any) -> Any:
        with self.partitioner.activate():
            return self.jitted.trace(*args, **kwargs)


def jit_on(partitioner: Optional["Partitioner"], fn: Callable, **kwargs: Any) -> Callable:
    """``partitioner.jit(fn)``, or plain ``jax.jit`` without a partitioner (one device, no mesh)."""
    return jax.jit(fn, **kwargs) if partitioner is None else partitioner.jit(fn, **kwargs)


def _tensor_across_dcn(dcn: Sequence[int], ici: Sequence[int]) -> str:
    return (f"PartitioningConfig.dcn_mesh_shape {tuple(dcn)} asks for tensor parallelism across slices (mesh_shape "
            f"inside a slice: {tuple(ici)}); it needs a slice's own links: keep dcn_mesh_shape's tensor entry at 1")


def _check_shape(name: str, shape: Sequence[int]) -> None:
    shape = tuple(shape)
    if len(shape) != 3 or any(not isinstance(s, int) or s == 0 or s < -1 for s in shape):
        raise ConfigError(f"PartitioningConfig.{name} must be 3 positive ints (one may be -1), got {shape!r}")
    if shape.count(-1) > 1:
        raise ConfigError(f"PartitioningConfig.{name} may contain at most one -1, got {shape!r}")


@dataclasses.dataclass(frozen=True)
class PartitioningConfig:
    """Mesh shape over (data, fsdp, tensor); one entry may be -1 to take the remaining devices.

    Several slices (TPU multislice over the data-centre network, or groups of processes elsewhere): ``mesh_shape``
    is the mesh inside one slice (ICI) and ``dcn_mesh_shape`` how the slices line up along the same three axes;
    the full mesh is their product, axis by axis. The default puts every slice on ``data`` (gradients are the only
    thing that crosses the slow network, once per step); FSDP and tensor parallelism stay inside a slice.
    ``num_slices``: None reads each device's ``slice_index`` (TPU); N groups consecutive processes into N slices
    (CPU or GPU processes, whose devices carry no slice index)."""

    mesh_shape: Sequence[int] = (1, -1, 1)
    logical_axis_rules: Sequence[Rule] = DEFAULT_RULES
    dcn_mesh_shape: Sequence[int] = (-1, 1, 1)
    num_slices: Optional[int] = None

    def __post_init__(self):
        _check_shape("mesh_shape", self.mesh_shape)
        _check_shape("dcn_mesh_shape", self.dcn_mesh_shape)
        if tuple(self.dcn_mesh_shape)[2] not in (1, -1):
            raise ConfigError(_tensor_across_dcn(self.dcn_mesh_shape, self.mesh_shape))
        if self.num_slices is not None and (not isinstance(self.num_slices, int) or self.num_slices < 1):
            raise ConfigError(f"PartitioningConfig.num_slices must be a positive int or None, got {self.num_slices!r}")
        for rule in self.logical_axis_rules:
            if len(rule) != 2 or not isinstance(rule[0], str):
                raise ConfigError(f"PartitioningConfig.logical_axis_rules entry {rule!r} is not (name, mesh_axes)")
            axes = rule[1] if isinstance(rule[1], (tuple, list)) else (rule[1],)
            bad = [a for a in axes if a is not None and a not in MESH_AXES]
            if bad:
                raise ConfigError(f"logical axis rule {rule!r} names unknown mesh axes {bad}; known: {MESH_AXES}")

    @property
    def rules(self) -> tuple[Rule, ...]:
        return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in self.logical_axis_rules)


def resolve_mesh_shape(mesh_shape: Sequence[int], num_devices: int, where: str = "") -> tuple[int, ...]:
    """``mesh_shape`` with its -1 filled for ``num_devices`` (``where``: e.g. " per slice", for the error)."""
    shape = list(mesh_shape)
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if num_devices % known:
            raise ConfigError(f"mesh_shape {tuple(mesh_shape)} cannot be filled: {num_devices} devices{where} / {known}")
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) != num_devices:
        raise ConfigError(f"mesh_shape {tuple(shape)} (data, fsdp, tensor) needs {math.prod(shape)} devices, but "
                          f"there are {num_devices}{where}")
    return tuple(shape)


def slices_of(devices: Sequence[Any], num_slices: Optional[int] = None) -> list[list[Any]]:
    """The devices grouped by slice, in slice order: by each device's ``slice_index`` (TPU multislice), or with
    ``num_slices`` by process (consecutive process indices form a slice: CPU or GPU processes)."""
    devices = list(devices)
    keys = [getattr(d, "slice_index", None) or 0 for d in devices]
    found = len(set(keys))
    if num_slices is not None and found > 1 and num_slices != found:
        raise ConfigError(f"PartitioningConfig.num_slices = {num_slices}, but the devices say they are on {found} "
                          "slices (their slice_index); leave num_slices unset on TPU")
    if num_slices is not None and found == 1 and num_slices > 1:  # CPU/GPU processes: one slice index for all
        processes = sorted({d.process_index for d in devices})
        if len(processes) % num_slices:
            raise ConfigError(f"PartitioningConfig.num_slices = {num_slices} does not divide the {len(processes)} "
                              "processes into equal slices")
        per = len(processes) // num_slices
        keys = [processes.index(d.process_index) // per for d in devices]
    order = sorted(set(keys))
    return [[d for d, k in zip(devices, keys) if k == key] for key in order]


def resolve_dcn_mesh_shape(dcn_mesh_shape: Sequence[int], ici_shape: Sequence[int], num_slices: int) -> tuple[int, ...]:
    """``dcn_mesh_shape`` with its -1 filled; its product must be the slice count (a one-line error naming both
    shapes otherwise)."""
    shape = list(dcn_mesh_shape)
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if num_slices % known == 0:
            shape[shape.index(-1)] = num_slices // known
    if -1 in shape or math.prod(shape) != num_slices:
        raise ConfigError(f"PartitioningConfig.dcn_mesh_shape {tuple(dcn_mesh_shape)} does not multiply to the "
                          f"{num_slices} slice(s) of this run (mesh_shape inside each slice: {tuple(ici_shape)})")
    if shape[2] > 1:
        raise ConfigError(_tensor_across_dcn(dcn_mesh_shape, ici_shape))
    return tuple(shape)


def _slice_grid(shape: Sequence[int], devices: Sequence[Any]) -> np.ndarray:
    try:
        return mesh_utils.create_device_mesh(tuple(shape), devices=list(devices))
    except (AssertionError, NotImplementedError, ValueError):
        return np.asarray(devices, dtype=object).reshape(shape)


def create_mesh(config: PartitioningConfig, devices: Optional[Sequence[Any]] = None) -> Mesh:
    """The (data, fsdp, tensor) mesh over ``devices``: one slice's ICI mesh, or with several slices each slice's
    mesh placed on the grid ``dcn_mesh_shape`` (as ``mesh_utils.create_hybrid_device_mesh`` places them)."""
    devices = list(jax.devices() if devices is None else devices)
    slices = slices_of(devices, config.num_slices)
    if len({len(s) for s in slices}) > 1:
        raise ConfigError(f"the slices hold different device counts ({[len(s) for s in slices]}); a mesh needs "
                          "equal slices")
    ici = resolve_mesh_shape(config.mesh_shape, len(slices[0]), " per slice" if len(slices) > 1 else "")
    dcn = resolve_dcn_mesh_shape(config.dcn_mesh_shape, ici, len(slices))
    if len(slices) == 1:
        return Mesh(_slice_grid(ici, devices), MESH_AXES)
    grids = [_slice_grid(ici, s) for s in slices]
    order = np.arange(len(slices)).reshape(dcn)
    blocks = np.vectorize(lambda i: grids[i], otypes=[object])(order)
    return Mesh(np.block(blocks.tolist()), MESH_AXES)




def logical_to_sharding(logical_tree: Any, mesh: Mesh, rules: Sequence[Rule]) -> Any:
    """Maps a pytree of logical PartitionSpecs to NamedShardings."""
    return nn.logical_to_mesh_sharding(logical_tree, mesh, list(rules))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batch dimension split over (data, fsdp); everything else replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def check_divisibility(abstract_tree: Any, sharding_tree: Any, what: str = "parameter") -> None:
    """Raises a ConfigError naming the first array whose dimension the mesh does not divide."""
    flat_shapes = jax.tree_util.tree_flatten_with_path(abstract_tree)[0]
    flat_shardings = jax.tree_util.tree_leaves(sharding_tree, is_leaf=lambda x: isinstance(x, NamedSharding))
    for (path, leaf), sharding in zip(flat_shapes, flat_shardings):
        if not isinstance(sharding, NamedSharding):
            continue
        for dim, (size, axes) in enumerate(zip(leaf.shape, tuple(sharding.spec) + (None,) * leaf.ndim)):
            if axes is None:
                continue
            axes = axes if isinstance(axes, tuple) else (axes,)
            parts = math.prod(sharding.mesh.shape[a] for a in axes)
            if size % parts:
                name = jax.tree_util.keystr(path)
                raise ConfigError(
                    f"{what} {name} dimension {dim} of size {size} is not divisible by mesh axes {axes} "
                    f"(size {parts}); change the mesh_shape or the logical_axis_rules"
                )


@dataclasses.dataclass(frozen=True)
class Partitioner:
    """The one owner of the mesh and the logical-axis rules (T5X's ``Partitioner``)."""

    mesh: Mesh
    rules: tuple[Rule, ...] = DEFAULT_RULES

    @classmethod
    def create(cls, config: Optional[PartitioningConfig] = None, devices: Optional[Sequence[Any]] = None) -> "Partitioner":
        """The mesh ``config`` (default: all devices on fsdp) asks for over ``devices`` (default: all)."""
        config = config or PartitioningConfig()
        return cls(create_mesh(config, devices), config.rules)

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        """The mesh and rules that tracing and running a sharded function need."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(list(self.rules)):
            yield

    @property
    def batch_axes(self) -> tuple[str, ...]:
        return BATCH_AXES

    def axis_size(self, axes: Union[str, Sequence[str]]) -> int:
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        return math.prod(self.mesh.shape[a] for a in axes)

    @property
    def batch_sharding(self) -> NamedSharding:
        return batch_sharding(self.mesh)

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def shardings(self, boxed_tree: Any) -> Any:
        """NamedShardings for a pytree whose leaves carry logical axis names (flax boxes)."""
        return logical_to_sharding(nn.get_partition_spec(boxed_tree), self.mesh, self.rules)

    def abstract(self, boxed_tree: Any, what: str = "parameter") -> tuple[Any, Any]:
        """(unboxed ShapeDtypeStructs carrying their shardings, the sharding tree) of an ``eval_shape``
        result; a dimension the mesh does not divide is a ConfigError naming the array."""
        shardings = self.shardings(boxed_tree)
        abstract = strip_boxes(boxed_tree)
        check_divisibility(abstract, shardings, what)
        sharded = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                         abstract, shardings)
        return sharded, shardings

    def abstract_init(self, init_fn: Callable[[jax.Array], Any], what: str = "parameter") -> tuple[Any, Any]:
        """:meth:`abstract` of what ``init_fn(rng)`` would build, traced with an abstract key (nothing
        allocated; no concrete key is needed, so it works on compile-only devices too)."""
        return self.abstract(jax.eval_shape(init_fn, ABSTRACT_KEY), what)

    def jit(self, fn: Callable, **kwargs: Any) -> "PartitionedFunction":
        """``jax.jit(fn, **kwargs)`` whose calls, ``.lower`` and ``.trace`` run under this mesh and rules: the
        train step, the scorer, the decoder and ``allam compile`` all get their programs here."""
        return PartitionedFunction(self, jax.jit(fn, **kwargs))
