"""``contrast_em`` (the default): skin/lesion classes in Lab colour + local contrast, found by contrast and EM.

Per image, with no labels and nothing learnt across images:

0. prepare, against acquisition shift: thick hairs and marker lines found by oriented line closings, and
   the long ones filled with the mean of the pixels around them (``hair_lines``, ``hair_fill``), the
   illumination fall-off fitted to the skin ring divided out (``flatten_light``: vignetting, uneven light),
   shades-of-grey white balance (``colour_constancy``: camera and light colour);
1. features: the (hair-free, lightly smoothed) Lab colour, plus the local contrast of lightness (its
   standard deviation in a small Gaussian window, ``texture_sigma``): pigment networks, dots and globules
   make a lesion rough where skin is smooth, which separates lesions whose colour is close to the skin's
   and keeps smooth skin shading out of a small lesion's class;
2. skin model: a Gaussian of the features in the skin ring just inside the field of view, from its lightest
   half (``ring_light``: a lesion that fills the frame reaches the ring, and it is the darker part); every
   pixel's Mahalanobis distance to it is its contrast to the skin;
3. initial lesion: contrast above Otsu's threshold (of the field of view's contrasts);
4. hard EM (classification EM) of two full-covariance Gaussians, lesion and skin: refit both to the
   current split, reassign each pixel to the likelier class with the prior log-odds ``lesion_bias``
   (the lesion's paler rim is as likely under either class: it belongs to the lesion); ``em_iters``
   rounds. The ring seeds the skin class but does not bind it, so a lesion reaching the ring is not
   forced into skin;
5. which round: a lesion's border is where the colour changes fastest, while an EM that leaks into skin
   draws its outline through smooth skin. An earlier round's mask replaces the last round's when its
   (cleaned) outline lies on colour edges at least ``edge_margin`` times stronger on average;
6. a pale rim when the lesion fills the frame (``pale_rim``): a lesion that reaches the skin ring (a close-up,
   other optics) has put its own paler part into the skin model, and two Gaussians then split the lesion
   into a dark core and "skin". When the mask found covers a tenth of the ring or more, the skin is seeded
   again from the ring's pixels outside it (their lightest ``ring_light`` share), a second two-Gaussian EM
   runs on the pixels outside the mask, and its lesion class joins the mask when it lines most of the mask's
   outline (a rim, not a patch of shading or hair) and stands out from the new skin seed by at least
   ``pale_rim`` times the contrast of the mask found;
7. the shared clean-up: an opening that cuts thin spurs off (``mask_opening``: hair left over beside a
   lesion would otherwise draw the hull out to its tip), the central component and its convex hull
   (``convex_hull``). Lesion outlines
   are nearly convex (1,600 of HAM10000's reference masks at 128 px fill 0.965 of their hull in the
   median, 0.89 at the 5th percentile), while the EM's errors are bays: a pale or regressive part of the lesion that looks like
   skin. The hull closes them; the outline comparison of step 5 uses the masks before it.

The lesion score is the posterior of the lesion class, a sigmoid of the biased log-likelihood ratio.
The same EM (``segment/em.py``, without the texture feature or bias) finishes other methods' masks when
``segment.refine_em`` is set.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np
from scipy import ndimage as ndi

from ssl_derm.errors import ConfigError
from ssl_derm.registry import register
from ssl_derm.segmenters.base import Segmenter
from ssl_derm.segmenters.colour import scaled_px
from ssl_derm.segmenters.config import SegmenterSettings
from ssl_derm.segmenters.cleanup import clean_mask, opening_px
from ssl_derm.segmenters.em import MIN_PIXELS, em_rounds, gaussian, mahalanobis, mahalanobis_to
from ssl_derm.segmenters.prep import Prepared, smooth_lab
from ssl_derm.segmenters.prior import otsu_threshold


def trimmed_ring(f: np.ndarray, ring: np.ndarray, trim: float, rounds: int = 2) -> np.ndarray:
    """The ring pixels that look like skin: bool (P,) ``ring`` less the ``trim`` share farthest from the
    ring's own Gaussian (refitted ``rounds`` times). Whatever else lies in the ring (a lesion that fills the
    frame, hair, a marker line, a dark corner) is far from the skin's tight colour and drops out first."""
    if trim <= 0:
        return ring
    keep = ring
    idx = np.flatnonzero(ring)
    for _ in range(rounds):
        d = mahalanobis(f[:, idx], keep[idx])
        sel = np.zeros_like(ring)
        sel[idx[d <= np.quantile(d, 1.0 - trim)]] = True
        if sel.sum() < 20:
            return keep
        keep = sel
    return keep


