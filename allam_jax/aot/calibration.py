"""Each TPU generation's matmul efficiency for the step-time estimate, fitted on MaxText's published measurements.

``benchmarks/vs_maxtext.py`` compiles MaxText's own program for every published measurement it can cost (no host
offload), prices each with :mod:`allam_jax.aot.step_time`, fits a generation's efficiency (the share of peak FLOP/s
matmuls and kernels get) on the rows marked *fit* and scores the *held out* rows; it writes
``benchmarks/results/calibration.json``, which ``tests/test_step_time.py`` checks these numbers against. The
published MFUs are MaxText's count at the time (attention's full T x T).
"""

from __future__ import annotations

import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class Calibration:
    """How a generation's matmul efficiency was fitted by ``benchmarks/vs_maxtext.py`` on MaxText's published
    measurements (its compiled programs priced by the same estimator), and the error on the ones held out."""

    efficiency: float  # the share of peak FLOP/s matmuls and kernels get in the step-time estimate
    fit_on: int  # published measurements it was fitted on
    held_out: int  # published measurements only scored
    held_out_error: Optional[float]  # largest |estimated - measured| MFU on the held-out ones, in points; None: none
    best_published_mfu: float  # the highest published MFU of the generation among them

    def describe(self, chip_name: str) -> str:
        held = (f"error up to {self.held_out_error:.1f} MFU points on {self.held_out} held-out measurement(s)"
                if self.held_out_error is not None else "no held-out measurement: its error is unknown")
        return (f"{chip_name} efficiency {self.efficiency:.3f}, fitted on {self.fit_on} published MaxText "
                f"measurement(s); {held}; best published {chip_name} MFU {self.best_published_mfu:.1%}")


# benchmarks/results/calibration.json, 2026-12-07 (MaxText 0.2.5 on jax 0.12.1, libtpu 0.0.52)
CALIBRATIONS = {
    "v5p": Calibration(0.776, 2, 15, 9.5, 0.7147),
    "v5e": Calibration(0.895, 1, 5, 7.2, 0.6686),
    "v6e": Calibration(0.675, 1, 0, None, 0.438),
}
