"""The steps of the GPU check (run one at a time by gpu_check.py): ``python3 gpu_check_steps.py STEP
--work DIR --figures FILE [--dry-run]``. Each writes its figures to FILE after every item, so a step
killed by its timeout still leaves what it measured. ``--dry-run``: the CPU, tiny sizes.

env            torch/CUDA versions, the GPU, bf16 support, what train.precision=auto picks
methods        every method a few steps through the Engine under bf16, fp16 and channels_last: loss,
               peak memory, step time, and a sync check (torch.cuda.set_sync_debug_mode("error")) over
               augmentation + forward + loss, and over the whole step where no GradScaler reads found_inf
compile        every method with train.compile=true (bf16): compiled graphs (dynamo's count), compile
               and step time, the same sync check after compiling
kill_resume    ssl-derm pretrain killed (SIGKILL) after its first checkpoint, run again, against an
               uninterrupted run: losses and exported encoders compared
ddp            2 processes on the one GPU (torchrun): pretraining, and a finetune run twice into one --out
throughput     the throughput bench at 224 px (ceiling / resident / streamed / lightly with 16 workers)
finetune_path  ssl-derm finetune at 224 px: img/s of the finetuning batch path
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
HAM = ROOT / ".gpu" / "ham10000"
METHODS = ["mae", "simmim", "densecl", "ibot", "simclr", "byol", "mocov3", "dino", "swav", "barlowtwins", "vicreg"]
VIT_ONLY = {"mae", "ibot", "simmim"}  # simmim on a ViT: the token-mask path


class Figures(dict):
    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def put(self, key, value) -> None:
        self[key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self, indent=1, default=str))
        os.replace(tmp, self.path)


def _error(e: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(e), e)).strip()[-600:] + " | at " + \
        " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in traceback.extract_tb(e.__traceback__)[-4:][::-1])


def step_env(fig: Figures, dry: bool, work: Path) -> None:
    import kornia
    import lightly
    import timm
    import torch

    from ssl_derm.config import TrainConfig
    from ssl_derm.engine.precision import resolve_precision

    fig.put("torch", torch.__version__)
    fig.put("versions", {"timm": timm.__version__, "lightly": lightly.__version__, "kornia": kornia.__version__})
    fig.put("cuda_available", torch.cuda.is_available())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        fig.put("gpu", {"name": p.name, "memory_gib": round(p.total_memory / 2 ** 30, 1),
                        "capability": list(torch.cuda.get_device_capability(0)), "count": torch.cuda.device_count(),
                        "cuda": torch.version.cuda, "nccl": str(torch.cuda.nccl.version())})
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    fig.put("precision_auto", resolve_precision(TrainConfig(), dev))
    fig.put("cpus", os.cpu_count())


def _settings(name: str, dry: bool):
    from ssl_derm.commands.bench import TINY_METHOD
    from ssl_derm.config import plugin_settings

    extra = dict(TINY_METHOD) if dry else {"dino_out_dim": 4096, "n_prototypes": 300, "queue_length": 256}
    if name == "simmim":
        extra["mask_patch_size"] = 16 if dry else 32
    if name == "swav":
        extra.update(queue_length=16 if dry else 256, n_prototypes=32 if dry else 300)
    return plugin_settings("method", name, extra, lenient=True)


def method_run(name: str, variant: str, dry: bool) -> dict:
    """A few engine steps of ``name`` under ``variant`` (bf16 | fp16 | channels_last | compile)."""
    import torch

    from ssl_derm.augment import build_preset
    from ssl_derm.config import AugmentConfig, TrainConfig
    from ssl_derm.encoders import create_encoder
    from ssl_derm.engine import Engine, Hook
    from ssl_derm.methods import build_method
    from ssl_derm.methods.step import MethodStep

    cuda = torch.cuda.is_available() and not dry
    dev = torch.device("cuda" if cuda else "cpu")
    size, batch, warmup, checked = (32, 4, 1, 1) if dry else (96, 32, 2, 2)
    enc_name = ("vit_tiny_patch16_224" if name in VIT_ONLY else ("test_resnet" if dry else "resnet18"))
    torch.manual_seed(0)
    method = build_method(_settings(name, dry), create_encoder(enc_name, size), 100).to(dev)
    preset = build_preset(method.default_preset, AugmentConfig(n_local_crops=2), size).to(dev)
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=dev)
    precision = "fp16" if variant == "fp16" else ("bf16" if cuda else "fp32")
    cfg = TrainConfig(max_steps=warmup + checked, batch_size=batch, precision=precision, ckpt_every=0,
                      log_every=10 ** 9, warmup_steps=0, channels_last=variant == "channels_last",
                      compile=variant == "compile")
    rec = {"encoder": enc_name, "precision": precision, "sync_forward": "ok"}
    times = []

    def step_fn(module, step, micro):
        if not cuda and step >= warmup:  # the CPU stand-in over the method's step (the presets pick
            from ssl_derm.engine.sync_audit import HostSyncAudit  # CPU-only shortcuts; GPU-checked)

            with torch.no_grad():
                views = preset(x)
            with HostSyncAudit() as audit:
                loss, logs = module(views, step, None)
            if audit.found:
                rec["sync_forward"] = audit.report()[:600]
            return loss, {"batch_size": batch}
        check = cuda and step >= warmup
        if check:
            torch.cuda.set_sync_debug_mode("error")
        try:
            with torch.no_grad():
                views = preset(x)
            loss, logs = module(views, step, None)
        except RuntimeError as e:
            if not check or "synchroniz" not in str(e):
                raise
            rec["sync_forward"] = _error(e)
            torch.cuda.set_sync_debug_mode("default")
            with torch.no_grad():
                views = preset(x)
            loss, logs = module(views, step, None)
        finally:
            if check:
                torch.cuda.set_sync_debug_mode("default")
        return loss, {"batch_size": batch}

    class Steps(Hook):  # the method's momentum update, step times, and the whole-step sync check
        def on_start(self, engine):
            self.t = time.perf_counter()

        def after_step(self, engine, done):
            method.on_step_end(done - 1)
            if cuda:
                torch.cuda.synchronize()
            now = time.perf_counter()
            times.append(now - self.t)
            self.t = now

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    if variant == "compile":
        import torch._dynamo

        torch._dynamo.reset()
    teacher = getattr(method, "teacher_encoder", None)
    # a dry run compiles with dynamo's eager backend: it counts the graphs, the CPU has no time for inductor
    engine = Engine(method, cfg, dev, forward=MethodStep(method), hooks=[Steps()], progress=False,
                    compile_modules=[m for m in (method.encoder, teacher) if m is not None],
                    compile_options={"backend": "eager"} if dry else None)
    out = engine.fit(step_fn)
    rec["loss"] = out["final_loss"]
    rec["finite"] = bool(torch.isfinite(torch.tensor(out["final_loss"])))
    rec["first_step_s"] = round(times[0], 3)
    rec["step_ms"] = round(1000 * sum(times[warmup:]) / max(len(times[warmup:]), 1), 2)
    if cuda:
        rec["peak_mem_mib"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    if variant == "compile":
        from torch._dynamo.utils import counters

        rec["graphs"] = int(counters["stats"]["unique_graphs"])
        rec["recompiles"] = sum(counters["recompiles"].values()) if "recompiles" in counters else 0
    if not rec["finite"]:
        rec["error"] = "the loss is not finite"
    elif rec["sync_forward"] != "ok":
        rec["error"] = "a host sync inside the step: " + rec["sync_forward"]
    elif variant == "compile" and rec["graphs"] < 1:
        rec["error"] = "nothing was compiled"
    return rec


def _methods(fig: Figures, dry: bool, variants) -> None:
    for name in METHODS:
        for variant in variants:
            try:
                fig.put(f"{name}/{variant}", method_run(name, variant, dry))
            except Exception as e:  # recorded; the next method runs
                fig.put(f"{name}/{variant}", {"error": _error(e)})


def step_methods(fig, dry, work):
    _methods(fig, dry, ["bf16", "fp16", "channels_last"])


def step_compile(fig, dry, work):
    _methods(fig, dry, ["compile"])


def _cli(args, log: Path, timeout: float = 600, torchrun: int = 0, env=None) -> subprocess.CompletedProcess:
    pre = [sys.executable]
    if torchrun:
        pre += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"]
    cmd = pre + ["-m", "ssl_derm.cli"] + [str(a) for a in args]
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        res = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT,
                             env=dict(os.environ, **(env or {})))
    return res


def _data(work: Path, dry: bool, size=None) -> list:
    """Synthetic lesions (written once per size under ``work``), the device, one CPU thread in a dry run."""
    size = size or (32 if dry else 96)
    return ["data.images=[synthetic]", f"data.synthetic_n={64 if dry else 512}", f"data.image_size={size}",
            f"data.cache_dir={work / 'cache'}", f"device={'cpu' if dry else 'cuda'}"] + \
        (["train.num_threads=1"] if dry else [])


def _pretrain_args(out: Path, work: Path, dry: bool, steps: int) -> list:
    enc = "test_resnet" if dry else "resnet18"
    return ["pretrain", "--config", ROOT / "configs/pretrain/simclr_resnet18.yaml", "--out", out, *_data(work, dry),
            "monitor.every_steps=0",
            f"encoder.name={enc}", f"train.max_steps={steps}", f"train.batch_size={8 if dry else 64}",
            f"train.ckpt_every={4 if dry else 40}", f"train.log_every={2 if dry else 20}", "train.warmup_steps=2",
            "method.proj_hidden_dim=64", "method.proj_dim=32"]


def _fresh(*dirs: Path) -> None:
    """A rerun of the check starts its runs over (they would resume or be found finished)."""
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


def _encoder_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    x, y = load_file(str(a)), load_file(str(b))
    return max(float((x[k].float() - y[k].float()).abs().max()) for k in x)


def step_kill_resume(fig, dry, work):
    steps = 12 if dry else 400
    log = work / "kill_resume.cmds.log"
    full, cut = work / "kr_full", work / "kr_cut"
    _fresh(full, cut)
    t0 = time.time()
    res = _cli(_pretrain_args(full, work, dry, steps), log)
    fig.put("uninterrupted", {"rc": res.returncode, "seconds": round(time.time() - t0, 1)})
    cmd = [sys.executable, "-m", "ssl_derm.cli"] + [str(a) for a in _pretrain_args(cut, work, dry, steps)]
    with open(log, "a") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        ckpt = cut / "checkpoints" / "last.pt"
        while proc.poll() is None and not ckpt.is_file():
            time.sleep(0.02)
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
    fig.put("killed", {"killed": killed, "rc": proc.returncode})
    res = _cli(_pretrain_args(cut, work, dry, steps), log)
    a = json.loads((full / "metrics.json").read_text())
    b = json.loads((cut / "metrics.json").read_text())
    rel = abs(a["final_loss"] - b["final_loss"]) / max(abs(a["final_loss"]), 1e-12)
    rec = {"rc": res.returncode, "resumed_from_step": b["resumed_from_step"], "final_loss_uninterrupted": a["final_loss"],
           "final_loss_resumed": b["final_loss"], "final_loss_rel_diff": rel,
           "encoder_max_abs_diff": _encoder_diff(full / "encoder.safetensors", cut / "encoder.safetensors")}
    if not killed or not b["resumed_from_step"]:
        rec["error"] = "the run was not killed mid-way or did not resume"
    elif rel > (1e-5 if dry else 5e-2):  # the GPU's non-deterministic kernels (cuDNN, atomics) drift a little
        rec["error"] = f"the resumed run ends at a different loss (relative difference {rel:.3g})"
    fig.put("resumed", rec)


def step_ddp(fig, dry, work):
    log = work / "ddp.cmds.log"
    out, ft = work / "ddp_pretrain", work / "ddp_finetune"
    _fresh(out, ft)
    t0 = time.time()
    env = {"OMP_NUM_THREADS": "1"}  # two processes on a shared GPU machine's (or the dry run's) cores
    res = _cli(_pretrain_args(out, work, dry, 6 if dry else 60), log, torchrun=2, env=env)
    rec = {"rc": res.returncode, "seconds": round(time.time() - t0, 1)}
    if res.returncode == 0:
        m = json.loads((out / "metrics.json").read_text())
        rec.update(world_size=m["world_size"], final_loss=m["final_loss"], img_per_s=m.get("img_per_s"))
    else:
        rec["error"] = "the 2-process pretraining failed: see log.txt"
    fig.put("pretrain", rec)
    args = ["finetune", "--config", ROOT / "configs/finetune/finetune.yaml", "--out", ft, *_data(work, dry),
            f"encoder.name={'test_resnet' if dry else 'resnet18'}", "encoder.checkpoint=none",
            "train.batch_size=8", f"train.max_steps={4 if dry else 40}", "train.ckpt_every=20",
            "protocol.eval_every=20", "split.fraction=1.0"]
    runs = []
    for _ in range(2):
        t0 = time.time()
        r = _cli(args, log, torchrun=2, env=env)
        runs.append({"rc": r.returncode, "seconds": round(time.time() - t0, 1)})
    rec = {"runs": runs}
    if any(r["rc"] for r in runs):
        rec["error"] = "a 2-process finetune (first run, or the rerun into the same --out) failed: see log.txt"
    fig.put("finetune_twice", rec)


def step_throughput(fig, dry, work):
    from ssl_derm.commands.bench import run_throughput

    if dry:
        r = run_throughput("simclr", "test_resnet", 32, 8, 2, "cpu", quick=True, workers=2, n_images=64, warmup=1)
    else:
        root = str(HAM / "images") if (HAM / "images").is_dir() else None
        r = run_throughput("simclr", "resnet50", 224, 128, 30, "cuda", data_root=root, workers=16,
                           n_images=None if root else 4 * 16 * 128, warmup=5)
    fig.put("simclr_resnet50", r)


def step_finetune_path(fig, dry, work):
    log = work / "finetune_path.cmds.log"
    out = work / "ft_path"
    _fresh(out)
    if dry or not (HAM / "images").is_dir():
        data = _data(work, dry, 32 if dry else 224)
    else:
        data = [f"data.images=[{HAM / 'images'}]", f"data.labels={HAM / 'labels.csv'}", "data.image_size=224",
                f"data.cache_dir={work / 'cache_ham224'}", "device=cuda"]
    args = ["finetune", "--config", ROOT / "configs/finetune/finetune.yaml", "--out", out, *data,
            f"encoder.name={'test_resnet' if dry else 'resnet50'}", "encoder.checkpoint=none",
            f"train.batch_size={8 if dry else 128}", f"train.max_steps={4 if dry else 80}", "train.ckpt_every=0",
            f"protocol.eval_every={10 ** 6}", "split.fraction=1.0"]
    t0 = time.time()
    res = _cli(args, log)
    rec = {"rc": res.returncode, "seconds": round(time.time() - t0, 1)}
    if res.returncode == 0:
        m = json.loads((out / "metrics.json").read_text())
        rec["img_per_s"] = m.get("info", {}).get("img_per_s")
        rec["train_seconds"] = m.get("info", {}).get("train_seconds")
    else:
        rec["error"] = "ssl-derm finetune failed: see log.txt"
    fig.put("finetune_resnet50_224", rec)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("step")
    p.add_argument("--work", required=True)
    p.add_argument("--figures", required=True)
    p.add_argument("--dry-run", action="store_true")
    a = p.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if a.dry_run:
        import torch

        torch.set_num_threads(1)
    fig = Figures(Path(a.figures))
    globals()[f"step_{a.step}"](fig, a.dry_run, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
