"""Scores shared by every family: classification, segmentation and their lesion-grouped bootstrap intervals."""
