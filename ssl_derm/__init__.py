"""ssl-derm: self- and semi-supervised learning for dermoscopy images."""

__version__ = "0.1.0"
