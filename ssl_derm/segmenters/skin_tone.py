"""Skin tone per image: the individual typology angle (ITA, :mod:`ssl_derm.metrics.skin_tone`) of the
skin around the lesion that a segmenter found.

Which pixels: the band 3-15 px (at 128 px, scaled with the image) outside the lesion mask that the
segmenter found, inside the dermoscope's field of view (:func:`ssl_derm.segmenters.prep.prepare`), without

- hair: pixels the hair-removing grey closing (:func:`ssl_derm.segmenters.colour.remove_hair`) lightens by
  more than ``HAIR_DL`` in L* (a hair is a thin dark line the closing fills in);
- glare: very bright, low-saturation pixels (HSV value > 0.9 and saturation < 0.15), the dermoscope's
  specular highlights, which would read as very light skin.

A lesion that fills the band's room leaves too few pixels: then every skin pixel of the field of view
outside the lesion counts; with fewer than ``MIN_SKIN_PIXELS`` the ITA is NaN and the group ``unknown``.
The ITA is that of the median L* and the median b* of those pixels (robust to the remaining hair, ink,
vessels and a lesion edge that leaks into the band), not the mean of per-pixel angles, which is unstable
where b* is near 0.

Why written here: the formula is one line; what an ITA needs is the lesion's surroundings, which only
ssl-derm's own annotation-free segmenter knows. The one ITA package on PyPI (``derm-ita``, 2021) computes
the angle of a whole image or a given patch and brings its own colour stack; the colour conversion here is
kornia's ``rgb_to_lab`` (sRGB, D65), the one the segmenters use (:func:`ssl_derm.segmenters.colour.to_lab`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage as ndi

from ssl_derm.metrics.skin_tone import GROUPS, UNKNOWN, distribution, ita_degrees, write_skin_tone_csv

BAND_PX = (3.0, 15.0)  # skin band outside the lesion: from, to (px at 128)
HAIR_DL = 8.0  # L* a hair pixel gains from the closing
GLARE_VALUE, GLARE_SATURATION = 0.9, 0.15
MIN_SKIN_PIXELS = 20
RECIPE_VERSION = 1  # bump when the pixels or the statistic change: cached ITAs are then recomputed


def _glare(images: np.ndarray) -> np.ndarray:
    """bool (N, S, S): specular highlights of uint8 (N, S, S, 3) images."""
    x = images.astype(np.float32) / 255.0
    value = x.max(-1)
    saturation = (value - x.min(-1)) / np.maximum(value, 1e-6)
    return (value > GLARE_VALUE) & (saturation < GLARE_SATURATION)


def skin_pixels(images: np.ndarray, lesion: np.ndarray, settings=None):
    """-> (skin bool (N, S, S), lab float32 (N, 3, S, S)) of uint8 (N, S, S, 3) images and their lesion
    masks (N, S, S) (any dtype, nonzero = lesion). ``settings``: a ``segment`` section (hair kernel,
    vignette); the default segmenter's when None."""
    from ssl_derm.segmenters.colour import scaled_px, to_lab
    from ssl_derm.segmenters.prep import prepare

    if settings is None:
        from ssl_derm.segmenters.config import SegmentConfig

        settings = SegmentConfig().segment
    images = np.ascontiguousarray(images)
    size = images.shape[1]
    prep = prepare(images, settings)
    lab = to_lab(images)
    hair = (prep.lab[:, 0] - lab[:, 0]) > HAIR_DL
    usable = prep.valid & ~hair & ~_glare(images)
    inner, outer = (scaled_px(p, size) for p in BAND_PX)
    skin = np.zeros(usable.shape, bool)
    for i in range(len(images)):
        les = np.asarray(lesion[i]) > 0
        if not les.any():
            skin[i] = usable[i]
            continue
        d = ndi.distance_transform_edt(~les)  # px to the nearest lesion pixel
        band = usable[i] & (d > inner) & (d <= outer)
        skin[i] = band if band.sum() >= MIN_SKIN_PIXELS else usable[i] & (d > inner)
    return skin, lab


def image_ita(images: np.ndarray, lesion: np.ndarray, settings=None) -> np.ndarray:
    """(N,) float32 ITA (degrees) of uint8 (N, S, S, 3) images with lesion masks (N, S, S); NaN where
    fewer than ``MIN_SKIN_PIXELS`` skin pixels are left."""
    if len(images) == 0:
        return np.zeros(0, np.float32)
    skin, lab = skin_pixels(images, lesion, settings)
    out = np.full(len(images), np.nan, np.float32)
    for i in range(len(images)):
        if skin[i].sum() >= MIN_SKIN_PIXELS:
            out[i] = ita_degrees(np.median(lab[i, 0][skin[i]]), np.median(lab[i, 2][skin[i]]))
    return out


