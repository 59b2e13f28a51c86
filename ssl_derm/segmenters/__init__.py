"""Annotation-free lesion segmentation: registered segmenters, shared lesion prior and clean-up,
pseudo-mask self-training, and ``run_segment`` (``ssl-derm segment``).

Importing this package registers the segmenters: contrast_em (the default), gharawi, otsu_gray,
otsu_blue, kmeans_color, kmeans_features, vit_attention.
"""
from ssl_derm.segmenters import attention, contrast_em, gharawi, kmeans, otsu  # noqa: F401  (registration)
