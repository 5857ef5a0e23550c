"""Fine-tuning: tasks, CLIPPO's fused inputs, layer-wise decay, LiT's locked tower, the
`finetune` loop's outputs, resolution changes and resume, and the CLI's errors."""

import dataclasses
import json
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from eqvlp import models
from eqvlp.cli import main
from eqvlp.data import COLOURS, SHAPES, Shapes, write_shards
from eqvlp.finetune import (
    VQA_ANSWERS,
    VQA_KINDS,
    ClassifierHead,
    FinetuneConfig,
    ShapesPairs,
    ShapesVQA,
    finetune,
    fuse_question,
    layer_decay_factors,
    lit_trainable_spec,
    make_lit_loss,
    render_pair,
    scale_by_factors,
)
from eqvlp.finetune.loop import make_step
from eqvlp.render import render_text
from eqvlp.train.optim import OptimConfig, make_optimizer

TINY_CLIP = models.CLIPConfig(
    vision=models.ViTConfig.tiny(image_size=32, width=32, depth=1, num_heads=2, mlp_dim=64,
                                 projection_dim=16),
    text=models.TextConfig.tiny(width=32, depth=1, num_heads=2, mlp_dim=64, projection_dim=16,
                                context_length=12, vocab_size=300),
)
FAST = OptimConfig(lr=3e-3, warmup_steps=2, weight_decay=0.0)


def tiny(tmp_path, **changes) -> FinetuneConfig:
    base = FinetuneConfig(model=TINY_CLIP, optim=FAST, steps=4, batch_size=16, eval_samples=48,
                          eval_batch_size=24, vocab_size=300, head_hidden_dim=32, log_every=1,
                          workdir=str(tmp_path))
    return dataclasses.replace(base, **changes)


def quiet(*args, **kwargs):
    pass


def test_vqa_answers_are_true_of_the_scene():
    vqa, shapes = ShapesVQA("val", num_samples=100), Shapes("val", num_samples=100)
    for i in range(100):
        example, scene = vqa[i], shapes.scene(i)
        assert sorted(example["kind"]) == list(range(len(VQA_KINDS)))  # one of each kind
        for question, label, kind in zip(example["text"], example["label"], example["kind"]):
            answer, kind = VQA_ANSWERS[label], VQA_KINDS[kind]
            if kind == "count":
                assert answer == ("one", "two")[len(scene.objects) - 1]
            elif kind == "colour":
                (obj,) = [o for o in scene.objects if f"the {SHAPES[o.shape]}?" in question]
                assert answer == COLOURS[obj.colour]
            elif kind == "shape":
                (obj,) = [o for o in scene.objects if f"the {COLOURS[o.colour]} one" in question]
                assert answer == SHAPES[obj.shape]
            else:
                named = question.removeprefix("is there a ").rstrip("?")
                assert answer == ("yes" if named in [SHAPES[o.shape] for o in scene.objects]
                                  else "no")
        np.testing.assert_array_equal(example["image"], shapes[i]["image"])
    one = ShapesVQA("val", num_samples=100, questions=1)
    assert len({one[i]["kind"][0] for i in range(40)}) == len(VQA_KINDS)  # kinds drawn
    again = ShapesVQA("val", num_samples=100)[7]  # a pure function of (seed, split, index)
    assert (again["text"], again["label"]) == (vqa[7]["text"], vqa[7]["label"])
    with pytest.raises(ValueError, match="questions per image"):
        ShapesVQA("val", questions=5)


def _named(text: str) -> set[str]:
    """The shapes and colours a caption names (synonyms mapped to the canonical names)."""
    text = text.lower().replace("plus sign", "cross").replace("round shape", "circle")
    synonyms = {"disk": "circle", "rhombus": "diamond"}
    words = {synonyms.get(w, w) for w in re.findall(r"[a-z]+", text)}
    return words & {*SHAPES, *COLOURS}


def test_sentence_pairs_positives_name_the_same_objects():
    pairs, labels = ShapesPairs("train", num_samples=300), []
    for i in range(60):
        example = pairs[i]
        labels.append(example["label"])
        if example["label"]:
            assert _named(example["text"]) == _named(example["text_b"]), example
    assert 0.3 < np.mean(labels) < 0.7


