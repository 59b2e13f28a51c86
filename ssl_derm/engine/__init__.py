"""Training engine: loop, optimiser + schedule, checkpoints, TensorBoard, DDP helpers."""
from ssl_derm.engine.batches import CacheBatches
from ssl_derm.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ssl_derm.engine.logger import Logger
from ssl_derm.engine.loop import TrainingError, fit

__all__ = ["CacheBatches", "CheckpointError", "Logger", "TrainingError", "fit", "load_checkpoint", "save_checkpoint"]
