"""`eqvlp train` on shards with 2 processes x 2 CPU devices (jax.distributed + gloo) equals one
process with 4 devices: same losses, and the processes read disjoint halves of every batch."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from eqvlp.data import write_shards


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(workdir, shards, extra):
    sets = ["model=clip-tiny", "batch_size=8", "optim.warmup_steps=1", "log_every=1",
        "data.workers=0",
            "log_samples=True", "vocab_size=300", "eval.tasks=('retrieval',)",
            "eval.num_samples=16", "eval.batch_size=8", "mesh.rules=fsdp", "mesh.data=1",
            "mesh.fsdp=-1"]
    cmd = [sys.executable, "-m", "eqvlp", "train", "--workdir", str(workdir), "--steps", "3",
           "--data", shards, "--eval-data", shards, "--no-progress",
           *[a for s in sets for a in ("--set", s)], *extra]
    env = os.environ | {"JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_processes_train_like_one_on_disjoint_samples(tmp_path):
    rng = np.random.default_rng(0)
    samples = [{"image": rng.integers(0, 255, (40, 40, 3), np.uint8),
                "text": f"a picture of thing number {i}"} for i in range(40)]
    write_shards(samples, tmp_path / "shards", samples_per_shard=10)
    shards = str(tmp_path / "shards" / "{00000..00003}.tar")
    port = free_port()
    runs = [launch(tmp_path / "single", shards, ["--cpu-devices", "4"])]
    runs += [launch(tmp_path / "multi", shards, [
        "--cpu-devices", "2", "--num-processes", "2", "--process-id", str(i),
        "--coordinator", f"localhost:{port}"]) for i in range(2)]
    for proc in runs:
        output, _ = proc.communicate(timeout=500)
        assert proc.returncode == 0, output[-3000:]
    single = read(tmp_path / "single" / "metrics.jsonl")
    multi = read(tmp_path / "multi" / "metrics.jsonl")
    losses = [(r["step"], r["loss"]) for r in single if "loss" in r]
    for (step, a), (step_b, b) in zip(losses, [(r["step"], r["loss"]) for r in multi
                                               if "loss" in r], strict=True):
        assert step == step_b and abs(a - b) <= 1e-5 * abs(a)
    alone = read(tmp_path / "single" / "samples_0.jsonl")
    p0, p1 = (read(tmp_path / "multi" / f"samples_{i}.jsonl") for i in range(2))
    for whole, a, b in zip(alone, p0, p1, strict=True):
        assert len(a["keys"]) == len(b["keys"]) == 4
        assert not set(a["keys"]) & set(b["keys"])  # no sample read twice
        assert sorted(a["keys"] + b["keys"]) == sorted(whole["keys"])
    results = json.loads((tmp_path / "multi" / "results.json").read_text())
    alone_results = json.loads((tmp_path / "single" / "results.json").read_text())
    assert results["processes"] == 2 and abs(results["i2t_r1"] - alone_results["i2t_r1"]) < 1e-6


def test_a_missing_peer_and_an_unshared_run_directory_end_with_clear_errors(tmp_path):
    """No hang: process 0 alone gives up after --distributed-timeout; two processes whose run
    directories differ (not a shared filesystem) stop before step 1, naming the process."""
    timeout = ["--distributed-timeout", "30"]
    lonely_port, port = free_port(), free_port()
    lonely = launch(tmp_path / "lonely", "shapes", [
        "--cpu-devices", "1", "--num-processes", "2", "--process-id", "0",
        "--coordinator", f"localhost:{lonely_port}", *timeout])
    split = [launch(tmp_path / f"local_{i}", "shapes", [
        "--cpu-devices", "1", "--num-processes", "2", "--process-id", str(i),
        "--coordinator", f"localhost:{port}", *timeout]) for i in range(2)]
    output, _ = lonely.communicate(timeout=300)
    assert lonely.returncode != 0
    assert "process 0 of 2: not every process joined within 30 s" in output, output[-3000:]
    for i, proc in enumerate(split):
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode != 0, output[-3000:]
        assert f"eqvlp train: process {i}: run directory" in output, output[-3000:]
        assert "is not shared between processes: process(es) [1] cannot see" in output


def test_barrier_timeouts_name_the_late_processes():
    from eqvlp.train.processes import _late_processes

    xla = ("DEADLINE_EXCEEDED: Barrier timed out. Id: b1::0. ...\n# of tasks that reached the "
           "barrier: 1/3.\nThe first task at the barrier: 0. Some timed out task names:\n1\n2\n\n"
           "\nRPC: /xla.coordination.CoordinationService/Barrier [type.googleapis.com/x='']")
    assert _late_processes(xla) == [1, 2]
    assert _late_processes("Some timed out task names: /job:jax_worker/replica:0/task:3") == [3]
    assert _late_processes("UNAVAILABLE: connection reset") == []
