"""LightGBM's private APIs, each behind one adapter (tests/registry/test_adapters.py fails when
the pinned LightGBM changes them).

- `LightGBMSingleRow`: the C API's single-row fast path (`LGBM_BoosterPredictForMatSingleRowFast`
  through `lightgbm.basic._LIB`), ~microseconds a call instead of ~100 us for Booster.predict.
- `lightgbm_param_names`: every parameter name and alias (`lightgbm.basic._ConfigAliases`), so a
  typo in `--param` is refused instead of silently ignored.
"""

from __future__ import annotations

import contextlib
from typing import Any


class LightGBMSingleRow:
    """LightGBM's C fast path for one row: set up once, ~microseconds a call, not thread-safe."""

    def __init__(self, booster: Any, n_features: int) -> None:
        import ctypes

        from lightgbm.basic import _LIB, _c_str, _safe_call

        self._lib, self._safe_call = _LIB, _safe_call
        self._handle = ctypes.c_void_p()
        _safe_call(_LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
            booster._handle,
            ctypes.c_int(0),  # C_API_PREDICT_NORMAL: probabilities
            ctypes.c_int(0),  # start_iteration
            ctypes.c_int(-1),  # all iterations
            ctypes.c_int(1),  # C_API_DTYPE_FLOAT64
            ctypes.c_int32(n_features),
            _c_str("num_threads=1"),
            ctypes.byref(self._handle),
        ))
        self._booster = booster  # keep the booster alive as long as the fast config
        self._row = (ctypes.c_double * n_features)()
        self._out = ctypes.c_double()
        self._out_len = ctypes.c_int64()
        self._out_ref, self._len_ref = ctypes.byref(self._out), ctypes.byref(self._out_len)

    def __call__(self, row: list[float]) -> float:
        self._row[:] = row
        self._safe_call(self._lib.LGBM_BoosterPredictForMatSingleRowFast(
            self._handle, self._row, self._len_ref, self._out_ref))
        return self._out.value

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self._lib.LGBM_FastConfigFree(self._handle)


def lightgbm_param_names() -> set[str]:
    """Every LightGBM parameter name and alias."""
    from lightgbm.basic import _ConfigAliases

    aliases = _ConfigAliases._get_all_param_aliases()
    return set(aliases) | {a for names in aliases.values() for a in names}
