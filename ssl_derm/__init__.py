"""ssl-derm: self- and semi-supervised learning for dermoscopy images.

The Python API (``ssl_derm.pretrain``, ``finetune``, ``segment``, ``predict``, ``load_classifier``,
``load_segmenter``, ``load_config``; see :mod:`ssl_derm.api`) is imported on first use, so
``import ssl_derm`` stays fast (no torch until a function is called).
"""
import importlib
import sys
import types

__version__ = "0.1.0"

API = ("pretrain", "finetune", "segment", "predict", "load_classifier", "load_segmenter", "load_config")
__all__ = ["__version__", *API]
_SUBMODULES = ("pretrain", "segment")  # API names that are also modules of this package


class _CallableModule(types.ModuleType):
    """``ssl_derm.segment`` and ``ssl_derm.pretrain`` are modules too (and the import system puts a
    module on its package's attribute when it is imported): calling one calls the API function."""

    def __call__(self, *args, **kwargs):
        from ssl_derm import api

        return getattr(api, self.__name__.rsplit(".", 1)[1])(*args, **kwargs)


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        if name in _SUBMODULES and type(value) is types.ModuleType:
            value.__class__ = _CallableModule
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")  # the callable module (see _Package)
    if name in API:
        from ssl_derm import api

        return getattr(api, name)
    raise AttributeError(f"module 'ssl_derm' has no attribute '{name}'")


def __dir__():
    return sorted(list(globals()) + list(API))
