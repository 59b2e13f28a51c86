"""ssl-derm: self- and semi-supervised learning for dermoscopy images.

The Python API (``ssl_derm.pretrain``, ``finetune``, ``segment``, ``predict``, ``load_classifier``,
``load_segmenter``, ``load_config``; see :mod:`ssl_derm.api`) is imported on first use, so
``import ssl_derm`` stays fast (no torch until a function is called). No subpackage shares a name with an
API function (the commands live in :mod:`ssl_derm.commands`, the segmenters in :mod:`ssl_derm.segmenters`).
"""
__version__ = "0.1.0"

API = ("pretrain", "finetune", "segment", "predict", "load_classifier", "load_segmenter", "load_config")
__all__ = ["__version__", *API]


def __getattr__(name):
    if name in API:
        from ssl_derm import api

        return getattr(api, name)
    raise AttributeError(f"module 'ssl_derm' has no attribute '{name}'")


def __dir__():
    return sorted(list(globals()) + list(API))
