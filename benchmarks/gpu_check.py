"""Driver of the one prepared GPU check (see gpu_check.sh): runs each step of gpu_check_steps.py in its
own process under ``timeout``, one after the other (the compile step in the background, overlapping the
correctness steps; the timed benches run alone at the end), and rewrites ``<out>/summary.json``
after every step: {step: {status, rc, seconds, expected_gpu_s, figures, error_tail}}. All step output
goes to ``<out>/log.txt``; bulky files (caches, checkpoints, runs) stay under ``--work``.

A failing or timed-out step is recorded and the next one runs. The whole check keeps to ``--budget``
seconds: a step never gets more than what is left, less what the steps after it are owed.

    python3 benchmarks/gpu_check.py --out $OUT [--dry-run] [--only methods,ddp]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# name, expected seconds on a fresh H200, timeout, runs in the background
STEPS = [
    ("env", 10, 60, False),
    ("compile", 240, 330, True),
    ("methods", 90, 200, False),
    ("kill_resume", 45, 120, False),
    ("ddp", 60, 150, False),
    ("throughput", 80, 180, False),
    ("finetune_path", 45, 100, False),
]
MIN_STEP_S = 20  # what each step still to start is owed from the budget
DRY_RUN_SLOWER = 4  # a dry run's timeouts: the CPU at tiny sizes is slower than the GPU at real ones


def _atomic_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


class Check:
    def __init__(self, out: Path, work: Path, dry_run: bool, budget: float):
        self.out, self.work, self.dry_run, self.budget = out, work, dry_run, budget
        self.t0 = time.time()
        self.summary = {"dry_run": dry_run, "budget_s": budget, "steps": {}}
        self.log = out / "log.txt"

    def left(self) -> float:
        return self.budget - (time.time() - self.t0)

    def write(self) -> None:
        self.summary["elapsed_s"] = round(time.time() - self.t0, 1)
        self.summary["ok"] = all(s.get("status") == "ok" for s in self.summary["steps"].values())
        _atomic_json(self.out / "summary.json", self.summary)

    def command(self, name: str) -> list:
        cmd = [sys.executable, str(HERE / "gpu_check_steps.py"), name, "--work", str(self.work),
               "--figures", str(self.work / f"{name}.json")]
        return cmd + (["--dry-run"] if self.dry_run else [])

    def start(self, name: str, limit: float):
        (self.work / f"{name}.json").unlink(missing_ok=True)
        logf = open(self.work / f"{name}.log", "w")
        cmd = ["timeout", "-k", "10", str(int(limit))] + self.command(name)
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=HERE.parent)
        return proc, logf, time.time(), limit

    def finish(self, name: str, expected: float, running) -> None:
        proc, logf, t0, limit = running
        rc = proc.wait()
        logf.close()
        seconds = round(time.time() - t0, 1)
        text = (self.work / f"{name}.log").read_text(errors="replace")
        with open(self.log, "a") as f:
            f.write(f"\n===== {name}: exit {rc}, {seconds} s (limit {int(limit)} s) =====\n{text}")
        fig_path = self.work / f"{name}.json"
        figures = json.loads(fig_path.read_text()) if fig_path.is_file() else {}
        failed_items = [k for k, v in figures.items() if isinstance(v, dict) and v.get("error")]
        status = "timeout" if rc in (124, 137) else ("failed" if rc or failed_items else "ok")
        entry = {"status": status, "rc": rc, "seconds": seconds, "limit_s": int(limit), "expected_gpu_s": expected,
                 "figures": figures}
        if failed_items:
            entry["failed_items"] = failed_items
        if status != "ok":
            entry["error_tail"] = text[-2500:]
        self.summary["steps"][name] = entry
        self.write()
        print(f"gpu_check: {name}: {status} ({seconds} s)", flush=True)

    def run(self, only) -> None:
        steps = [s for s in STEPS if not only or s[0] in only]
        background = {}
        for i, (name, expected, timeout, in_background) in enumerate(steps):
            timeout *= DRY_RUN_SLOWER if self.dry_run else 1
            owed = MIN_STEP_S * sum(1 for s in steps[i + 1:] if not s[3])
            limit = max(5.0, min(timeout, self.left() - owed))
            if self.left() < 5:
                self.summary["steps"][name] = {"status": "skipped", "reason": "the check's time budget is spent"}
                self.write()
                continue
            if name == "throughput":  # the timed benches run alone: wait for the background steps first
                for bname, (bexp, brun) in list(background.items()):
                    self.finish(bname, bexp, brun)
                    del background[bname]
            running = self.start(name, limit)
            if in_background:
                background[name] = (expected, running)
            else:
                self.finish(name, expected, running)
        for bname, (bexp, brun) in background.items():
            self.finish(bname, bexp, brun)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--work", default="/tmp/gpu_check")
    p.add_argument("--dry-run", action="store_true", help="every step on the CPU at tiny sizes")
    p.add_argument("--budget", type=float, default=460.0, help="seconds for the whole check")
    p.add_argument("--only", default="", help="comma-separated step names")
    a = p.parse_args(argv)
    out, work = Path(a.out), Path(a.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    check = Check(out, work, a.dry_run or os.environ.get("DRY_RUN") == "1", a.budget)
    check.write()
    check.run([s for s in a.only.split(",") if s])
    check.write()
    return 0 if check.summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
