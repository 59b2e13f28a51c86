"""Training engine: one loop for every trained model, optimiser + schedule, precision, checkpoints
and resume, hooks, TensorBoard, DDP helpers."""
from ssl_derm.engine.batches import CacheBatches
from ssl_derm.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ssl_derm.engine.hooks import BestState, Every, Hook, Stateful
from ssl_derm.engine.logger import Logger
from ssl_derm.runs.resume import ConfigMismatchError
from ssl_derm.engine.trainer import Engine, TrainingError

__all__ = ["BestState", "CacheBatches", "CheckpointError", "ConfigMismatchError", "Engine", "Every", "Hook",
           "Logger", "Stateful", "TrainingError", "load_checkpoint", "save_checkpoint"]
