"""Bad inputs get clear errors, never silently wrong results (issue 17, items 6-8, 10, 11, 14).

Every case asserts on the message, so a regression to a raw traceback (`'list' object has no
attribute 'ndim'`, a bare `AssertionError`, NaN embeddings) fails here. Most cases run eagerly
on one tiny model built once; the run-time (under `jit`) checks share one compiled function.
The suite's jaxtyping hook would reject some of these inputs first with its own message, so
those cases run inside `unchecked()`: what a user sees is eqvlp's message.
"""

import dataclasses
import re
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from eqvlp import losses, models
from eqvlp.config_checks import check_fields
from eqvlp.data import DataConfig
from eqvlp.nn import as_pair, patch_grid, pool
from eqvlp.render import RenderConfig, render_text
from eqvlp.render.unifont import build_table, parse_hex
from eqvlp.testing import unchecked
from eqvlp.train.config import (
    ClipaConfig,
    EvalConfig,
    LossConfig,
    MeshConfig,
    TrainConfig,
)
from eqvlp.train.optim import OptimConfig

VOCAB, LENGTH = 50, 8


def tiny_config() -> models.CLIPConfig:
    return models.CLIPConfig(
        vision=models.ViTConfig.tiny(image_size=16, patch_size=8, width=16, depth=1,
                                     num_heads=2, mlp_dim=32, projection_dim=16),
        text=models.TextConfig.tiny(vocab_size=VOCAB, context_length=LENGTH, width=16, depth=1,
                                    num_heads=2, mlp_dim=32, projection_dim=16),
    )


@pytest.fixture(scope="module")
def model() -> models.CLIP:
    # built under jit: one compilation instead of dozens of eager initialiser ops
    return eqx.filter_jit(lambda key: models.CLIP(tiny_config(), key=key))(jax.random.key(0))


@pytest.fixture(scope="module")
def encode_text_jit():
    return jax.jit(lambda m, ids: m.encode_text(ids))


def good_ids(batch: int = 2) -> jax.Array:
    return jnp.full((batch, LENGTH), 5, jnp.int32).at[:, 3].set(2)  # EOS id 2 at position 3


def runtime_message(error: BaseException) -> str:
    return str(error)


# --- item 6: token ids outside the vocabulary -------------------------------------------------


@pytest.mark.parametrize("bad", [VOCAB, 10 * VOCAB, -1])
def test_token_ids_outside_the_vocabulary_raise_eagerly(model, bad):
    with pytest.raises(ValueError, match=rf"token id {bad} is outside the vocabulary: every id "
                                         rf"must be in \[0, {VOCAB}\)"):
        model.encode_text(good_ids().at[1, 5].set(bad))


def test_token_ids_outside_the_vocabulary_raise_under_jit(model, encode_text_jit):
    np.testing.assert_array_equal(np.isfinite(encode_text_jit(model, good_ids())), True)
    for bad in (VOCAB, -1):
        with pytest.raises(Exception, match=r"a token id is outside the vocabulary: every id "
                                            rf"must be in \[0, {VOCAB}\)"):
            jax.block_until_ready(encode_text_jit(model, good_ids().at[0, 6].set(bad)))


def test_token_ids_are_checked_under_grad(model):
    """`grad` alone (no value) still checks: the error gates the embeddings' cotangent."""
    grad = jax.jit(jax.grad(lambda m, ids: jnp.sum(m.encode_text(ids))))
    with pytest.raises(Exception, match="a token id is outside the vocabulary"):
        jax.block_until_ready(grad(model, good_ids().at[0, 6].set(VOCAB)))


def test_text_tower_alone_checks_ids(model):
    with pytest.raises(ValueError, match="text tower: token id -3 is outside the vocabulary"):
        model.text(jnp.array([1, -3, 2], jnp.int32))


def test_one_tower_checks_ids():
    cfg = models.OneTowerConfig(
        vision=models.ViTConfig.tiny(image_size=16, patch_size=8, width=16, depth=1, num_heads=2,
                                     mlp_dim=32, class_token=False, pooling="gap",
                                     projection_dim=16),
        vocab_size=VOCAB, context_length=LENGTH,
    )
    # abstract parameters suffice: concrete ids are checked before any computation
    model = eqx.filter_eval_shape(models.OneTowerCLIP, cfg, key=jax.random.key(1))
    with pytest.raises(ValueError, match=f"token id {VOCAB} is outside the vocabulary"):
        model.encode_text(good_ids().at[0, 0].set(VOCAB))


