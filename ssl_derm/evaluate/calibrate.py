"""``protocol.calibrate``: the probabilities of every scored side after the validation-fitted temperature
(:mod:`ssl_derm.metrics.calibration`), and the ``calibration`` entry of metrics.json."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from ssl_derm.errors import ConfigError


def calibrate(ctx, probs: dict) -> Tuple[dict, Optional[dict]]:
    """(probabilities of every side, the ``calibration`` entry or None) under ``protocol.calibrate``:
    ``temperature`` fits T on the val side and divides every side's log-probabilities by it."""
    method = getattr(ctx.cfg.protocol, "calibrate", "none")
    if method == "none":
        return probs, None
    from ssl_derm.metrics.calibration import apply_temperature, calibration_metrics, fit_temperature

    if "val" not in probs or not len(probs["val"]):
        raise ConfigError("protocol.calibrate=temperature fits on the val side, which is empty: raise "
                          "data.val_frac or set protocol.calibrate=none")
    y_val = ctx.labels("val")
    t = fit_temperature(probs["val"], y_val)
    out = {side: apply_temperature(p, t).astype(np.float32) for side, p in probs.items()}
    before, after = (calibration_metrics(y_val, p, n_resamples=1) for p in (probs["val"], out["val"]))
    ctx.extras["temperature"] = t  # the export stores it in model.json; predict applies it
    info = {"method": "temperature", "temperature": t, "fitted_on": "val", "n_val": int(len(y_val)),
            "val_nll_before": before["nll"], "val_nll_after": after["nll"],
            "val_ece_before": before["ece"], "val_ece_after": after["ece"]}
    if "test" in probs:
        y = ctx.labels("test")
        info["test_uncalibrated"] = {k: v for k, v in calibration_metrics(y, probs["test"], n_resamples=1).items()
                                     if k in ("ece", "brier", "nll", "aurc")}
    return out, info