def test_fused_question_is_rendered_in_the_band():
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 48, 3), dtype=np.uint8)
    questions = ["colour of the star?", "how many shapes?"]
    top = fuse_question(images, questions, band_height=32, position="top")
    bottom = fuse_question(images, questions, band_height=16, position="bottom")
    assert top.shape == (2, 64, 48, 3) and bottom.shape == (2, 48, 48, 3)
    band = render_text(questions, image_size=(32, 48))
    np.testing.assert_array_equal(top[:, :32], band)
    np.testing.assert_array_equal(top[:, 32:], images)
    np.testing.assert_array_equal(bottom[:, :32], images)
    np.testing.assert_array_equal(bottom[:, 32:], render_text(questions, image_size=(16, 48)))
    assert (band < 127).any(axis=(1, 2, 3)).all()  # ink: the text is really there
    assert not np.array_equal(band[0], band[1])
    pair = render_pair(["a red star"], ["two blue squares"], image_size=64)
    np.testing.assert_array_equal(pair[0, :32], render_text("a red star", image_size=(32, 64)))
    np.testing.assert_array_equal(pair[0, 32:],
                                  render_text("two blue squares", image_size=(32, 64)))
    with pytest.raises(ValueError, match="band_height >= 16"):
        fuse_question(images, questions, band_height=8)


def test_layer_decay_gives_each_layer_its_rate(getkey):
    cfg = dataclasses.replace(TINY_CLIP, vision=dataclasses.replace(TINY_CLIP.vision, depth=3))
    params = {"model": models.CLIP(cfg, key=getkey()),
              "head": ClassifierHead(32, 5, key=getkey())}
    decay, lr = 0.5, 1e-2
    factors = layer_decay_factors(params, decay)
    vision = factors["model"].image
    np.testing.assert_allclose(vision.encoder.layers.mlp.fc1.weight.reshape(-1),
                               [decay**3, decay**2, decay**1])
    assert vision.patch_embedding.projection.weight == decay**4
    assert vision.position_embedding.weight == decay**4
    assert vision.final_norm.weight == 1.0 and vision.projection.weight == 1.0
    assert factors["model"].text.token_embedding == decay**2  # the text tower has depth 1
    assert factors["head"].output.weight == 1.0 and factors["model"].logit_scale == 1.0
    # one Adam step moves every weight by about lr * factor (Adam's first step is ~sign(g))
    optimizer = optax.chain(
        make_optimizer(OptimConfig(lr=lr, warmup_steps=0, schedule="constant",
                                   weight_decay=0.0, clip_norm=None), params, 10),
        scale_by_factors(factors))
    arrays = eqx.filter(params, eqx.is_array)
    grads = jax.tree.map(lambda x: jax.random.normal(getkey(), x.shape), arrays)
    updates, _ = jax.jit(optimizer.update)(grads, optimizer.init(arrays), arrays)
    moved = jnp.abs(updates["model"].image.encoder.layers.attention.query.weight)
    np.testing.assert_allclose(moved.max(axis=(1, 2)) / lr, [decay**3, decay**2, decay],
                               rtol=1e-3)
    np.testing.assert_allclose(jnp.abs(updates["head"].output.weight).max() / lr, 1.0,
                               rtol=1e-3)
    np.testing.assert_allclose(
        jnp.abs(updates["model"].image.patch_embedding.projection.weight).max() / lr,
        decay**4, rtol=1e-3)
    with pytest.raises(ValueError, match="layer decay must be in"):
        layer_decay_factors(params, 1.5)


def test_lit_keeps_the_image_tower_bit_identical(getkey):
    model = models.CLIP(TINY_CLIP, key=getkey())
    params = {"model": model}
    spec = lit_trainable_spec(params)
    trainable, frozen = eqx.partition(params, spec)
    optimizer = make_optimizer(FAST, trainable, 10)
    opt_state = optimizer.init(eqx.filter(trainable, eqx.is_array))
    step = make_step(optimizer, make_lit_loss("softmax", normalize=((0.5,) * 3, (0.5,) * 3)))
    rng = np.random.default_rng(0)
    for _ in range(3):
        batch = {"image": jnp.asarray(rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)),
                 # EOS (id 2) last, as tokenize writes it: EOS pooling reads that position
                 "text": jnp.asarray(rng.integers(4, 300, (8, 12)), jnp.int32).at[:, -1].set(2)}
        trainable, opt_state, metrics = step(trainable, opt_state, frozen, batch)
        assert np.isfinite(float(metrics["loss"]))
    after = eqx.combine(trainable, frozen)["model"]
    for old, new in zip(jax.tree.leaves(model.image), jax.tree.leaves(after.image)):
        np.testing.assert_array_equal(np.asarray(old), np.asarray(new))
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(model.text),
                                                        jax.tree.leaves(after.text))]
    assert all(changed) and float(after.logit_scale) != float(model.logit_scale)
    with pytest.raises(ValueError, match="shares one tower"):
        lit_trainable_spec({"model": models.create("clippo-tiny", key=getkey())})