# --- item 7: config typos and out-of-range values ---------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: models.ViTConfig.tiny(position_embedding="Learned"),
         r"unknown position_embedding 'Learned' for ViTConfig.position_embedding \(did you mean "
         r"'learned'\?\): use 'learned' or 'sincos'"),
        (lambda: models.ViTConfig.tiny(stem="Conv"), r"did you mean 'conv'"),
        (lambda: models.ViTConfig.tiny(pooling="mean"), r"ViTConfig.pooling.*'cls', 'gap' or 'map'"),
        (lambda: models.TextConfig.tiny(pooling="EOS"), r"TextConfig.pooling \(did you mean 'eos'"),
        (lambda: models.CLIPConfig(dtype="bf16"), r"CLIPConfig.dtype \(did you mean 'bfloat16'"),
        (lambda: models.CLIPConfig(loss="siglip"), r"CLIPConfig.loss.*'softmax' or 'sigmoid'"),
        (lambda: RenderConfig(wrap="words"), r"RenderConfig.wrap \(did you mean 'word'"),
        (lambda: OptimConfig(schedule="cos"), r"OptimConfig.schedule.*'cosine'"),
        (lambda: LossConfig(name="clip"), r"LossConfig.name.*'softmax'"),
        (lambda: LossConfig(name="rocket", ssl="simclr"), r"LossConfig.ssl.*'siamlip'.* or None"),
        (lambda: EvalConfig(zeroshot_task="color"), r"EvalConfig.zeroshot_task \(did you mean 'colour'"),
        (lambda: MeshConfig(rules="FSDP"), r"MeshConfig.rules \(did you mean 'fsdp'"),
        (lambda: ClipaConfig(image_mask="grids"), r"ClipaConfig.image_mask \(did you mean 'grid'"),
        (lambda: TrainConfig(precision="fp32"), r"TrainConfig.precision"),
        (lambda: TrainConfig(remat="all"), r"TrainConfig.remat.*'full'"),
        (lambda: DataConfig(text="token"), r"DataConfig.text \(did you mean 'tokens'"),
        # out of range
        (lambda: models.CLIPConfig(max_logit_scale=0.0), r"max_logit_scale=0.0: the clamp"),
        (lambda: models.CLIPConfig(max_logit_scale=-100.0), r"must be a positive number"),
        (lambda: models.ViTConfig.tiny(patch_size=0), r"patch_size must be >= 1"),
        (lambda: models.ViTConfig.tiny(width=0), r"ViTConfig.width must be an int >= 1, got 0"),
        (lambda: models.TextConfig.tiny(vocab_size=2), r"eos_token_id=2 is not an id of the 2-token"),
    ],
)
def test_config_errors_name_the_valid_values(make, match):
    with unchecked(), pytest.raises(ValueError, match=match):
        make()


def test_every_literal_field_of_every_config_is_checked():
    """The generic check covers any dataclass with a Literal field, optional ones included."""
    from typing import Literal

    @dataclasses.dataclass(frozen=True)
    class Example:
        kind: Literal["a", "b"] = "a"
        maybe: Literal["x"] | None = None
        size: int = 1

        def __post_init__(self):
            check_fields(self)

    assert Example(maybe=None).maybe is None and Example(maybe="x").maybe == "x"
    with pytest.raises(ValueError, match=r"unknown maybe 'y' for Example.maybe: use 'x' or None"):
        Example(maybe="y")
    with pytest.raises(ValueError, match=r"unknown kind True"):
        Example(kind=True)
    assert type(Example(size=np.int64(3)).size) is int


def test_unknown_create_overrides_name_the_valid_fields():
    with pytest.raises(TypeError, match=r"create\('clip-tiny'\): CLIPConfig has no field 'dtyp' "
                                        r"\(did you mean 'dtype'\?\): the fields are loss, .*text"):
        models.create("clip-tiny", key=jax.random.key(0), dtyp="bfloat16")


def test_ema_tau_out_of_range():
    tree = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match=r"ema_update: tau must be in \[0, 1\].*got 1.5"):
        losses.ema_update(tree, tree, 1.5)
    with pytest.raises(Exception, match=r"ema_update: tau must be in \[0, 1\]"):
        jax.block_until_ready(jax.jit(losses.ema_update)(tree, tree, -0.1))


def test_grid_window_zero():
    from eqvlp.masking import ImageMask

    with pytest.raises(ValueError, match=r"must be >= 1"):
        ImageMask(kind="grid", window=0).indices(jax.random.key(0), (4, 4))


# --- item 8: EOS pooling without an EOS matches transformers ----------------------------------


def test_eos_pooling_without_an_eos_takes_position_0_like_transformers():
    x = jnp.arange(12.0).reshape(4, 3)
    np.testing.assert_array_equal(pool(x, "eos", token_ids=jnp.array([5, 9, 7, 0]), eos_token_id=3),
                                  x[0])


