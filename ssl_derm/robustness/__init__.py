"""Robustness to acquisition shift: the registered shifts (``shifts.py``) and the suite that runs an exported
classifier or segmenter under each of them at three severities (``suite.py``, ``ssl-derm robustness``)."""
