"""Viridis, the perceptually uniform colour map, as a 256-entry lookup table.

Computed once from the published degree-6 polynomial fit of matplotlib's
viridis (Matt Zucker's fit, max error well under one 8-bit step of the
perceptual lightness), so no matplotlib dependency. Pure computation at
import: no I/O, no global state beyond this constant.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

_COEFFS = np.array(
    [
        (0.2777273272234177, 0.005407344544966578, 0.3340998053353061),
        (0.1050930431085774, 1.404613529898575, 1.384590162594685),
        (-0.3308618287255563, 0.214847559468213, 0.09509516302823659),
        (-4.634230498983486, -5.799100973351585, -19.33244095627987),
        (6.228269936347081, 14.17993336680509, 56.69055260068105),
        (4.776384997670288, -13.74514537774601, -65.35303263337234),
        (-5.435455855934631, 4.645852612178535, 26.3124352495832),
    ]
)


def _viridis_lut() -> npt.NDArray[np.uint8]:
    t = np.linspace(0.0, 1.0, 256)[:, None]
    rgb = np.zeros((256, 3))
    for coeff in _COEFFS[::-1]:  # Horner
        rgb = rgb * t + coeff
    lut: npt.NDArray[np.uint8] = np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)
    return lut


VIRIDIS: npt.NDArray[np.uint8] = _viridis_lut()
"""Shape (256, 3), uint8 RGB; index 0 = lowest value (dark purple), 255 = highest (yellow)."""


def apply(values: npt.NDArray[np.floating]) -> npt.NDArray[np.uint8]:
    """RGB for values in [0, 1] (clipped): shape ``values.shape + (3,)``."""
    index = np.clip(np.rint(values * 255), 0, 255).astype(np.intp)
    out: npt.NDArray[np.uint8] = VIRIDIS[index]
    return out
