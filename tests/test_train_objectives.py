"""`eqvlp train` beyond one contrastive loss: CLIPA's two phases, clip-rocket's objectives and
heads, CLIPPO's text-pair co-training. Tiny models, a few steps each."""

import json
import shutil

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqvlp import models
from eqvlp.data import DataConfig, Loader, caption_pairs
from eqvlp.train import checkpoint
from eqvlp.train.accumulate import accumulated_value_and_grad
from eqvlp.train.config import LossConfig, load_config, override, to_json
from eqvlp.train.cotraining import mix_batch, text_pairs
from eqvlp.train.encode import example_keys, make_encoder
from eqvlp.train.loop import train
from eqvlp.train.rocket import RocketHeads, rocket_loss
from eqvlp.train.run import load_run

# clip-tiny at 16 px: 4 patches of 8 px. One BPE tokenizer for every run (training one is slow).
TINY = ["model=clip-tiny", "model.vision.image_size=16", "model.vision.depth=1",
        "model.text.depth=1", "batch_size=16", "optim.warmup_steps=1", "eval.tasks=()",
        "data.workers=0", "log_every=1", "data.num_samples=512", "vocab_size=300"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from eqvlp.data import captions_corpus
    from eqvlp.tokenizer import train_tokenizer

    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    train_tokenizer(captions_corpus(200), vocab_size=300).save(str(path))
    return str(path)


def tiny(workdir, tokenizer, *sets):
    cfg = override(load_config(), [*TINY, f"workdir={workdir}", f"tokenizer={tokenizer}", *sets])
    workdir.mkdir(parents=True, exist_ok=True)  # as `eqvlp train` does: load_run reads it
    (workdir / "config.json").write_text(json.dumps(to_json(cfg)))
    return cfg


def rows(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def quiet(*args, **kwargs):
    pass


# ---------------------------------------------------------------------------- CLIPA


def test_clipa_switches_phase_resizes_and_resumes_exactly(tmp_path, tokenizer):
    sets = ["model.vision.image_size=32", "clipa.fraction=0.5", "clipa.image_size=16",
            "clipa.image_mask=random", "clipa.mask_ratio=0.5", "clipa.text_mask=random",
            "clipa.text_length=6", "steps=4", "checkpoint_every=1", "keep_checkpoints=10"]
    full = tmp_path / "full"
    train(tiny(full, tokenizer, *sets), log=quiet, progress=False)
    got = rows(full)
    assert [r["phase"] for r in got] == ["reduced", "reduced", "full", "full"]
    model, _, _ = load_run(full)
    assert model.image.position_embedding.weight.shape == (1 + 4 * 4, 64)  # 32 px, 8 px patches
    reduced, _, _ = load_run(full, step=2)  # a reduced-phase checkpoint restores at 16 px
    assert reduced.image.position_embedding.weight.shape == (1 + 2 * 2, 64)

    # resume from the checkpoint after step 1 (reduced phase): the same losses, bit for bit
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step_00000001",
                    resumed / "checkpoints" / "step_00000001")
    logs = []
    train(tiny(resumed, tokenizer, *sets), log=logs.append, progress=False)
    assert any("resumed from step 1" in line for line in logs)
    assert any("phase 'full'" in line for line in logs)
    want = {r["step"]: r["loss"] for r in got}
    again = {r["step"]: r["loss"] for r in rows(resumed)}
    assert sorted(again) == [2, 3, 4]
    assert all(again[s] == want[s] for s in again), (again, want)


def test_clipa_errors_name_the_fix(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="nothing is reduced"):
        train(tiny(tmp_path, tokenizer, "clipa.fraction=0.5"), log=quiet, progress=False)
    with pytest.raises(ValueError, match="1 - 1/k"):
        train(tiny(tmp_path, tokenizer, "clipa.fraction=0.5", "clipa.image_mask=grid"),
              log=quiet, progress=False)
    with pytest.raises(ValueError, match="clipa.text_mask=None"):
        train(override(load_config("clippo-tiny"), [
            f"workdir={tmp_path}", "clipa.fraction=0.5", "clipa.text_mask=truncate"]),
            log=quiet, progress=False)


def test_resize_handles_every_model():
    """CLIPA resizes CLIP, CLIPPO and 1T-CLIP: position tables resampled, configs updated."""
    for name in ("clippo-tiny", "onetower-clip-tiny"):
        model = models.create(name, key=jax.random.key(0))
        small = models.resize(model, image_size=32)
        assert small.config.vision.image_size == 32 and type(small) is type(model)
        grid = small.config.vision.grid
        assert small.vit.position_embedding.weight.shape[0] == grid[0] * grid[1]
        np.testing.assert_array_equal(small.vit.encoder.layers.mlp.fc1.weight,
                                      model.vit.encoder.layers.mlp.fc1.weight)
    shorter = models.resize(model, context_length=8)
    assert shorter.text_position_embedding.weight.shape[0] == 8
    with pytest.raises(ValueError, match="CLIPPO renders text"):
        models.resize(models.create("clippo-tiny", key=jax.random.key(0)), context_length=8)


def test_masks_come_from_per_example_keys():
    """A micro-batch draws the same masks as the whole batch: accumulation stays exact."""
    from eqvlp.masking import ImageMask, TextMask

    model = models.create("clip-tiny", key=jax.random.key(0))
    encode = jax.jit(make_encoder(lambda x: x.astype(jnp.float32) / 255,
                                  image_mask=ImageMask("random", keep_ratio=0.5),
                                  text_mask=TextMask("random", length=6)))
    rng = np.random.default_rng(0)
    ids = np.concatenate([np.ones((8, 1)), rng.integers(4, 900, (8, 12)), np.full((8, 1), 2),
                          np.zeros((8, 2))], axis=1)
    batch = {"image": jnp.asarray(rng.integers(0, 256, (8, 32, 32, 3), np.uint8)),
             "text": jnp.asarray(ids, jnp.int32), "key": example_keys(0, jnp.int32(3), 8)}
    whole = encode({"model": model}, batch)
    # the examples in another order (as micro-batches take them): each keeps its own masks
    order = np.array([1, 3, 5, 7, 0, 2, 4, 6])
    shuffled = encode({"model": model}, jax.tree.map(lambda x: x[order], batch))
    np.testing.assert_allclose(shuffled["image"], whole["image"][order], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(shuffled["text"], whole["text"][order], rtol=1e-5, atol=1e-5)
    other_step = encode({"model": model}, dict(batch, key=example_keys(0, jnp.int32(4), 8)))
    assert not np.allclose(other_step["image"], whole["image"], atol=1e-3)
    assert not np.allclose(other_step["text"], whole["text"], atol=1e-3)


# ---------------------------------------------------------------------------- clip-rocket


def test_rocket_trains_heads_and_adds_its_terms(tmp_path, tokenizer):
    sets = ["loss.name=rocket", "loss.ssl=byolip", "loss.label_smoothing=0.1",
            "loss.head_dim=16", "loss.head_hidden_dim=32", "data.views=2",
            "data.text_augment={}", "steps=2", "accumulation=2"]
    results = train(tiny(tmp_path, tokenizer, *sets), log=quiet, progress=False)
    assert np.isfinite(results["final_loss"])
    first = rows(tmp_path)[0]
    # loss = the combined global and local CLIP terms + the BYOLIP term, not plain CLIP
    assert first["loss"] == pytest.approx(first["loss_rocket_clip"] + first["loss_ssl"], rel=1e-5)
    assert 0.0 < first["loss_ssl"] <= 4.0
    assert abs(first["loss"] - first["loss_clip"]) > 1e-3
    assert abs(first["loss_rocket_clip"] - first["loss_clip"]) > 1e-4  # the local terms count

    # the heads (and BYOLIP's EMA target of model and heads) are in the checkpoint, and
    # training changed the heads
    saved = json.loads((tmp_path / "checkpoints" / "step_00000002" / "metadata.json").read_text())
    names = {leaf["name"] for leaf in saved["leaves"]}
    for prefix in ("heads.predictor.", "target.heads.projector.", "target.model.image."):
        assert any(n.startswith(prefix) for n in names), prefix
    cfg = tiny(tmp_path, tokenizer, *sets)
    initial = RocketHeads(cfg.loss, 32, key=jax.random.fold_in(jax.random.key(cfg.seed), 1))
    arrays, static = eqx.partition(initial, eqx.is_array)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    restored, _ = checkpoint.restore(tmp_path / "checkpoints", {"heads": arrays},
                                     {"heads": jax.tree.map(lambda _: device, arrays)})
    trained = eqx.combine(restored["heads"], static)
    for name in ("local_projector", "projector", "predictor"):
        before, after = getattr(initial, name), getattr(trained, name)
        assert any(not np.array_equal(a, b) for a, b in
                   zip(jax.tree.leaves(eqx.filter(before, eqx.is_array)),
                       jax.tree.leaves(eqx.filter(after, eqx.is_array)))), name
    assert float(trained.local_logit_scale) != float(initial.local_logit_scale)


class ToyModel(eqx.Module):
    """Linear towers: the smallest model with the interface the rocket loss uses."""

    image: jax.Array
    text: jax.Array
    logit_scale: jax.Array

    def __init__(self, key):
        ki, kt = jax.random.split(key)
        self.image = jax.random.normal(ki, (3, 8))
        self.text = jax.random.normal(kt, (50, 8))
        self.logit_scale = jnp.asarray(2.0)

    def encode_image(self, images):
        return images.mean(axis=(1, 2)) @ self.image

    def encode_text(self, ids):
        return jnp.take(self.text, ids, axis=0).mean(axis=1)

    def scale(self):
        return jnp.exp(self.logit_scale)


@pytest.mark.parametrize("ssl", ["byolip", "swalip"])  # BN heads + EMA target; prototypes
def test_rocket_loss_accumulates_exactly(ssl):
    """4 micro-batches of 4 give the loss and gradients of one batch of 16: the heads' batch
    norm sees the full batch of embeddings."""
    config = LossConfig(name="rocket", ssl=ssl, head_dim=8, head_hidden_dim=16,
                        num_prototypes=6, freeze_prototypes_steps=0, label_smoothing=0.1)
    model, heads = ToyModel(jax.random.key(0)), RocketHeads(config, 8, key=jax.random.key(1))
    params = {"model": model, "heads": heads}
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.integers(0, 256, (16, 3, 4, 4, 3)), jnp.uint8),
             "text": jnp.asarray(rng.integers(0, 50, (16, 3, 5)), jnp.int32)}
    encode = make_encoder(lambda x: x.astype(jnp.float32) / 127.5 - 1)
    target = None
    if ssl == "byolip":
        moved = jax.tree.map(lambda x: x + 0.1, eqx.filter(params, eqx.is_inexact_array))
        target_params = eqx.combine(moved, params)
        target = (target_params["heads"], encode(target_params, batch))

    def loss(p, e):
        return rocket_loss(p, e, config, step=jnp.int32(5), target=target)

    @jax.jit
    def both(params):
        return [accumulated_value_and_grad(encode, loss, params, batch, micro_batches=n,
                                           has_aux=True) for n in (1, 4)]

    ((v1, terms1), g1), ((v4, terms4), g4) = both(params)
    np.testing.assert_allclose(v4, v1, rtol=1e-5)
    assert float(terms1["ssl"]) != 0.0 and float(terms1["rocket_clip"]) != float(terms1["clip"])
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g4), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    assert all(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(g1["heads"]))


