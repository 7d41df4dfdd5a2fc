"""Parameters in and out of checkpoints, one way for everyone: restore them (sharded by a
:class:`~allam_jax.core.partitioning.Partitioner`, or onto one device), leave them in storage
(:class:`StoredArray`), write a params-only checkpoint.

Train (``init_from``), eval, generate, chat, ``convert to-hf`` and ``expand-checkpoint`` all read parameters
through :func:`restore_params`, so each gets the same fallback past an unreadable step and the same error
naming a mismatched array. Layout read (``checkpoint.layout``): ``DIR/<step>/state`` (what the trainer and
:func:`write_params_checkpoint` write), a step directory, or its ``state`` item.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Optional

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec

from allam_jax.checkpoint.layout import first_mismatch, newest_readable, resolve_state_dir, state_dirs
from allam_jax.core.abandoned_reads import reading
from allam_jax.core.errors import CheckpointError, first_line
from allam_jax.core.params import abstract_params
from allam_jax.core.paths import as_path, staged_dir
from allam_jax.core.trees import on_one_device

if TYPE_CHECKING:
    from allam_jax.core.partitioning import Partitioner

log = logging.getLogger(__name__)


def restore_params(path: str, abstract_params: Any) -> Any:
    """Reads only the parameters of a checkpoint (continued pretraining: fresh optimizer and schedule; eval,
    decoding, export). Given a checkpoint directory, a step that cannot be read (a truncated file, say) is
    skipped with a warning for the one before it, as training's resume does; a step of another shape is an
    error, not a reason to fall back."""
    candidates = state_dirs(path)

    def warn(state_dir: epath.Path, why: str) -> None:
        if len(candidates) > 1:
            log.warning("cannot read parameters from %s (%s); trying an older step", state_dir, why)

    state_dir, params, failures = newest_readable(candidates, lambda d: _restore_params_from(d, abstract_params), warn)
    if state_dir is None:
        raise CheckpointError(f"cannot read parameters from {path}: " + "; ".join(failures[:3]))
    if failures:
        log.warning("using %s: %d newer step(s) unreadable", state_dir, len(failures))
    return params


def _check_params_match(on_disk: Any, abstract_params: Any, state_dir: epath.Path) -> None:
    bad = first_mismatch(on_disk, abstract_params)
    if bad is not None:
        raise CheckpointError(f"parameters in {state_dir} do not match the model config: {bad[0]} is "
                              f"{bad[1]} on disk, {bad[2]} in the config")


def load_params(path: str, model: nn.Module, partitioner: Optional["Partitioner"] = None) -> Any:
    """A model's parameters from a checkpoint, checked against its shapes: straight into their shards with a
    ``partitioner``, else on one device. What evaluation, decoding, the DPO reference and export read with."""
    abstract = abstract_params(model, partitioner)
    return restore_params(path, abstract if partitioner is not None else on_one_device(abstract))


class StoredArray:
    """One array of a checkpoint, left in storage: indexing reads just that part (TensorStore reads the chunks
    it touches), with no device and nothing cached, so a tool can walk a model larger than any one chip or
    than host memory. ``np.asarray`` reads it whole."""

    _context = None  # one TensorStore context for every array: its caches are shared, not one per array

    def __init__(self, directory: str, name: str, shape: tuple[int, ...], dtype: Any):
        self.directory, self.name, self.shape, self.dtype = directory, name, tuple(shape), dtype
        self._store = None

    def _open(self):
        if self._store is not None:
            return self._store
        import tensorstore as ts
        from orbax.checkpoint._src.serialization import tensorstore_utils as ts_utils

        if StoredArray._context is None:
            StoredArray._context = ts_utils.get_ts_context(use_ocdbt=True)
        failures = []
        for driver in ("zarr", "zarr3"):  # Orbax writes zarr (v2) by default; zarr3 when asked to
            spec = {"driver": driver, "kvstore": ts_utils.build_kvstore_tspec(self.directory, name=self.name)}
            try:
                self._store = ts.open(spec, open=True, read=True, context=StoredArray._context).result()
                return self._store
            except ValueError as e:
                failures.append(first_line(e, 160))
        raise CheckpointError(f"cannot read {self.name} in {self.directory}: {failures[-1]}")

    def __getitem__(self, index: Any) -> np.ndarray:
        return np.asarray(self._open()[index].read().result())

    def __array__(self, dtype: Any = None, copy: Optional[bool] = None) -> np.ndarray:
        whole = self[...]
        return whole if dtype is None else whole.astype(dtype, copy=False)


def stored_params(path: str, abstract_params: Any) -> Any:
    """The parameters of a checkpoint as :class:`StoredArray` leaves (nothing read yet), checked against
    ``abstract_params``; given a checkpoint directory, the newest step whose metadata reads."""

    def read(state_dir: epath.Path) -> Any:
        with reading(state_dir):
            tree = ocp.StandardCheckpointer().metadata(state_dir).item_metadata.tree
        if not isinstance(tree, dict) or "params" not in tree:
            raise CheckpointError(f"{state_dir} holds no 'params'")
        _check_params_match(tree["params"], abstract_params, state_dir)
        return jax.tree_util.tree_map(lambda m: StoredArray(str(state_dir), m.name, m.shape, m.dtype), tree["params"])

    state_dir, params, failures = newest_readable(state_dirs(path), read)
    if state_dir is None:
        raise CheckpointError(f"cannot read parameters from {path}: " + "; ".join(failures[:3]))
    if failures:
        log.warning("using %s: %d newer step(s) unreadable", state_dir, len(failures))
    return params


def _restore_params_from(state_dir: epath.Path, abstract_params: Any) -> Any:
    item = {"params": abstract_params}
    try:
        with reading(state_dir):
            on_disk = ocp.StandardCheckpointer().metadata(state_dir).item_metadata.tree
    except Exception:  # noqa: BLE001 - unreadable metadata: the restore below says why
        on_disk = None
    if isinstance(on_disk, dict) and "params" in on_disk:
        _check_params_match(on_disk["params"], abstract_params, state_dir)
    with reading(state_dir):
        restored = ocp.PyTreeCheckpointer().restore(
            state_dir,
            args=ocp.args.PyTreeRestore(
                item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True
            ),
        )
    got = jax.tree_util.tree_map(lambda x: x.shape, restored["params"])
    want = jax.tree_util.tree_map(lambda x: x.shape, abstract_params)
    if got != want:
        raise CheckpointError(f"parameter shapes in {state_dir} do not match the model config")
    return restored["params"]


_SMALL_STACK, _MIN_CHUNK = 4 * 2**20, 2**20  # Orbax warns of chunks under 1 MiB


def layer_chunked_save_args(tree: Any) -> Any:
    """Orbax save arguments that store each layer of a scanned stack (an array under a ``layers`` key, the
    layer on axis 0) as chunks of its own, so reading one layer (export, surgery) touches one layer's bytes,
    not the whole stack. Other arrays keep Orbax's defaults."""

    def args(path, leaf) -> ocp.SaveArgs:
        keys = {getattr(k, "key", getattr(k, "name", None)) for k in path}
        shape = getattr(leaf, "shape", ())
        if "layers" in keys and len(shape) >= 2 and shape[0] > 1:
            layer_bytes = int(np.prod(shape[1:])) * np.dtype(leaf.dtype).itemsize
            if layer_bytes * shape[0] > _SMALL_STACK:  # a small stack is cheap to read whole
                return ocp.SaveArgs(chunk_byte_size=max(layer_bytes, _MIN_CHUNK), shard_axes=(0,))
        return ocp.SaveArgs()

    return jax.tree_util.tree_map_with_path(args, tree)


