"""The `eqvlp train` loop: a resumed run continues exactly where the interrupted one stopped."""

import pytest

from eqvlp.cli import main
from eqvlp.train.loop import TrainConfig, generated_batch, train


def test_generated_batch_is_deterministic_and_captions_match_images():
    images, ids = generated_batch(3, 4, 32, 16, seed=0)
    again, ids_again = generated_batch(3, 4, 32, 16, seed=0)
    assert (images == again).all() and (ids == ids_again).all()
    assert images.shape == (4, 32, 32, 3) and ids.shape == (4, 16)
    assert (ids[:, 0] == 1).all() and ((ids == 2).sum(1) == 1).all()
    assert not (generated_batch(4, 4, 32, 16, seed=0)[1] == ids).all()


def test_resume_matches_uninterrupted_run(tmp_path):
    common = dict(rules="fsdp", fsdp=8, batch_size=8, log_every=100)
    full = train(TrainConfig(steps=3, **common), log=lambda *a: None)
    first = train(TrainConfig(steps=2, checkpoint_dir=str(tmp_path), checkpoint_every=2, **common),
                  log=lambda *a: None)
    resumed = train(TrainConfig(steps=3, checkpoint_dir=str(tmp_path), **common),
                    log=lambda *a: None)
    assert first["losses"] == pytest.approx(full["losses"][:2], rel=1e-6)
    assert resumed["resumed_from"] == 2
    assert resumed["losses"] == pytest.approx(full["losses"][2:], rel=1e-5)
    assert resumed["param_checksum"] == pytest.approx(full["param_checksum"], rel=1e-5)


def test_train_cli_needs_coordinator_for_multi_process(capsys):
    with pytest.raises(SystemExit, match="--coordinator"):
        main(["train", "--num-processes", "2"])
