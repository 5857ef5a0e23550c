"""benchmarks/train_step.py: eqvlp's training step against open_clip's same model, on a tiny CLIP.

open_clip is a test-only peer (installed with --no-deps, see .ci/run); the benchmark loads its
model and loss modules without torchvision.
"""

import json
import math

import jax
import numpy as np
import pytest
import torch

from benchmarks import train_step
from eqvlp import models
from eqvlp.models import CLIPConfig, TextConfig, ViTConfig

# OpenAI CLIP's layout (what open_clip builds) at the smallest useful size.
_OPENAI = dict(width=16, depth=1, num_heads=2, mlp_dim=32, activation="quick_gelu",
               layer_norm_eps=1e-5, projection_dim=16)
TINY = CLIPConfig(
    vision=ViTConfig(image_size=16, patch_size=8, pre_norm=True, patch_bias=False, **_OPENAI),
    text=TextConfig(vocab_size=64, context_length=8, pooling="argmax", eos_token_id=63, **_OPENAI),
    loss="softmax",
)


def _parameter_counts(config):
    kwargs, differences = train_step.open_clip_config(config)
    oc = train_step.load_open_clip()
    with torch.device("meta"):  # shapes only: no initialisation
        theirs = oc.model.CLIP(**kwargs)
    ours = jax.eval_shape(lambda: models.CLIP(config, key=jax.random.key(0)))
    ours_count = sum(math.prod(x.shape) for x in jax.tree.leaves(ours) if hasattr(x, "shape"))
    return ours_count, sum(p.numel() for p in theirs.parameters()), differences


@pytest.mark.parametrize("config", [models.presets.config("clip-vit-s16"), TINY],
                         ids=["clip-vit-s16", "tiny"])
def test_open_clip_builds_the_same_model(config):
    ours, theirs, differences = _parameter_counts(config)
    assert differences == []
    assert ours == theirs


def test_open_clip_config_names_what_differs():
    _, differences = train_step.open_clip_config(models.presets.config("clip-tiny"))
    assert any("pre_norm" in d for d in differences)
    assert any("bias" in d for d in differences)


def test_batch_ends_in_the_eos_id():
    config = models.presets.config("clip-tiny")
    images, ids = train_step.make_batch(config, 3)
    assert images.shape == (3, *config.vision.image_shape) and images.dtype == np.float32
    assert ids.shape == (3, config.text.context_length)
    assert (ids[:, -1] == config.text.eos_token_id).all()
    assert (ids[:, :-1] != config.text.eos_token_id).all()


def test_train_step_benchmark_times_both_sides():
    result = train_step.run(TINY, [3], repeats=1, parts_batch=3)
    train_step.print_report(result, "tiny")
    result = json.loads(json.dumps(result))  # plain JSON types only
    assert result["eqvlp_ms_per_step"] > 0 and result["open_clip_ms_per_step"] > 0
    assert [row["batch"] for row in result["batches"]] == [3] and result["batch"] == 3
    parts = {"image_forward", "image_forward_backward", "text_forward", "text_forward_backward",
             "loss_forward_backward", "optimizer_update"}
    assert set(result["breakdown"]) == parts
    assert all(t["eqvlp_ms"] > 0 and t["open_clip_ms"] > 0 for t in result["breakdown"].values())
    for row in result["batches"]:
        # parameters, AdamW's two moments and the batch are live during a step: >= 3x params
        for side in ("eqvlp", "open_clip"):
            assert row[f"{side}_peak_bytes"] >= 3 * 4 * row[f"{side}_parameters"]
        assert row["breakdown"] == result["breakdown"]
    assert result["setup"]["threads"] == result["setup"]["torch_threads"]


def test_block_backward_keeps_only_the_named_activations(capsys):
    """What the profile of issue 13 found: the softmax, LayerNorm and activation intermediates
    made the training step's activations ~3x larger than they need be (peak 6.4 GiB vs
    open_clip's 3.9 GiB for ViT-S/16 at batch 32). A block now keeps its input, q, k, v, the
    attended values, the mid-block residual and the MLP's hidden layer, nothing else."""
    import jax.ad_checkpoint
    import jax.numpy as jnp

    from eqvlp import nn

    seq, dim, hidden = 5, 16, 48
    block = nn.TransformerBlock(dim, 2, hidden, activation="quick_gelu", key=jax.random.key(0))
    x = jnp.ones((3, seq, dim))

    def loss(block, x):
        return jnp.sum(jax.vmap(lambda t: block(t, causal=True))(x))

    capsys.readouterr()
    jax.ad_checkpoint.print_saved_residuals(loss, block, x)  # "f32[3,5,16] named 'residual' ..."
    saved = [line.split(" ", 1) for line in capsys.readouterr().out.splitlines()]
    shapes = [tuple(int(n) for n in aval.split("[")[1].rstrip("]").split(",") if n)
              for aval, _ in saved]
    activations = [(shape, why) for shape, (_, why) in zip(shapes, saved) if len(shape) >= 3]
    named = sorted(why.split("'")[1] for _, why in activations if why.startswith("named"))
    assert named == sorted(["attention_qkv"] * 3 + ["attention_out", "residual", "mlp_hidden"])
    assert len(activations) == len(named) + 1  # + the block's input
    assert sum(math.prod(shape) for shape, _ in activations) == 3 * seq * (6 * dim + hidden)
