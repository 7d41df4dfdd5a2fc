"""The table ``allam compile`` prints: per-chip memory and fit, FLOPs, step time, collectives, what to change."""

from __future__ import annotations

from typing import Optional

from allam_jax.aot.topology import GIB


_ARGUMENTS = {"train": "parameters, optimizer state, batch", "eval": "parameters, batch",
              "decode": "parameters in the compute dtype, KV cache, tokens"}


def _gib(x: Optional[float]) -> str:
    return "?" if x is None else f"{x / GIB:.2f} GiB"


def seconds_text(x: Optional[float]) -> str:
    if x is None:
        return "?"
    if x < 1e-3:
        return f"{x * 1e6:.1f} us"
    return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"


def mfu_text(palm: Optional[float], causal: Optional[float]) -> str:
    """MFU in both conventions, labelled: PaLM's (attention's full T x T) and causal (attention halved, MaxText's)."""
    if palm is None:
        return "MFU ?"
    return f"{palm:.1%} MFU (PaLM count), {causal:.1%} (causal count)"


def format_report(r, gin_files=()) -> str:
    """What `allam compile` prints: a row per fact (memory, FLOPs, the step-time estimate, collectives); a config
    that does not fit says what to change and names its largest arrays."""
    rows = _header_rows(r, gin_files) + _memory_rows(r) + _time_rows(r) + _collective_rows(r)
    rows.append(("compile time", f"{r.compile_seconds:.1f} s on this host"))
    width = max(len(k) for k, _ in rows)
    text = "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
    unpriced = (r.estimate or {}).get("unpriced_kernels", 0)
    if unpriced:  # first: a step time missing kernels' FLOPs is too short, and must not be read past
        text = (f"WARNING: {unpriced} kernel calls per step have no FLOP count (priced by their bytes only): the "
                "estimated step time is too short and its MFU too high\n" + text)
    if not r.fits:
        text += ("\n\nWhat to change: TrainerConfig.grad_accum_steps (smaller micro-batches), ModelConfig.remat_policy="
                 "'full', a larger slice, or more tensor parallelism (PartitioningConfig.mesh_shape).")
        if r.largest_buffers:
            text += "\nLargest arrays per device (HLO name, shape, what made them):\n" + "\n".join(
                f"  {_gib(b['bytes']):>11}  {b['name']}  {b['shape']}  {b['source'] or b['op']}"
                for b in r.largest_buffers)
        if r.oom_message:
            text += "\nThe compiler says:\n" + "\n".join("  " + ln for ln in r.oom_message.splitlines())
    return text


def _header_rows(r, gin_files) -> list[tuple[str, str]]:
    chip = (f"{_gib(r.hbm_bytes)} per device" +
            (f", {r.peak_flops_per_device / 1e12:.0f} TFLOP/s bf16 peak" if r.peak_flops_per_device else ""))
    topo = r.topology + (f" (libtpu {r.libtpu_topology})" if r.libtpu_topology and r.libtpu_topology != r.topology
                         else "")
    step = {"train": "train step", "eval": "eval (scoring) step", "decode": "decode step (1 token per row)"}[r.step]
    if r.step == "decode":
        shape = f"{r.rows} rows against a KV cache of {r.seq_len} tokens"
    else:
        shape = (f"{r.rows} rows x {r.seq_len} tokens" + (f" in {r.grad_accum_steps} micro-batches"
                                                           if r.grad_accum_steps > 1 else ""))
    rows = [
        ("config", " ".join(gin_files) or "-"),
        ("topology", f"{topo}: {r.num_devices} devices, {chip}" +
                     (f"; {r.num_slices} slices joined over DCN" if r.num_slices > 1 else "")),
        ("mesh", " ".join(f"{k}={v}" for k, v in r.mesh_shape.items())),
        ("step", f"{step}: {shape}; remat {r.remat_policy}, attention {r.attention_impl}, {r.compute_dtype}"),
        ("parameters", f"{r.params:,} ({r.params / 1e9:.2f} B)"),
    ]
    return rows


def _memory_rows(r) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if r.argument_bytes is not None:
        rows += [
            ("arguments", f"{_gib(r.argument_bytes)} per device ({_ARGUMENTS[r.step]})"),
            ("temporaries", f"{_gib(r.temp_bytes)} per device"),
            ("outputs", f"{_gib(r.output_bytes)} per device ({_gib(r.alias_bytes)} reuse donated arguments)"),
        ]
    elif r.temp_bytes is not None:
        rows.append(("temporaries", f"{_gib(r.temp_bytes)} per device (the compiler's estimate)"))
    if r.fits:
        verdict = f"{_gib(r.required_bytes)} of {_gib(r.hbm_bytes)}: fits ({_gib(r.hbm_bytes - r.required_bytes)} free)"
    elif r.required_bytes is not None:
        verdict = (f"{_gib(r.required_bytes)} of {_gib(r.hbm_bytes)}: DOES NOT FIT "
                   f"(over by {_gib(r.required_bytes - r.hbm_bytes)})")
    else:
        verdict = f"more than {_gib(r.hbm_bytes)}: DOES NOT FIT"
    rows.append(("memory", verdict))
    return rows


def _time_rows(r) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    rows.append(("model FLOPs", f"{r.model_flops:.3e} per step, {r.model_flops_per_device:.3e} per device"))
    tokens = r.rows * (1 if r.step == "decode" else r.seq_len)
    if r.estimate and r.estimate["step_seconds"]:
        e = r.estimate
        rows.append(("step time", f"{seconds_text(e['step_seconds'])} ESTIMATED (not measured): "
                                  f"{mfu_text(r.estimated_mfu, r.estimated_mfu_causal)}, "
                                  f"{tokens / e['step_seconds']:,.0f} tokens/s"))
        if r.calibration_note:
            rows.append(("  calibration", r.calibration_note))
        rows.append(("  parts", f"compute {seconds_text(e['compute_seconds'])} + attention "
                                f"{seconds_text(e['attention_seconds'])} + exposed communication "
                                f"{seconds_text(e['exposed_communication_seconds'])} (of "
                                f"{seconds_text(e['communication_seconds'])}: "
                                + ", ".join(f"{k} {seconds_text(v)}" for k, v in e["by_collective"].items())
                                + (f"; DCN {seconds_text(e['dcn_seconds'])}" if r.num_slices > 1 else "") + ")"))
        rows.append(("  bounds", f"{seconds_text(r.step_seconds(1.0))} at 100% MFU; {seconds_text(e['no_overlap_seconds'])} "
                                 "if no collective overlapped compute"))
        rows.append(("  leaves out", "; ".join(e["leaves_out"])))
    elif r.peak_flops_per_device:
        rows.append(("step time", f"{seconds_text(r.step_seconds(1.0))} at 100% MFU (no estimate: nothing compiled)"))
    return rows


def _collective_rows(r) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if r.collectives:
        rows.append(("collectives", "; ".join(f"{k} x{int(v['count'])} {_gib(v['bytes'])}"
                                              for k, v in r.collectives.items()) + " per step per device" +
                     (" inside each slice (ICI)" if r.num_slices > 1 else "")))
    elif r.fits:
        rows.append(("collectives", "none"))
    if r.num_slices > 1:
        dcn = r.dcn_collectives
        rows.append(("  across DCN", ("; ".join(f"{k} x{int(v['count'])} {_gib(v['bytes'])}" for k, v in dcn.items())
                                      + f" per step per device: {seconds_text(sum(v['seconds'] for v in dcn.values()))}"
                                      f" at {r.dcn_bandwidth / 1e9:.2f} GB/s per chip") if dcn else "none"))
    return rows
