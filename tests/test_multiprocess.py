"""2 processes x 4 CPU devices (jax.distributed + gloo) give the same training run as 1 x 8."""

import json
import os
import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_train(tmp_path, name, extra):
    out = tmp_path / f"{name}.json"
    cmd = [sys.executable, "-m", "eqvlp", "train", "--rules", "fsdp", "--fsdp", "8",
           "--steps", "2", "--batch-size", "16", "--json", str(out), *extra]
    env = os.environ | {"JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True), out


def test_two_processes_match_one(tmp_path):
    port = free_port()
    runs = [run_train(tmp_path, "single", ["--cpu-devices", "8"])]
    for i in range(2):
        runs.append(run_train(tmp_path, f"proc{i}", [
            "--cpu-devices", "4", "--num-processes", "2", "--process-id", str(i),
            "--coordinator", f"localhost:{port}"]))
    for proc, _ in runs:
        output, _ = proc.communicate(timeout=400)
        assert proc.returncode == 0, output[-3000:]
    single, proc0, proc1 = (json.loads(out.read_text()) for _, out in runs)
    assert single["processes"] == 1 and proc0["processes"] == 2
    assert proc0["losses"] == proc1["losses"]
    for a, b in zip(single["losses"], proc0["losses"], strict=True):
        assert abs(a - b) <= 1e-5 * abs(a)
    assert abs(single["param_checksum"] - proc0["param_checksum"]) <= 1e-5 * single["param_checksum"]
