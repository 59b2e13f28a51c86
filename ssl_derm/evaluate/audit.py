"""What a scored side gets besides accuracy: calibration (ECE, Brier, NLL, AURC with intervals, the
reliability PNG) and the per-skin-tone block; and the validation-fitted temperature of
``protocol.calibrate: temperature``. Used by ``finetune`` (test and external sides) and by ``predict``
with ``data.labels``, so both write the same keys.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from ssl_derm.errors import ConfigError


def side_scores(y, probs, ita, classes: Sequence[str], groups: Optional[Sequence] = None, png=None,
                title: str = "", logger=None, tag: str = "test/calibration") -> dict:
    """{"ece", "brier", "nll", "aurc", "<score>_ci", "n_bins", "skin_tone": {...}} of (N,) labels, (N, K)
    probabilities and (N,) ITA degrees; writes the reliability / risk-coverage PNG to ``png`` when given."""
    from ssl_derm.evaluate.calibration import calibration_metrics, save_calibration_png
    from ssl_derm.evaluate.skin_tone_metrics import skin_tone_block

    m = calibration_metrics(y, probs, groups)
    m["skin_tone"] = skin_tone_block(y, probs, ita, classes, groups)
    if png is not None:
        save_calibration_png(y, probs, png, title, logger, tag)
    if logger is not None:
        for k in ("ece", "brier", "nll", "aurc"):
            logger.scalar(f"{tag.split('/')[0]}/{k}", m[k], 0)
    return m


def calibrate(ctx, probs: dict) -> Tuple[dict, Optional[dict]]:
    """(probabilities of every side, the ``calibration`` entry or None) under ``protocol.calibrate``:
    ``temperature`` fits T on the val side and divides every side's log-probabilities by it."""
    method = getattr(ctx.cfg.protocol, "calibrate", "none")
    if method == "none":
        return probs, None
    from ssl_derm.evaluate.calibration import apply_temperature, calibration_metrics, fit_temperature

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


def context_ita(ctx) -> np.ndarray:
    """(len(ctx.dataset),) ITA of every row: the pool's cached beside its image cache, the external
    rows' computed in memory (``ctx.extras["ita_sources"]`` = (pool, external or None) from the run)."""
    if "ita" not in ctx.extras:
        from ssl_derm.evaluate.skin_tone import dataset_ita, default_ita

        pool, ext = ctx.extras.get("ita_sources", (ctx.dataset, None))
        parts = [dataset_ita(pool)] + ([default_ita(ext.images)] if ext is not None else [])
        ctx.extras["ita"] = np.concatenate(parts).astype(np.float32)
    return ctx.extras["ita"]