def test_lit_run_reports_zero_shot_accuracy(tmp_path, getkey):
    from eqvlp.data import captions_corpus
    from eqvlp.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(captions_corpus(200), vocab_size=300)
    cfg = tiny(tmp_path, task="lit", steps=2, label_key="shape", eval_samples=24)
    results = finetune(cfg, model=models.CLIP(TINY_CLIP, key=getkey()), tokenizer=tokenizer,
                       log=quiet, progress=False)
    assert results["mode"] == "lit" and results["accuracy"] == results["zeroshot_top1"]
    assert {"i2t_r1", "t2i_r1"} <= set(results)
    meta = json.loads((tmp_path / "checkpoints" / "step_00000002" / "metadata.json").read_text())
    trained = {leaf["name"].split(".")[2] for leaf in meta["leaves"]
               if leaf["name"].startswith("trainable.")}
    assert trained == {"text", "logit_scale"}  # nothing of the image tower
    with pytest.raises(ValueError, match="needs the tokenizer"):
        finetune(dataclasses.replace(cfg, workdir=str(tmp_path / "other")),
                 model=models.CLIP(TINY_CLIP, key=getkey()), log=quiet, progress=False)
    with pytest.raises(ValueError, match="pass the tokenizer it was trained with"):
        finetune(dataclasses.replace(cfg, task="shapes-vqa", workdir=str(tmp_path / "vqa")),
                 model=models.CLIP(TINY_CLIP, key=getkey()), log=quiet, progress=False)


def test_a_head_learns_a_toy_task_and_the_run_writes_its_outputs(tmp_path):
    cfg = tiny(tmp_path, task="shapes-classify", label_key="colour", mode="linear",
               head_hidden_dim=None, steps=40, batch_size=32, eval_samples=96,
               optim=dataclasses.replace(FAST, lr=3e-2), checkpoint_every=20)
    results = finetune(cfg, log=quiet, progress=False)
    # 8 colours: chance is 0.125 (the commonest colour of the 96 is 0.16); a linear head on
    # a random tiny tower's 16-d embeddings gets about 0.34
    assert results["accuracy"] > 0.28, results
    for name in ("results.json", "metrics.jsonl", "curves.png", "config.json"):
        assert (tmp_path / name).exists(), name
    assert json.loads((tmp_path / "results.json").read_text())["accuracy"] == results["accuracy"]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 41))
    assert rows[-1]["eval"]["accuracy"] == results["accuracy"]
    # the linear probe trained only the head: the checkpoint holds nothing of the model
    meta = json.loads((tmp_path / "checkpoints" / "step_00000040" / "metadata.json").read_text())
    names = [leaf["name"] for leaf in meta["leaves"] if leaf["name"].startswith("trainable")]
    assert names and all(name.startswith("trainable.head") for name in names)


def test_vqa_two_tower_resumes_exactly(tmp_path):
    cfg = tiny(tmp_path, checkpoint_every=2, keep_checkpoints=2)
    whole = finetune(cfg, log=quiet, progress=False)
    assert whole["resumed_from"] == 0 and set(whole) >= {f"accuracy_{k}" for k in VQA_KINDS}
    assert (tmp_path / "tokenizer.json").exists()
    # the step-4 checkpoint is damaged (a chunk lost): the run falls back to step 2, sets
    # step 4 aside and redoes steps 3 and 4 exactly
    chunk = next(p for p in (tmp_path / "checkpoints" / "step_00000004").rglob("*")
                 if p.is_file() and p.parent.name == "c")
    chunk.unlink()
    logs = []
    resumed = finetune(cfg, log=logs.append, progress=False)
    assert resumed["resumed_from"] == 2
    assert any("step 4 is damaged" in line for line in logs)
    assert (tmp_path / "checkpoints" / "step_00000004.damaged").is_dir()
    assert resumed["accuracy"] == whole["accuracy"]
    assert resumed["final_loss"] == whole["final_loss"]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    assert losses[2:4] == losses[4:6]  # steps 3 and 4, before and after the resume


