"""The run folder, one lifecycle for every command and every sweep cell.

- :mod:`.folder`: prepare the folder (resolved config, code version), atomic JSON, device and seeds;
- :mod:`.fingerprint`: what produced a result (config, data and encoder sha256) and the one config diff;
- :mod:`.resume`: may these checkpoints be resumed under this config;
- :mod:`.finished`: does this folder already hold this run (skip), another one (refuse / move aside)?
"""
from ssl_derm.runs.folder import (code_version, flatten, prepare_out_dir, resolve_device, seed_everything,
                                  torch_threads, write_json, write_metrics)

__all__ = ["code_version", "flatten", "prepare_out_dir", "resolve_device", "seed_everything", "torch_threads",
           "write_json", "write_metrics"]