def test_imported_clip_matches_transformers_on_ids_without_an_eos():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from eqvlp.convert import from_transformers

    rng = np.random.default_rng(0)
    ids = rng.integers(4, 60, size=(3, 10))
    ids[0, 4] = 3  # one row with its EOS, two without
    tower = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    for eos in (3, 2):  # the EOS rule, and transformers' legacy argmax rule for id 2
        torch.manual_seed(0)
        hf = transformers.CLIPModel(transformers.CLIPConfig(
            text_config=dict(vocab_size=60, max_position_embeddings=10, eos_token_id=eos,
                             bos_token_id=1, pad_token_id=0, **tower),
            vision_config=dict(image_size=16, patch_size=8, **tower), projection_dim=8)).eval()
        with torch.no_grad():
            theirs = hf.get_text_features(input_ids=torch.from_numpy(ids))
        theirs = getattr(theirs, "pooler_output", theirs).numpy()
        ours = np.asarray(from_transformers(hf).encode_text(jnp.asarray(ids, jnp.int32)))
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


# --- item 10: fonts ---------------------------------------------------------------------------


def test_empty_font_file_is_an_error(tmp_path):
    for data in (b"", b"\n\n"):
        with pytest.raises(ValueError, match=r"empty.hex holds no glyphs .*render blank"):
            parse_hex(data, "empty.hex")
    path = tmp_path / "empty.hex"
    path.write_bytes(b"")
    from eqvlp.render import load_unifont

    with pytest.raises(ValueError, match="holds no glyphs"):
        load_unifont(path)


def test_negative_code_points_are_errors():
    glyph = b"F" * 32
    with pytest.raises(ValueError, match=r"line 2 has the negative code point -42"):
        parse_hex(b"0041:" + glyph + b"\n-42:" + glyph + b"\n", "bad.hex")
    table = build_table([parse_hex(b"0041:" + glyph + b"\n")], ("x",))
    assert table.bitmap("A")[:, :8].all()  # an 8-wide glyph, all ink
    for bad in (-1, 0x110000):
        with pytest.raises(ValueError, match=rf"code point {bad} is not a Unicode code point"):
            table.bitmap(bad)
    with pytest.raises(ValueError, match=r"code point -191 is not a Unicode code point"):
        table.glyph_ids(np.array([65, -191]))


# --- item 11: loss outputs, and the one-pair softmax loss -------------------------------------


def unit_rows(batch: int = 4, dim: int = 8, seed: int = 0) -> jax.Array:
    return losses.normalize(jax.random.normal(jax.random.key(seed), (batch, dim)))


@pytest.mark.parametrize("loss", ["sigmoid", "chunked"])
def test_overflowing_logits_are_named(loss):
    # nearly parallel rows: every negative's logit is ~1e38, and their sum overflows float32
    z = losses.normalize(1.0 + 0.01 * jax.random.normal(jax.random.key(0), (8, 4)))
    fn = jax.jit({"sigmoid": losses.sigmoid_loss,
                  "chunked": lambda *a: losses.chunked_sigmoid_loss(*a, chunk_size=2)}[loss])
    with pytest.raises(Exception, match=r"the result is NaN or inf although every input is "
                                        r"finite: the logits overflow float32: check scale"):
        jax.block_until_ready(fn(z, z, 1e38, 0.0))


def test_small_sinkhorn_epsilon_is_named():
    z = unit_rows()
    sinkhorn = jax.jit(lambda s: losses.sinkhorn(s, epsilon=1e-4))
    swalip = jax.jit(lambda a, b: losses.swalip_loss(a, b, 10.0, epsilon=1e-4))
    for fn, name in ((lambda: sinkhorn(z), "sinkhorn"), (lambda: swalip(z, z[::-1]), "swalip_loss")):
        with pytest.raises(Exception, match=rf"{name}: the result is NaN or inf although every "
                                            r"input is finite: Sinkhorn's epsilon=0.0001 is too"):
            jax.block_until_ready(fn())


def test_negative_scale_is_an_error():
    z = unit_rows()
    with pytest.raises(ValueError, match=r"clip_loss: scale must be >= 0 .*got -14.0"):
        losses.clip_loss(z, z, -14.0)
    with pytest.raises(Exception, match=r"sigmoid_loss: scale must be >= 0"):
        jax.block_until_ready(jax.jit(losses.sigmoid_loss)(z, z, -10.0, -10.0))


def test_softmax_loss_of_one_pair_warns():
    z = unit_rows(batch=1)
    loss = jax.jit(losses.clip_loss)  # the warning comes at trace time, once per batch size
    with pytest.warns(UserWarning, match=r"clip_loss: the batch holds a single pair, so the "
                                         r"softmax loss is identically 0"):
        assert float(loss(z, z, 10.0)) == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jax.eval_shape(losses.clip_loss, unit_rows(batch=2), unit_rows(batch=2, seed=1), 10.0)