def lightest_ring(f: np.ndarray, ring: np.ndarray, keep: float) -> np.ndarray:
    """The lightest ``keep`` share of the ``ring`` pixels (by f[0], Lab L): bool (P,). A lesion is darker
    than the skin around it, so when it fills most of the frame and reaches the ring, the skin that is left
    in the ring (its corners) is the light part; on a ring of skin alone this keeps the lighter skin."""
    if keep >= 1:
        return ring
    L = f[0, ring]
    sel = ring.copy()
    sel[np.flatnonzero(ring)[L < np.quantile(L, 1.0 - keep)]] = False
    return sel if sel.sum() >= 20 else ring


def contrast_init(f: np.ndarray, valid: np.ndarray, ring: np.ndarray, trim: float = 0.0,
                  light: float = 1.0) -> Tuple[np.ndarray, np.ndarray]:
    """Mahalanobis distance to the (lightest, trimmed) ring's Gaussian, and its Otsu split. -> (dist (P,), bool (P,))."""
    dist = mahalanobis(f, trimmed_ring(f, lightest_ring(f, ring, light), trim))
    return dist, (dist > otsu_threshold(dist[valid])) & valid


def local_contrast(lightness: np.ndarray, sigma: float) -> np.ndarray:
    """Standard deviation of lightness in a Gaussian window of ``sigma`` px (at 128; scaled to the size).

    lightness: float (N, S, S) (Lab L, 0-100) -> float32 (N, S, S), in L units (so it sits beside Lab)."""
    sig = scaled_px(sigma, lightness.shape[-1])
    x = np.asarray(lightness, np.float64)
    mean = ndi.gaussian_filter(x, (0, sig, sig))
    var = ndi.gaussian_filter(x * x, (0, sig, sig)) - mean * mean
    return np.sqrt(np.maximum(var, 0.0)).astype(np.float32)