def test_rocket_config_errors_name_the_fix(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="loss.name=rocket"):
        LossConfig(ssl="siamlip")
    with pytest.raises(ValueError, match="loss.name=rocket"):
        train(tiny(tmp_path, tokenizer, "data.views=2"), log=quiet, progress=False)


# ---------------------------------------------------------------------------- CLIPPO co-training


def test_cotraining_mixes_rendered_text_pairs_into_the_batch(tmp_path):
    cfg = override(load_config("clippo-tiny"), ["loss.cotraining=0.25", "batch_size=8"])
    pairs = text_pairs(cfg)
    assert pairs[:3] == caption_pairs(3) and all(a != b for a, b in pairs[:50])
    data = DataConfig(image_size=64, text="render", batch_size=8, num_samples=64)
    host = next(Loader(data))
    mixed = mix_batch(host, pairs, fraction=0.25, seed=0, step=7)
    again = mix_batch(host, pairs, fraction=0.25, seed=0, step=7)
    rows_ = np.flatnonzero(mixed["is_text_pair"])
    assert len(rows_) == 2 and np.array_equal(mixed["image"], again["image"])
    kept = np.flatnonzero(~mixed["is_text_pair"])
    np.testing.assert_array_equal(mixed["image"][kept], host["image"][kept])
    np.testing.assert_array_equal(mixed["text"][kept], host["text"][kept])
    # a pair row: both sides are rendered text (grey 127 page, black glyphs), and they differ
    for row in rows_:
        left, right = mixed["image"][row], mixed["text"][row]
        assert set(np.unique(left)) == {0, 127} and set(np.unique(right)) == {0, 127}
        assert not np.array_equal(left, host["image"][row])
        assert not np.array_equal(left, right)
    other = mix_batch(host, pairs, fraction=0.25, seed=0, step=8)
    assert not np.array_equal(other["image"], mixed["image"])

    # a file of documents: consecutive sentences within a document
    corpus = tmp_path / "docs.txt"
    corpus.write_text("One red square. Two blue discs.\n\nA third text. And a fourth one!\n")
    from_file = text_pairs(override(cfg, [f"loss.cotraining_text={corpus}"]))
    assert from_file == [("One red square.", "Two blue discs."),
                         ("A third text.", "And a fourth one!")]


def test_cotraining_trains_clippo_with_text_pairs(tmp_path):
    cfg = override(load_config("clippo-tiny"), [
        f"workdir={tmp_path}", "model.vision.depth=1", "model.vision.stem=patch",
        "model.vision.patch_size=16", "batch_size=8", "steps=2", "eval.tasks=()",
        "optim.warmup_steps=1", "log_every=1", "data.num_samples=64", "data.workers=0",
        "loss.cotraining=0.25"])
    results = train(cfg, log=quiet, progress=False)
    assert np.isfinite(results["final_loss"])
    assert [r["text_pairs"] for r in rows(tmp_path)] == [2, 2]
    with pytest.raises(ValueError, match="CLIPPO"):
        train(override(load_config(), [f"workdir={tmp_path}/clip", "loss.cotraining=0.25"]),
              log=quiet, progress=False)