def default_ita(images: np.ndarray, batch_size: int = 64, segmenter=None) -> np.ndarray:
    """(N,) ITA of uint8 (N, S, S, 3) images around the default segmenter's lesion masks (in memory)."""
    from ssl_derm.segmenters.archive_masks import default_masks, default_segmenter

    segmenter = segmenter or default_segmenter()
    parts = [image_ita(np.asarray(images[i:i + batch_size]),
                       default_masks(np.asarray(images[i:i + batch_size]), segmenter))
             for i in range(0, len(images), batch_size)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def rows_ita(images: np.ndarray, rows: np.ndarray, masks: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(len(rows),) ITA of ``images[rows]`` (uint8 (N, S, S, 3), e.g. a cache memmap) around ``masks``
    (len(rows), S, S), a batch at a time."""
    parts = [image_ita(np.asarray(images[rows[i:i + batch_size]]), np.asarray(masks[i:i + batch_size]))
             for i in range(0, len(rows), batch_size)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def _entry(dataset) -> Optional[Path]:
    """The cache file of ``dataset``'s ITAs (beside its lesion masks), or None without an image cache."""
    if getattr(dataset, "cache_dir", None) is None or not getattr(dataset, "key", None):
        return None
    from ssl_derm.data.cache import _fingerprint
    from ssl_derm.segmenters.archive_masks import entry_dir

    masks = entry_dir(dataset)
    return masks.parent / f"skin-tone-{masks.name}-{_fingerprint([RECIPE_VERSION, BAND_PX, HAIR_DL, GLARE_VALUE, GLARE_SATURATION, MIN_SKIN_PIXELS])[:12]}.npy"


def dataset_ita(dataset, progress: bool = False, masks: Optional[np.ndarray] = None) -> np.ndarray:
    """(N,) float32 ITA of every row of ``dataset.images``: cached beside the image cache (keyed by the
    lesion masks' entry, which hashes the images and the default segmenter, and this file's recipe),
    computed in memory for a dataset without a cache entry (around ``masks`` (N, S, S), the default
    segmenter's, when the caller already has them)."""
    path = _entry(dataset)
    if path is not None and path.is_file():
        ita = np.load(path, allow_pickle=False)
        if len(ita) == len(dataset.images):
            return ita
    if path is None:
        if masks is not None:
            return rows_ita(dataset.images, np.arange(len(masks)), masks)
        return default_ita(dataset.images)
    from ssl_derm.segmenters.archive_masks import archive_masks

    masks = archive_masks(dataset, progress=progress)
    ita = rows_ita(dataset.images, np.arange(len(masks)), masks)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npy")
    np.save(tmp, ita.astype(np.float32))
    os.replace(tmp, path)
    return ita


def write_folder_skin_tone(images: Sequence[str], out_dir, image_size: int = 128,
                           cache_dir: Optional[str] = None) -> Path:
    """``out_dir/skin_tone.csv`` of every usable image under the folders ``images`` (``ssl-derm data check
    --out``): decoded through the image cache at ``image_size``, ITAs cached beside it; prints the counts."""
    from ssl_derm.config import DataConfig
    from ssl_derm.data import load_dataset

    ds = load_dataset(DataConfig(images=[str(p) for p in images], image_size=image_size, cache_dir=cache_dir))
    ita = dataset_ita(ds, progress=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = write_skin_tone_csv(out / "skin_tone.csv", ds.ids, ita)
    d = distribution(ita)
    print(f"skin tone (ITA) of {len(ita)} images -> {path}: " + ", ".join(f"{g} {d[g]}" for g in GROUPS + (UNKNOWN,))
          + (f"; median {d['median']:.1f} deg" if "median" in d else ""))
    return path


def skin_tone_source(pool, external=None):
    """A ``(dataset, pool masks or None) -> (N,) ITA`` callable for :class:`ssl_derm.evaluate.context.Context`
    (``ita_source``): the rows of ``pool`` (cached, :func:`dataset_ita`; around the run's own lesion masks
    when it computed them already) then those of ``external`` (in memory; its rows sit behind the pool's
    in the run's dataset). Nothing is computed until a side is scored."""
    def source(dataset, pool_masks: Optional[np.ndarray] = None) -> np.ndarray:
        parts = [dataset_ita(pool, masks=pool_masks)] + ([default_ita(external.images)] if external is not None else [])
        ita = np.concatenate(parts).astype(np.float32)
        if len(ita) != len(dataset.images):
            raise ValueError(f"skin tone of {len(ita)} images for a dataset of {len(dataset.images)}")
        return ita
    return source