def write_params_checkpoint(out: str, params: Any, sidecars: Optional[dict[str, str]] = None) -> epath.Path:
    """Writes ``OUT/0/state`` holding ``{"params": params}`` plus text ``sidecars`` (name -> content), all
    or nothing: locally everything goes to a temporary sibling directory renamed into place at the end; on an
    object store (no directory rename) the sidecars are written after Orbax has committed the step, so a
    half-written output has no sidecars and no committed step. ``TrainerConfig.init_from = OUT`` reads it."""
    out_path = as_path(out)
    if out_path.exists():
        raise CheckpointError(f"output already exists: {out}")
    with staged_dir(out) as target:
        writer = ocp.StandardCheckpointer()
        item = {"params": params}
        writer.save(target / "0" / "state", item, save_args=layer_chunked_save_args(item))
        writer.wait_until_finished()
        writer.close()
        for name, text in (sidecars or {}).items():
            (target / name).write_text(text, encoding="utf-8")
    return out_path


def abstract_params_as_saved(path: str, partitioner: "Partitioner") -> Any:
    """A restore target read from the checkpoint's own metadata (for tools that do not know the model config,
    such as embedding surgery): each array split over the partitioner's batch axes on its first dimension
    they divide, so no host holds the whole model."""
    state_dir = resolve_state_dir(path)
    try:
        with reading(state_dir):
            tree = ocp.StandardCheckpointer().metadata(state_dir).item_metadata.tree
    except Exception as e:  # noqa: BLE001 - orbax raises many kinds; the first line says which file
        raise CheckpointError(f"cannot read the metadata of {state_dir}: {first_line(e)}") from None
    if not isinstance(tree, dict) or "params" not in tree:
        raise CheckpointError(f"{state_dir} holds no 'params'")
    axes = partitioner.batch_axes
    parts = partitioner.axis_size(axes)

    def target(meta):
        spec = [None] * len(meta.shape)
        for i, size in enumerate(meta.shape):
            if size % parts == 0:
                spec[i] = axes
                break
        return jax.ShapeDtypeStruct(meta.shape, meta.dtype,
                                    sharding=NamedSharding(partitioner.mesh, PartitionSpec(*spec)))

    return jax.tree_util.tree_map(target, tree["params"])
