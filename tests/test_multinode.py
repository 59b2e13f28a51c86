"""Several machines, tested on one host: two torchrun "nodes" of one process each, joined by the c10d
rendezvous (gloo on the CPU), with and without a shared filesystem; a node killed mid-run resumes
from the last checkpoint, whether the job is started again or torchrun (--max-restarts) starts the
workers again; the CLI's pretraining (with such a restart) and finetuning run on two nodes, each
with its own --out and cache (no shared filesystem)."""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(per_node_args, cwd, restarts: int = 0, timeout: int = 240):
    """Start one torchrun agent per node (node_rank 0 and 1) on 127.0.0.1; per_node_args(node) -> the
    command after torchrun's options. Returns both nodes' (returncode, output)."""
    port = _port()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    procs, logs = [], []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
               f"--node_rank={node}", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}",
               "--rdzv_id=ssl-derm-test", f"--max-restarts={restarts}", "--monitor-interval=0.1",
               "--rdzv_conf=join_timeout=60",
               *per_node_args(node)]
        logs.append(tempfile.TemporaryFile("w+"))  # a file, not a pipe: a long output cannot block the agent
        procs.append(subprocess.Popen(cmd, stdout=logs[-1], stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd))
    deadline, codes = time.monotonic() + timeout, []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(deadline - time.monotonic(), 1)))
        except subprocess.TimeoutExpired:
            codes.append(None)
    if None in codes:  # SIGTERM: torchrun stops its workers (they run in sessions of their own), then exits
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    outs = []
    for code, log in zip(codes, logs):
        log.seek(0)
        outs.append((code, log.read()))
        log.close()
    assert None not in codes, f"torchrun still running after {timeout} s:\n" + "\n".join(o[-3000:] for _, o in outs)
    return outs


@pytest.mark.parametrize("left", ["closed", "reused"])
def test_a_restarted_rank_skips_the_store_left_by_the_workers_before(left):
    """torchrun's store keeps what the workers before a restart wrote there: rank 1, started before the
    new rank 0, finds the address of rank 0's store that is gone (its port closed, or now another
    store's), and waits for the one that rank 0 starts now."""
    import datetime
    import threading

    from torch import distributed as dist

    from ssl_derm.engine import distributed as D

    t = datetime.timedelta(seconds=30)
    agent = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=t)
    before = D.process_group_store("127.0.0.1", agent.port, 0, 2, t)  # the rank 0 of the first start
    before.set("gloo/rank0", b"an address of the first start")
    if left == "reused":  # the published port now serves a store that is not this start's rank 0's
        before.set(D._TOKEN_KEY, "a token of something else")
    else:
        del before  # gone with its process: nothing listens on its port any more
    found = []
    rank1 = threading.Thread(target=lambda: found.append(D.process_group_store("127.0.0.1", agent.port, 1, 2, t)))
    rank1.start()
    time.sleep(1.0)
    assert rank1.is_alive() and not found, "rank 1 took a store that is not the new rank 0's"
    now = D.process_group_store("127.0.0.1", agent.port, 0, 2, t)
    rank1.join(20)
    assert found, "rank 1 did not find the store of the new rank 0"
    assert not found[0].check(["gloo/rank0"])  # nothing of the first start
    found[0].set("from rank 1", b"1")
    assert now.get("from rank 1") == b"1"


def _reference(tmp_path):
    from multinode_worker import train

    return train(tmp_path / "ref_ckpt")  # one process, the same global batch


