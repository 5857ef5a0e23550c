"""`eqvlp train`: outputs of a run, exact resume after a SIGKILL, non-finite steps skipped,
the CLI's errors, and a small real dataset written as shards."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from eqvlp.cli import main
from eqvlp.train.config import load_config, override
from eqvlp.train.loop import train

TINY = ["model=clip-tiny", "batch_size=16", "optim.warmup_steps=2", "eval.num_samples=32",
        "data.workers=0",
        "eval.batch_size=16", "log_every=1", "data.num_samples=2000", "vocab_size=400"]


def tiny(tmp_path, *sets):
    return override(load_config(), [*TINY, f"workdir={tmp_path}", *sets])


def losses(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_a_run_writes_results_metrics_curves_and_checkpoints(tmp_path):
    results = train(tiny(tmp_path, "steps=4", "checkpoint_every=2", "eval.every=2"),
                    log=lambda *a: None, progress=False)
    for key in ("zeroshot_top1", "i2t_r1", "t2i_r1", "steps", "wall_s", "images_per_s",
                "data_skipped"):
        assert key in results, key
    assert 0.0 <= results["zeroshot_top1"] <= 1.0 and results["steps"] == 4
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["zeroshot_top1"] == results["zeroshot_top1"]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval" in r] == [2, 4]
    assert {"loss", "lr", "grad_norm", "images_per_s", "data_skipped"} <= set(rows[0])
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "tokenizer.json").exists()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step_00000002", "step_00000004"]
    from eqvlp.train.run import load_run  # a run started from Python loads back like a CLI run

    model, cfg, _ = load_run(tmp_path)
    assert cfg.steps == 4 and type(model).__name__ == "CLIP"


def _cli(workdir, steps, *extra):
    return [sys.executable, "-m", "eqvlp", "train", "--workdir", str(workdir), "--steps",
            str(steps), "--no-progress", *[a for s in TINY for a in ("--set", s)],
            "--set", "checkpoint_every=3", "--set", "eval.tasks=()", *extra]


def test_resume_after_sigkill_reproduces_the_uninterrupted_losses(tmp_path):
    env = os.environ | {"JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    full, broken = tmp_path / "full", tmp_path / "broken"
    run = subprocess.run(_cli(full, 12), env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen(_cli(broken, 12), env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while not (broken / "checkpoints" / "step_00000003").exists():
        assert time.time() < deadline and proc.poll() is None, \
            "no checkpoint before the kill:\n" + (tmp_path / "killed.log").read_text()[-3000:]
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(losses(broken))
    assert killed_at < 12, "the run finished before it could be killed"
    run = subprocess.run(_cli(broken, 12), env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "resumed from step" in run.stdout
    want, got = losses(full), losses(broken)  # later lines of a step overwrite earlier ones
    assert sorted(got) == sorted(want) == list(range(1, 13))
    assert all(got[s] == want[s] for s in want), [(s, got[s], want[s]) for s in want]


def _children(pid: int) -> set[int]:
    """Direct child processes of `pid` (Linux /proc)."""
    out = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out.update(int(c) for c in f.read().split())
    return out


def test_sigterm_stops_the_run_and_its_data_workers(tmp_path):
    env = os.environ | {"JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen(_cli(tmp_path / "run", 100000, "--set", "data.workers=1"), env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while not (tmp_path / "run" / "metrics.jsonl").exists():
        assert time.time() < deadline and proc.poll() is None, (tmp_path / "run.log").read_text()
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert workers, "the run started no data worker process"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    time.sleep(1)
    alive = [w for w in workers if os.path.exists(f"/proc/{w}") and
             open(f"/proc/{w}/stat").read().split()[2] != "Z"]
    assert not alive, f"data worker processes {alive} outlived the run"


def test_non_finite_steps_are_skipped_and_counted(tmp_path, capsys):
    # a learning rate so large that the weights blow up: the loss turns NaN/Inf, the step is
    # skipped and counted, and no NaN ever reaches the parameters
    sets = [*TINY, "optim.lr=1e30", "optim.clip_norm=None", "optim.warmup_steps=0",
            "eval.tasks=()"]
    main(["train", "--workdir", str(tmp_path), "--steps", "6", "--no-progress",
          *[a for s in sets for a in ("--set", s)]])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["skipped_steps"] >= 1
    assert "skipped_steps" in capsys.readouterr().out
    import equinox as eqx
    import jax

    from eqvlp.train.run import load_run

    model, _, _ = load_run(tmp_path)
    assert all(np.isfinite(np.asarray(x)).all()
               for x in jax.tree.leaves(eqx.filter(model, eqx.is_array)))


def test_cli_errors_name_the_fix(capsys):
    with pytest.raises(SystemExit, match="did you mean optim.lr"):
        main(["train", "--set", "optim.lrr=1"])
    with pytest.raises(SystemExit, match="--coordinator"):
        main(["train", "--num-processes", "2"])
    with pytest.raises(SystemExit):
        main(["train", "--mesh", "2,4"])
    assert "DATA,FSDP,TENSOR" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="matches no file"):
        main(["train", "--data", "/nonexistent/*.tar", "--workdir", "/tmp/eqvlp-never"])


def test_help_config_prints_the_reference(capsys):
    main(["train", "--help-config"])
    out = capsys.readouterr().out
    assert "`optim.lr`" in out and "`data.workers`" in out