@dataclass
class ContrastEMSettings(SegmenterSettings):
    """contrast_em: the shared ``smooth_sigma`` and ``em_iters`` (0: the contrast alone), and its own keys."""

    method: str = "contrast_em"
    batch_size: int = 16  # its per-pixel arrays stay in cache: 256 px images ~10% faster than in batches of 64
    em_iters: int = 4  # one more than the shared default: edge_margin falls back to round 1 when the EM leaks
    texture_sigma: float = 0.7  # local contrast window (px at 128) of the extra feature; 0 = colour only
    texture_weight: float = 2.0  # the feature's scale next to Lab (L units): how much roughness counts
    lesion_bias: float = 0.5  # prior log-odds lesion:skin in the EM; 0 = equal priors (ties to nobody)
    edge_margin: float = 1.25  # an earlier EM round wins with this many times the last's outline edge; 0 = last
    pale_rim: float = 0.25  # a lesion reaching the ring: a paler rim with this share of its contrast joins; 0 = off
    convex_hull: bool = True  # the shared clean-up key, on here: a pale lesion part in a bay of the mask joins it
    mask_opening: float = 2.0  # and an opening first (disc radius, px at 128): a hair's spur does not stretch the hull
    ring_trim: float = 0.0  # share of the skin ring left out of the skin model (the pixels least like skin)
    ring_light: float = 0.5  # share of the skin ring, the lightest, that the skin model starts from (1 = all)
    # the shared prepare keys, on here (benchmarks/robustness_ham10000.py: the shifts they remove)
    hair_lines: float = 11.0  # thick hairs and marker lines found by oriented line closings and inpainted
    colour_constancy: float = 6.0  # shades-of-grey white balance (p = 6) before Lab
    flatten_light: bool = True  # the illumination fall-off fitted to the skin ring divided out

    def check(self) -> None:
        super().check()
        if self.em_iters < 0:
            raise ConfigError(f"config key 'segment.em_iters': must be >= 0, got {self.em_iters}")
        if self.edge_margin < 0:
            raise ConfigError(f"config key 'segment.edge_margin': must be >= 0 (0 = always the last EM round), "
                              f"got {self.edge_margin}")
        if self.pale_rim < 0:
            raise ConfigError(f"config key 'segment.pale_rim': must be >= 0 (0 = off), got {self.pale_rim}")
        if not 0.05 <= self.ring_light <= 1:
            raise ConfigError(f"config key 'segment.ring_light': must be in [0.05, 1] (1 = the whole ring), got {self.ring_light}")
        if not 0 <= self.ring_trim < 0.9:
            raise ConfigError(f"config key 'segment.ring_trim': must be in [0, 0.9) (0 = the whole ring), got {self.ring_trim}")
        if self.texture_sigma < 0 or self.texture_weight <= 0:
            raise ConfigError("config keys 'segment.texture_sigma' (>= 0, 0 = off) and 'segment.texture_weight' (> 0): "
                              f"got {self.texture_sigma} and {self.texture_weight}")


def features(prep: Prepared, s: ContrastEMSettings) -> np.ndarray:
    """The EM's per-pixel features: smoothed Lab (+ weighted local contrast). -> float (N, C, S, S), C = 3 or 4."""
    lab = smooth_lab(prep.lab, s.smooth_sigma)
    if s.texture_sigma <= 0:
        return lab
    rough = s.texture_weight * local_contrast(prep.lab[:, 0], s.texture_sigma)  # unsmoothed L: texture survives
    return np.concatenate([lab, rough[:, None]], 1)


def colour_edges(lab: np.ndarray) -> np.ndarray:
    """Colour gradient magnitude: float (N, 3, S, S) Lab -> float (N, S, S), summed over the channels.

    Image by image: ``ndi.sobel`` of an (N, S, S) stack would smooth across the batch axis too, so an
    image's edges would depend on its neighbours in the batch."""
    return np.stack([sum(np.hypot(ndi.sobel(img[c], 0), ndi.sobel(img[c], 1)) for c in range(img.shape[0]))
                     for img in lab]) if len(lab) else np.zeros((0,) + lab.shape[2:])


def outline_edge(mask: np.ndarray, edges: np.ndarray, inside: np.ndarray) -> float:
    """Mean of ``edges`` on the outline of bool (S, S) ``mask`` within bool (S, S) ``inside``; 0 without one."""
    line = mask & ~ndi.binary_erosion(mask) & inside
    return float(edges[line].mean()) if line.any() else 0.0


def pick_round(rounds, edges: np.ndarray, valid: np.ndarray, component: str, fill_holes: bool, margin: float):
    """The last of the EM ``rounds`` [(post (P,), mask (P,))], unless an earlier one's cleaned outline is
    ``margin`` times stronger on ``edges`` (S, S) (the field of view's own rim, ``valid``'s, does not count)."""
    if margin <= 0 or len(rounds) < 2:
        return rounds[-1]
    size = edges.shape[0]
    inside = ndi.binary_erosion(valid, iterations=2)
    strength = [outline_edge(clean_mask(m.reshape(size, size) & valid, component, fill_holes), edges, inside)
                for _, m in rounds]
    strength[-1] *= margin
    return rounds[int(np.argmax(strength))]