@pytest.mark.slow
@pytest.mark.parametrize("shared", [True, False])
def test_two_nodes_match_one_process_and_a_killed_node_resumes(tmp_path, shared):
    """Rank 1 dies (SIGKILL) after step 5. With a shared filesystem the job fails on both nodes and the
    same command is run again; without one, torchrun (--max-restarts 1) starts the workers of both nodes
    again itself, rank 1 joining 2 s after rank 0 (a node that comes back slower). Either way the run
    resumes from the checkpoint of step 4 and ends at the weights of one process."""
    ref = _reference(tmp_path)
    worker = str(ROOT / "tests" / "multinode_worker.py")
    ckpt = lambda node: tmp_path / ("ckpt" if shared else f"node{node}_ckpt")  # noqa: E731
    args = lambda node: [worker, str(tmp_path / "out"), str(ckpt(node)), "5", "0" if shared else "2"]  # noqa: E731
    if shared:
        outs = two_nodes(args, tmp_path)  # no restarts: the job fails on both nodes
        assert all(rc != 0 for rc, _ in outs) and (tmp_path / "out" / "killed").is_file()
        outs = two_nodes(args, tmp_path)  # the same command again
    else:
        outs = two_nodes(args, tmp_path, restarts=1)
        assert (tmp_path / "out" / "killed").is_file()
    assert all(rc == 0 for rc, _ in outs), outs[0][1][-3000:] + outs[1][1][-3000:]
    got = json.loads((tmp_path / "out" / "result.json").read_text())
    assert got["world"] == 2
    assert got["resumed_from"] == 4  # the last checkpoint before the kill (every 2 steps)
    assert got["weight"] == pytest.approx(ref["weight"], abs=1e-5) and got["bias"] == pytest.approx(ref["bias"], abs=1e-5)
    if not shared:  # each node keeps its own copy of the checkpoints
        assert (tmp_path / "node0_ckpt" / "last.pt").is_file() and (tmp_path / "node1_ckpt" / "last.pt").is_file()


@pytest.mark.slow
def test_cli_pretrain_and_finetune_on_two_nodes_without_a_shared_filesystem(tmp_path):
    def data(node):
        return ["device=cpu", "data.images=[synthetic]", "data.synthetic_n=48", "data.image_size=32",
                f"data.cache_dir={tmp_path / f'node{node}' / 'cache'}", "encoder.name=test_resnet"]

    def pretrain(node):  # rank 1 dies after step 3, once; torchrun (--max-restarts 1) starts both nodes again
        return [str(ROOT / "tests" / "cli_killed_once.py"), str(tmp_path / "killed"), "3",
                "pretrain", "--config", str(ROOT / "configs" / "pretrain" / "simclr_resnet18.yaml"),
                "--out", str(tmp_path / f"node{node}" / "pre"), *data(node),
                "method.name=simclr", "train.max_steps=4", "train.batch_size=4", "method.proj_hidden_dim=32",
                "method.proj_dim=16", "train.ckpt_every=2", "monitor.every_steps=0"]

    outs = two_nodes(pretrain, tmp_path, restarts=1)
    assert all(rc == 0 for rc, _ in outs), outs[0][1][-3000:] + outs[1][1][-3000:]
    assert (tmp_path / "killed").is_file()
    metrics = json.loads((tmp_path / "node0" / "pre" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 4
    assert metrics["resumed_from_step"] == 2  # the checkpoint of step 2, on each node's own disk
    assert (tmp_path / "node1" / "pre" / "checkpoints" / "last.pt").is_file()  # node 1 keeps its own

    def finetune(node):
        return ["-m", "ssl_derm.cli", "finetune", "--config", str(ROOT / "configs" / "finetune" / "finetune.yaml"),
                "--out", str(tmp_path / f"node{node}" / "ft"), *data(node), "encoder.checkpoint=none",
                "train.batch_size=4", "train.max_steps=2", "train.ckpt_every=2", "protocol.eval_every=2",
                "split.fraction=1.0"]

    for attempt in range(2):  # the second run finds the finished run on rank 0 and every rank stops there
        outs = two_nodes(finetune, tmp_path)
        assert all(rc == 0 for rc, _ in outs), outs[0][1][-3000:] + outs[1][1][-3000:]
    assert "already holds this run" in outs[0][1]
    assert json.loads((tmp_path / "node0" / "ft" / "metrics.json").read_text())["world_size"] == 2
