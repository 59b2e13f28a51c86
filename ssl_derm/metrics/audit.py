"""What a scored side gets besides accuracy: calibration (ECE, Brier, NLL, AURC with intervals, the
reliability / risk-coverage PNG) and the per-skin-tone block. ``finetune`` (test and external sides) and
``predict`` with ``data.labels`` both call :func:`side_scores`, so both write the same keys.
"""
from __future__ import annotations

from typing import Optional, Sequence

from ssl_derm.metrics.calibration import calibration_metrics, save_calibration_png
from ssl_derm.metrics.skin_tone import skin_tone_block


def side_scores(y, probs, ita, classes: Sequence[str], groups: Optional[Sequence] = None, png=None,
                title: str = "", logger=None, tag: str = "test/calibration") -> dict:
    """{"ece", "brier", "nll", "aurc", "<score>_ci", "n_bins", "skin_tone": {...}} of (N,) labels, (N, K)
    probabilities and (N,) ITA degrees; writes the reliability / risk-coverage PNG to ``png`` when given."""
    m = calibration_metrics(y, probs, groups)
    m["skin_tone"] = skin_tone_block(y, probs, ita, classes, groups)
    if png is not None:
        save_calibration_png(y, probs, png, title, logger, tag)
    if logger is not None:
        for k in ("ece", "brier", "nll", "aurc"):
            logger.scalar(f"{tag.split('/')[0]}/{k}", m[k], 0)
    return m