def test_clippo_fused_band_resizes_the_model(tmp_path):
    clippo = models.CLIPPOConfig(vision=models.ViTConfig.tiny(
        image_size=32, patch_size=16, width=32, depth=1, num_heads=2, mlp_dim=64,
        class_token=False, pooling="map", projection_dim=16, projection_bias=True))
    cfg = tiny(tmp_path, model=clippo, steps=2, fused=dataclasses.replace(
        FinetuneConfig().fused, band_height=16), eval_samples=24)
    results = finetune(cfg, log=quiet, progress=False)
    assert 0.0 <= results["accuracy"] <= 1.0 and not (tmp_path / "tokenizer.json").exists()
    meta = json.loads((tmp_path / "checkpoints" / "step_00000002" / "metadata.json").read_text())
    shapes = {leaf["name"]: leaf["shape"] for leaf in meta["leaves"]}
    # (32 + 16) x 32 pixels in 16 px patches: 3 x 2 tokens
    assert shapes["trainable.model.vit.position_embedding.weight"] == [6, 32]


def test_resolution_change_and_sentence_pairs(tmp_path):
    cfg = tiny(tmp_path, task="shapes-pairs", image_size=48, steps=2, eval_samples=24)
    results = finetune(cfg, log=quiet, progress=False)
    assert set(results) >= {"accuracy", "final_loss"} and "accuracy_count" not in results
    meta = json.loads((tmp_path / "checkpoints" / "step_00000002" / "metadata.json").read_text())
    shapes = {leaf["name"]: leaf["shape"] for leaf in meta["leaves"]}
    assert shapes["trainable.model.image.position_embedding.weight"] == [1 + 36, 32]


def test_labelled_shards_are_classified_and_bad_samples_counted(tmp_path):
    shapes = Shapes("train", num_samples=40)
    samples = [{"image": shapes[i]["image"][:32, :32], "label": shapes[i]["shape"]}
               for i in range(40)]
    samples[3] = {"image": b"not an image", "image_ext": "jpg", "label": 1}
    write_shards(samples[:30], tmp_path / "train", samples_per_shard=15)
    write_shards(samples[30:], tmp_path / "val")
    # one step of 29 reads the 30 training samples once: the bad one exactly once
    cfg = tiny(tmp_path / "run", task="shards", data=str(tmp_path / "train" / "*.tar"),
               eval_data=str(tmp_path / "val" / "*.tar"), num_classes=6, steps=1,
               batch_size=29, optim=dataclasses.replace(FAST, warmup_steps=0))
    results = finetune(cfg, log=quiet, progress=False)
    assert results["num_examples"] == 10 and results["data_skipped"] == {"corrupt_image": 1}


def test_finetune_cli_errors_are_clear(tmp_path, capsys):
    def error_of(*argv):
        with pytest.raises(SystemExit) as info:
            main(["finetune", "--no-progress", "--workdir", str(tmp_path), *argv])
        return str(info.value)

    assert "unknown task 'shapes-qa'" in error_of("--task", "shapes-qa")
    assert "--task is required" in error_of()
    assert "did you mean" in error_of("--task", "shapes-vqa", "--set", "optim.lrr=1")
    assert "fusion=concat" in error_of("--task", "shapes-vqa", "--steps", "2",
                                       "--set", "fused.fusion=band")
    assert "num_classes" in error_of("--task", "shards", "--set", "data=x/*.tar",
                                     "--set", "eval_data=y/*.tar")
    assert "layer_decay must be in (0, 1]" in error_of("--task", "shapes-vqa",
                                                       "--set", "layer_decay=1.5")
    assert "eqvlp train run directory" in error_of("--task", "shapes-vqa", "--init",
                                                   str(tmp_path / "missing"))
    main(["finetune", "--help-config"])
    assert "fused.band_height = 48" in capsys.readouterr().out


def test_a_second_run_on_a_locked_directory_stops_before_any_work(tmp_path):
    from eqvlp.train.lock import RunLock, RunLocked

    with RunLock(tmp_path), pytest.raises(RunLocked, match="in use by another run"):
        finetune(tiny(tmp_path), log=quiet, progress=False)
    assert not (tmp_path / "config.json").exists()