# --- item 14: raw errors replaced by clear ones -----------------------------------------------


def test_python_lists_as_inputs(model):
    with unchecked():
        with pytest.raises(TypeError, match=r"encode_text expects token ids as an integer array "
                                            r"of shape \(batch, length\), got a list: wrap it"):
            model.encode_text(good_ids().tolist())
        with pytest.raises(TypeError, match=r"encode_image expects images as a float array "
                                            r"\(batch, 16, 16, 3\), got a list"):
            model.encode_image(np.zeros((2, 16, 16, 3)).tolist())


def test_empty_token_sequences(model):
    with unchecked(), pytest.raises(ValueError, match=r"token sequences are empty, shape \(2, 0\)"):
        model.encode_text(jnp.zeros((2, 0), jnp.int32))


@pytest.fixture(scope="module")
def mesh():
    return jax.make_mesh((4,), ("data",), axis_types=(AxisType.Auto,), devices=jax.devices()[:4])


@pytest.mark.parametrize("name", ["distributed_sigmoid_loss", "distributed_clip_loss",
                                  "siamlip_loss", "barlip_loss"])
def test_unknown_axis_name_in_distributed_losses(mesh, name):
    z = unit_rows(batch=8)
    calls = {
        "distributed_sigmoid_loss": lambda a, b: losses.distributed_sigmoid_loss(
            a, b, 10.0, -10.0, axis_name="batch"),
        "distributed_clip_loss": lambda a, b: losses.distributed_clip_loss(a, b, 10.0, axis_name="batch"),
        "siamlip_loss": lambda a, b: losses.siamlip_loss(a, b, a, b, axis_name="batch"),
        "barlip_loss": lambda a, b: losses.barlip_loss(a, b, axis_name="batch"),
    }
    mapped = jax.shard_map(calls[name], mesh=mesh, in_specs=(jax.P("data"), jax.P("data")),
                           out_specs=jax.P())
    with pytest.raises(ValueError, match=rf"{name}: axis_name 'batch' is not an axis of the "
                                         r"enclosing shard_map \(its axes: 'data'\)"):
        mapped(z, z)


def test_distributed_loss_outside_shard_map():
    z = unit_rows(batch=8)
    with pytest.raises(ValueError, match=re.escape(
            "distributed_sigmoid_loss(axis_name='data') must run inside jax.shard_map") +
            r".*shard_loss\(distributed_sigmoid_loss, mesh\)"):
        losses.distributed_sigmoid_loss(z, z, 10.0, -10.0, axis_name="data")
    with pytest.raises(ValueError, match=r"distributed_clip_loss\(axis_name='data'\) must run"):
        jax.jit(lambda a, b: losses.distributed_clip_loss(a, b, 10.0, axis_name="data"))(z, z)


def test_numpy_integers_are_sizes():
    # The suite's jaxtyping hook wants Python ints where the signatures say `int`; users'
    # NumPy integers (sizes computed with NumPy) reach eqvlp's own handling in production.
    with unchecked():
        cfg = models.ViTConfig.tiny(image_size=np.int64(16), patch_size=np.int32(8),
                                    width=np.int64(16))
        assert (cfg.image_size, cfg.patch_size, cfg.width) == (16, 8, 16)
        assert type(cfg.width) is int and cfg.grid == (2, 2)
        assert as_pair((np.int64(4), np.int64(2))) == (4, 2)
        assert patch_grid(np.int64(16), 8) == (2, 2)
        assert render_text("a", image_size=np.int64(32)).shape == (32, 32, 3)
        z = unit_rows()
        assert np.isfinite(losses.chunked_sigmoid_loss(z, z, 10.0, -10.0, chunk_size=np.int64(2)))
        with pytest.raises(ValueError, match=r"image_size must be >= 1 on both sides, got \(0, 16\)"):
            patch_grid((0, 16), 8)


def test_mask_configs_name_the_valid_values():
    """`__post_init__` validates (the test suite's jaxtyping hook would catch a bad Literal at
    `__init__` before it, so the instances are altered after a valid construction)."""
    from eqvlp.masking import ImageMask, TextMask

    def rejected(config, **changes):
        for name, value in changes.items():
            object.__setattr__(config, name, value)
        with pytest.raises(ValueError) as error:
            config.__post_init__()
        return str(error.value)

    assert "did you mean 'grid'" in rejected(ImageMask(), kind="Grid")
    assert "grid mask window must be >= 1" in rejected(ImageMask(kind="grid"), window=0)
    assert "did you mean 'truncate'" in rejected(TextMask(eos_token_id=2), kind="trunc")
