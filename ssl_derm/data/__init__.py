"""Data layer: image folders, label CSVs and mask folders -> a decode-once cache -> ``Dataset``.

    from ssl_derm.data import load_dataset
    ds = load_dataset(cfg.data, need_labels=True)   # ds.images (N,S,S,3) uint8 memmap, ds.labels (N,)
    x = ds.batch(idx, device)                        # uint8 (B,3,S,S)

See sources.py (listing, CSVs, masks), cache.py (the cache), dataset.py (load_dataset), splits.py,
synth.py (built-in synthetic lesions) and check.py (``ssl-derm data check``).
"""
from ssl_derm.data.cache import ImageCache, default_cache_dir
from ssl_derm.data.check import CheckReport, check_data, run_check
from ssl_derm.data.dataset import Dataset, load_dataset
from ssl_derm.data.sources import DataError, find_masks, list_images, read_labels
from ssl_derm.data.splits import FRACTIONS, Split, load_or_make_split, make_split, split_for, split_path
from ssl_derm.data.synth import SYNTH_CLASSES, synth_arrays, write_synthetic

__all__ = [
    "CheckReport", "DataError", "Dataset", "FRACTIONS", "ImageCache", "SYNTH_CLASSES", "check_data",
    "default_cache_dir", "find_masks", "list_images", "load_dataset", "load_or_make_split", "make_split",
    "read_labels", "run_check", "Split", "split_for", "split_path", "synth_arrays", "write_synthetic",
]