RING_REACH = 0.1  # pale_rim looks again when the mask found covers this share of the skin ring
RIM_SURROUND = 0.7  # and a paler class joins only when it lines this share of the mask's outline
RIM_EM_ITERS = 3  # rounds of its EM on the pixels outside the mask


def pale_rim(f: np.ndarray, valid: np.ndarray, ring: np.ndarray, post: np.ndarray, mask: np.ndarray,
             core: np.ndarray, hair: np.ndarray, share: float, light: float,
             bias: float) -> Tuple[np.ndarray, np.ndarray]:
    """Step 6 of the module's docstring: the lesion ``mask`` (P,) of an image whose lesion reaches the skin
    ``ring``, with the paler lesion class around it that a skin model seeded outside it finds, when that class
    has at least ``share`` of the mask's contrast. ``core`` (S, S): the mask as the clean-up sees it (hair
    spurs opened, its central component), which must reach the ring and whose outline the rim must line;
    ``hair`` (P,): the hair-line map, left out of both classes. -> (post (P,), mask (P,)), as they were
    otherwise."""
    flat = core.ravel()
    rest = valid & ~flat & ~hair
    if share <= 0 or (ring & flat).sum() < RING_REACH * ring.sum() or (ring & rest).sum() < 20:
        return post, mask
    skin = gaussian(f, lightest_ring(f, ring & rest, light))  # the new skin seed's mean and covariance
    dist = mahalanobis_to(f, *skin)
    init = rest & (dist > otsu_threshold(dist[rest]))
    rim_post, rim = em_rounds(f, rest, init, RIM_EM_ITERS, bias)[-1]
    if rim.sum() < 2 * MIN_PIXELS:
        return post, mask
    outline = (ndi.binary_dilation(core) & ~core).ravel() & valid & ~hair
    lines = (outline & rim).sum() / max(outline.sum(), 1)
    contrast = [mahalanobis_to(f[:, part].mean(1), *skin) for part in (rim, flat)]  # class means to the skin
    if lines < RIM_SURROUND or contrast[0] < share * contrast[1]:
        return post, mask
    return np.where(rim, np.maximum(post, rim_post), post), mask | rim


@register("segmenter", "contrast_em", settings=ContrastEMSettings)
class ContrastEM(Segmenter):
    def segment(self, images: np.ndarray, prep: Prepared):
        feats = features(prep, self.s)
        edges = colour_edges(feats[:, :3]) if self.s.edge_margin > 0 and self.s.em_iters > 1 else None
        n, c, size, _ = feats.shape
        opening, no_hair = opening_px(self.s, size), np.zeros((size, size), bool)
        scores = np.zeros((n, size, size), np.float32)
        masks = np.zeros((n, size, size), bool)
        for i in range(n):
            f, v, ring = feats[i].reshape(c, -1), prep.valid[i].ravel(), prep.ring[i].ravel()
            dist, init = contrast_init(f, v, ring, self.s.ring_trim, self.s.ring_light)
            rounds = em_rounds(f, v, init, self.s.em_iters, self.s.lesion_bias)
            if edges is not None:
                post, m = pick_round(rounds, edges[i], prep.valid[i], self.s.component, self.s.fill_holes,
                                     self.s.edge_margin)
            else:
                post, m = rounds[-1] if rounds else (init.astype(np.float64), init)
            if self.s.em_iters == 0:  # contrast alone: score = distance relative to the threshold
                post = 1.0 - np.exp(-dist / max(otsu_threshold(dist[v]), 1e-6) * np.log(2))
            if self.s.pale_rim > 0 and m.any():
                hair = prep.hair[i] if prep.hair is not None else no_hair
                core = clean_mask(m.reshape(size, size) & prep.valid[i], self.s.component, False,
                                  opening=opening, only=hair)
                post, m = pale_rim(f, v, ring, post, m, core, hair.ravel(), self.s.pale_rim, self.s.ring_light,
                                   self.s.lesion_bias)
            scores[i], masks[i] = post.reshape(size, size), m.reshape(size, size)
        return scores, masks
