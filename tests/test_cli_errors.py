"""The command line ends with a clear message, never a raw traceback or silent damage: reruns
of a finished run, `--steps` below its checkpoint, another config in the same directory, a
locked directory, damaged checkpoints, bad intervals and unwritable outputs. One tiny 2-step run
(module fixture) is copied for each case; every later run reuses its compiled step."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from eqvlp.cli import main
from eqvlp.train import checkpoint
from eqvlp.train.lock import RunLock

TINY = ["model=clip-tiny", "model.vision.depth=1", "model.text.depth=1", "batch_size=8", "optim.warmup_steps=1", "data.workers=0",
        "log_every=1", "data.num_samples=200", "vocab_size=300", "eval.tasks=()",
        "checkpoint_every=1", "keep_checkpoints=2"]


def train_args(workdir, steps=2, *extra):
    return ["train", "--workdir", str(workdir), "--steps", str(steps), "--no-progress",
            *[a for s in TINY for a in ("--set", s)], *extra]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-step run with checkpoints at steps 1 and 2."""
    workdir = tmp_path_factory.mktemp("finished")
    assert main(train_args(workdir)) == 0
    assert checkpoint.committed_steps(workdir / "checkpoints") == [1, 2]
    return workdir


@pytest.fixture
def run(finished, tmp_path):
    """A private copy of the finished run."""
    shutil.copytree(finished, tmp_path / "run")
    return tmp_path / "run"


def test_rerun_of_a_finished_run_reports_its_results_untouched(run, capsys):
    before = {name: (run / name).read_bytes() for name in ("results.json", "metrics.jsonl")}
    assert main(train_args(run)) == 0
    out = capsys.readouterr().out
    assert "already finished its 2 steps" in out and "steps" in out
    assert {name: (run / name).read_bytes() for name in before} == before


def test_steps_below_the_checkpoint_name_the_fix(run):
    with pytest.raises(SystemExit, match=r"checkpoint at step 2, past steps=1: give --steps >= 2"):
        main(train_args(run, 1))


def test_another_config_is_refused_unless_allowed(run, capsys):
    with pytest.raises(SystemExit, match=r"another config \(seed: 0 -> 1\).*--allow-config-change"):
        main(train_args(run, 2, "--set", "seed=1"))
    assert json.loads((run / "config.json").read_text())["seed"] == 0  # not overwritten
    assert main(train_args(run, 2, "--set", "seed=1", "--allow-config-change")) == 0
    assert "already finished" in capsys.readouterr().out


def test_a_locked_run_directory_is_refused_and_a_stale_lock_taken_over(run, capsys):
    with RunLock(run), pytest.raises(SystemExit,
                                     match=rf"in use by another run \(pid {os.getpid()} on"):
        main(train_args(run))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / "LOCK").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    assert main(train_args(run)) == 0
    assert f"pid {dead.pid}" in capsys.readouterr().out and (run / "LOCK").read_text() == ""


def test_a_damaged_newest_checkpoint_falls_back_and_is_set_aside(run, capsys):
    arrays = run / "checkpoints" / "step_00000002" / "arrays"
    chunk = next(p for p in sorted((arrays / "model.logit_scale").rglob("*")) if p.is_file()
                 and p.name != "zarr.json")
    chunk.unlink()
    (run / "results.json").unlink()  # a run killed after its last checkpoint
    assert main(train_args(run)) == 0
    out = capsys.readouterr().out
    assert "checkpoint step 2 is damaged" in out and "model.logit_scale" in out
    assert "resumed from step 1" in out
    assert checkpoint.committed_steps(run / "checkpoints") == [1, 2]
    assert (run / "checkpoints" / "step_00000002.damaged").is_dir()


def test_no_intact_checkpoint_stops_the_run(run):
    (run / "checkpoints" / "step_00000002" / "metadata.json").write_text("{")
    (run / "checkpoints" / "step_00000001" / "local_00000.json").write_text("{")  # data position
    with pytest.raises(SystemExit, match="no intact checkpoint .*2 damaged.*local_00000.json"):
        main(train_args(run, 3))
    assert checkpoint.committed_steps(run / "checkpoints") == [1, 2]  # nothing deleted


@pytest.mark.parametrize("key", ["checkpoint_every", "log_every"])
def test_zero_intervals_are_refused(tmp_path, key):
    with pytest.raises(SystemExit, match=f"{key} must be >= 1 step, got 0"):
        main(train_args(tmp_path, 2, "--set", f"{key}=0"))
    assert not (tmp_path / "checkpoints").exists()


def test_unwritable_run_directory_fails_before_step_one(tmp_path):
    (tmp_path / "checkpoints").write_text("a file where the checkpoints should go")
    with pytest.raises(SystemExit, match=f"run directory {tmp_path} is not writable"):
        main(train_args(tmp_path))
    assert not (tmp_path / "metrics.jsonl").exists()


def test_eval_json_path_is_checked_before_the_work(tmp_path):
    with pytest.raises(SystemExit, match="--json .*directory .*missing does not exist"):
        main(["eval", "--preset", "clip-tiny", "--json", str(tmp_path / "missing" / "r.json")])
    with pytest.raises(SystemExit, match="is a directory"):
        main(["eval", "--preset", "clip-tiny", "--json", str(tmp_path)])


def test_render_into_a_bad_path_names_it(tmp_path, monkeypatch):
    import eqvlp.render

    class Font:  # no Unifont needed: the output path is what is under test
        num_glyphs, paths = 1, ["font.hex"]

    monkeypatch.setattr(eqvlp.render, "load_unifont", lambda *a: Font())
    monkeypatch.setattr(eqvlp.render, "render_text", lambda *a, **k: __import__(
        "numpy").zeros((8, 8, 3), "uint8"))
    bad = tmp_path / "missing" / "out.png"
    with pytest.raises(SystemExit, match=f"eqvlp render: cannot write {bad}: directory .* does not exist"):
        main(["render", "hello", "-o", str(bad)])
    assert main(["render", "hello", "-o", str(tmp_path / "ok.png")]) == 0


def test_demo_names_the_presets(capsys):
    with pytest.raises(SystemExit, match="unknown --model 'clip-tinny': use one of .*clip-tiny"):
        main(["demo", "--model", "clip-tinny"])
