"""A custom two-tower model built from eqvlp.nn gets everything the presets get (issue 16).

The model (a register-token ViT, a bidirectional mean-pooled text tower) follows
`eqvlp.models.protocol` and uses field names no preset rule knew. Tiny on purpose: width 16,
one block, 16 px images, 8 simulated devices.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Float, Int

from eqvlp import masking, models, nn, sharding, train
from eqvlp.losses import clip_loss, normalize, sigmoid_loss
from eqvlp.train import contrastive_loss, make_train_step, sharded_train_step

WIDTH, VOCAB, LENGTH, SIZE, PATCH, REGISTERS = 16, 64, 8, 16, 8, 2


class RegisterViT(eqx.Module):
    patches: nn.PatchEmbedding
    registers: Float[Array, "registers dim"]
    positions: nn.LearnedPositionEmbedding
    encoder: nn.Encoder
    norm: nn.LayerNorm
    post_norm_proj: nn.Linear  # a Linear the old `norm\w*` regex took for a LayerNorm

    def __init__(self, key):
        keys = jax.random.split(key, 4)
        grid = nn.patch_grid(SIZE, PATCH)
        self.patches = nn.PatchEmbedding(PATCH, WIDTH, key=keys[0])
        self.registers = 0.02 * jax.random.normal(keys[1], (REGISTERS, WIDTH))
        self.positions = nn.LearnedPositionEmbedding(REGISTERS + grid[0] * grid[1], WIDTH,
                                                     grid=grid, num_prefix=REGISTERS, key=keys[2])
        self.encoder = nn.Encoder(1, WIDTH, 2, 2 * WIDTH, key=keys[3])
        self.norm = nn.LayerNorm(WIDTH)
        self.post_norm_proj = nn.Linear(WIDTH, WIDTH, key=keys[0])

    def embed(self, image: Float[Array, "h w 3"]) -> Float[Array, "tokens dim"]:
        return self.positions(jnp.concatenate([self.registers, self.patches(image)]))

    def encode_tokens(self, x: Float[Array, "tokens dim"]) -> Float[Array, " dim"]:
        return self.post_norm_proj(self.norm(self.encoder(x))[REGISTERS:].mean(0))

    def __call__(self, image: Float[Array, "h w 3"]) -> Float[Array, " dim"]:
        return self.encode_tokens(self.embed(image))


class MeanText(eqx.Module):
    tokens: Float[Array, "vocab dim"]
    positions: nn.LearnedPositionEmbedding
    encoder: nn.Encoder
    projection: nn.Linear

    def __init__(self, key):
        keys = jax.random.split(key, 4)
        self.tokens = 0.02 * jax.random.normal(keys[0], (VOCAB, WIDTH))
        self.positions = nn.LearnedPositionEmbedding(LENGTH, WIDTH, key=keys[1])
        self.encoder = nn.Encoder(1, WIDTH, 2, 2 * WIDTH, key=keys[2])
        self.projection = nn.Linear(WIDTH, WIDTH, key=keys[3])

    def __call__(self, ids: Int[Array, " length"]) -> Float[Array, " dim"]:
        mask = ids != 0
        x = self.encoder(self.positions(self.tokens[ids]), mask=mask, causal=False)
        return self.projection(nn.pool(x, "mean", mask=mask))


class TwoTower(eqx.Module):
    image: RegisterViT
    text: MeanText
    log_scale: Float[Array, ""]
    logit_bias: Float[Array, ""]
    eos_token_id: int = eqx.field(static=True)

    def __init__(self, key):
        ki, kt = jax.random.split(key)
        self.image, self.text = RegisterViT(ki), MeanText(kt)
        self.log_scale, self.logit_bias = jnp.log(10.0), jnp.asarray(-10.0)
        self.eos_token_id = 2

    def encode_image(self, images, *, mask=None, key=None):
        if mask is None:
            return jax.vmap(self.image)(images)
        pe = self.image.positions
        return models.encode_masked(self.image, images, mask=mask, key=key, grid=pe.grid,
                                    num_prefix=pe.num_prefix)

    def encode_text(self, ids):
        return jax.vmap(self.text)(ids)

    def scale(self):
        return jnp.exp(self.log_scale)

    def bias(self):
        return self.logit_bias


def materialise(abstract, seed: int = 0):
    """Arrays for an abstract model from NumPy: no XLA compilation (the tests need values, not
    eqvlp's initialisation)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape), s.dtype),
                        abstract)


@pytest.fixture(scope="module")
def model():
    return materialise(eqx.filter_eval_shape(TwoTower, jax.random.key(0)))


class Minimal(eqx.Module):
    """The least a model needs for the default train step: encoders and a scale (no bias:
    softmax loss)."""

    image: nn.Linear
    tokens: Float[Array, "vocab dim"]
    log_scale: Float[Array, ""]

    def __init__(self, key):
        ki, kt = jax.random.split(key)
        self.image = nn.Linear(SIZE * SIZE * 3, WIDTH, key=ki)
        self.tokens = jax.random.normal(kt, (VOCAB, WIDTH))
        self.log_scale = jnp.zeros(())

    def encode_image(self, images):
        return jax.vmap(self.image)(images.reshape(len(images), -1))

    def encode_text(self, ids):
        return self.tokens[ids].mean(1)

    def scale(self):
        return jnp.exp(self.log_scale)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(1)
    ids = rng.integers(3, VOCAB, (8, LENGTH))
    ids[:, 5], ids[:, 6:] = 2, 0  # EOS, then padding
    images = rng.standard_normal((8, SIZE, SIZE, 3))
    return jnp.asarray(images, jnp.float32), jnp.asarray(ids, jnp.int32)


# ------------------------------------------------------------------------- 1. donation


def test_train_step_never_deletes_the_callers_arrays(batch):
    """Issue: with donation on, shard() aliased replicated leaves and one step deleted them."""
    model = Minimal(jax.random.key(7))
    assert models.loss_kind(model) == "softmax"
    optimizer = optax.sgd(0.1)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
    mesh = sharding.make_mesh(fsdp=8)
    step = sharded_train_step(make_train_step(optimizer), model, opt_state, "fsdp", mesh)
    images, ids = batch
    with jax.set_mesh(mesh):
        placed = sharding.shard(model, "fsdp", mesh)
        placed_state = sharding.shard(opt_state, "fsdp", mesh)
        new, new_state, loss = step(placed, placed_state, images, ids)  # donates `placed`
        assert all(leaf.is_deleted() for leaf in jax.tree.leaves(placed))  # donation is on
        # the caller's own arrays, passed straight in: copied, never donated
        again, _, _ = step(model, opt_state, images, ids)
        new, new_state, loss2 = step(new, new_state, images, ids)
        with pytest.raises(ValueError, match="does not split over the 8 data-parallel"):
            step(new, new_state, images[:6], ids[:6])
    for leaf in jax.tree.leaves((model, opt_state)):
        np.asarray(leaf)  # raises "Array has been deleted" if the step took it
    assert np.isfinite(float(loss)) and float(loss2) < float(loss)
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(step(model, opt_state, images, ids)[0])):
        np.testing.assert_allclose(a, b, rtol=1e-6)


# ---------------------------------------------------------------------- 2. sharding rules


def test_rules_match_what_a_parameter_is(model):
    roles = sharding.role_of(model)
    assert roles.image.positions.weight == "position"
    assert roles.image.registers == "table" and roles.text.tokens == "table"
    assert roles.image.post_norm_proj.weight == "linear" and roles.image.norm.weight == "norm"
    assert roles.image.patches.projection.weight == "patch"
    assert roles.text.encoder.layers.attention.output.weight == "attention_out"
    assert roles.text.encoder.layers.mlp.fc1.bias == "mlp_in_bias"
    assert roles.log_scale == "scalar"

    mesh = sharding.make_mesh(fsdp=8)
    specs = sharding.param_specs(model, sharding.rules("fsdp"), mesh)
    assert specs.image.positions.weight == P(None, "fsdp")  # was silently replicated
    assert specs.image.post_norm_proj.weight == P("fsdp", None)  # was replicated as a "norm"
    assert specs.image.registers == P(None, "fsdp") and specs.text.tokens == P("fsdp", None)
    sharding.check_fsdp(model, sharding.rules("fsdp"), mesh)
    # path-regex tables still work, and check_fsdp now flags small matrices they miss
    old_style = ((r"norm\w*\.(weight|bias)$", P()), (r"\.weight$", P("fsdp", None)),
                 (r".*", P()))
    with pytest.raises(ValueError, match="registers"):
        sharding.check_fsdp(model, old_style, mesh)
    # a regex placed first overrides the roles
    override = ((r"positions\.weight$", P()), *sharding.rules("fsdp"))
    assert sharding.param_specs(model, override, mesh).image.positions.weight == P(None, None)


def test_preset_tables_shard_presets_as_before():
    mesh = sharding.make_mesh(fsdp=4, tensor=2)
    abstract = jax.eval_shape(lambda: models.create("siglip-tiny", key=jax.random.key(0)))
    specs = sharding.param_specs(abstract, sharding.rules("fsdp_tp"), mesh)
    layers = specs.image.encoder.layers
    assert layers.attention.query.weight == P(None, "fsdp", "tensor")
    assert layers.attention.query.bias == P(None, "tensor")
    assert layers.attention.output.weight == P(None, "tensor", "fsdp")
    assert layers.mlp.fc2.weight == P(None, "tensor", "fsdp")
    assert specs.image.head.probe == P(None, ("fsdp", "tensor"))
    assert specs.text.token_embedding == P("fsdp", "tensor")


def test_non_array_leaves_are_left_alone():
    class WithFunction(eqx.Module):
        weight: Float[Array, "a b"]
        act: object
        label: str

    tree = WithFunction(jnp.ones((8, 4)), jax.nn.gelu, "hello")
    mesh = sharding.make_mesh(fsdp=8)
    specs = sharding.param_specs(tree, "fsdp", mesh)
    assert specs.weight == P("fsdp", None) and specs.act is None and specs.label is None
    placed = sharding.shard(tree, "fsdp", mesh)
    assert placed.act is jax.nn.gelu and placed.label == "hello"
    assert "weight" in sharding.report(tree, "fsdp", mesh)


def test_sharding_errors_name_the_problem():
    mesh = sharding.make_mesh(fsdp=8)
    tree = {"w": jnp.ones((8, 8))}
    with pytest.raises(ValueError, match="mesh axis 'model'.*data, fsdp, tensor"):
        sharding.param_specs(tree, ((r".*", P("model")),), mesh)
    with pytest.raises(TypeError, match="dict.*tuple\\(table.items\\(\\)\\)"):
        sharding.param_specs(tree, {r".*": P()}, mesh)
    with pytest.raises(TypeError, match="bad sharding rule"):
        sharding.param_specs(tree, ((r".*", "fsdp"),), mesh)
    with pytest.raises(ValueError, match="unknown parameter role"):
        sharding.Role("weights")
    with pytest.raises(ValueError, match="batch of 6 examples.*8 data-parallel.*multiple of 8"):
        sharding.check_batch(jnp.ones((6, 3)), mesh, "images")


# --------------------------------------------------------------- 3-4. resize and positions


def test_resize_and_enter_phase_find_the_position_blocks(model):
    bigger = models.resize(model, image_size=32)  # was AttributeError: no attribute 'config'
    assert bigger.image.positions.weight.shape == (REGISTERS + 16, WIDTH)
    assert bigger.image.positions.grid == (4, 4)
    np.testing.assert_array_equal(bigger.image.positions.weight[:REGISTERS],
                                  model.image.positions.weight[:REGISTERS])
    assert bigger.text.positions.weight.shape == (LENGTH, WIDTH)  # text untouched

    phase = masking.Phase(0, 32, masking.ImageMask("random", keep_ratio=0.5))
    entered = masking.enter_phase(model, phase)
    assert entered.image.positions.grid == (4, 4)
    assert masking.enter_phase(entered, phase) is entered  # already there: no-op
    z = entered.encode_image(jnp.zeros((2, 32, 32, 3)), mask=phase.image_mask,
                             key=jax.random.key(3))
    assert z.shape == (2, WIDTH)

    shorter = models.resize(model, context_length=4, text_method="slice")
    np.testing.assert_array_equal(shorter.text.positions.weight, model.text.positions.weight[:4])
    longer = models.resize(model, context_length=12)
    assert longer.text.positions.weight.shape == (12, WIDTH)
    assert jax.eval_shape(longer.encode_text, jnp.ones((2, 12), jnp.int32)).shape == (2, WIDTH)

    with pytest.raises(ValueError, match="no image position embedding"):
        models.resize(model.text, image_size=32)
    with pytest.raises(ValueError, match="patch_size="):
        models.resize(eqx.tree_at(lambda m: m.image.patches, model, None), image_size=32)


def test_text_position_table_slices_like_the_text_tower():
    table = nn.LearnedPositionEmbedding(LENGTH, WIDTH, key=jax.random.key(4))
    x = jnp.ones((5, WIDTH))
    # was: "sequence has 5 tokens but the position table has 8: resample_grid ..."
    np.testing.assert_array_equal(table(x), x + table.weight[:5])
    config = models.TextConfig.tiny(width=16, num_heads=2, mlp_dim=32, depth=1)
    tower = materialise(eqx.filter_eval_shape(models.TextTransformer, config,
                                              key=jax.random.key(5)))
    ids = jnp.array([1, 7, 9, 2, 0])
    expected = tower.token_embedding[ids] + tower.position_embedding(jnp.zeros((5, 16)))
    np.testing.assert_allclose(tower.embed(ids), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="truncate the ids to 8.*context_length=9") as error:
        table(jnp.ones((9, WIDTH)))
    assert "resample_grid" not in str(error.value)
    image_table = nn.LearnedPositionEmbedding(1 + 4, WIDTH, grid=2, num_prefix=1,
                                              key=jax.random.key(6))
    with pytest.raises(ValueError, match="2x2 grid.*image_size"):
        image_table(jnp.ones((4, WIDTH)))


# ------------------------------------------------------------------------------ 5. hooks


def test_default_loss_follows_the_protocol(model, batch):
    images, ids = batch
    assert models.loss_kind(model) == "sigmoid"  # it has a bias()

    @eqx.filter_jit
    def both(model):
        zimg, ztxt = normalize(model.encode_image(images)), normalize(model.encode_text(ids))
        expected = sigmoid_loss(zimg, ztxt, model.scale(), model.bias())
        return contrastive_loss(model, images, ids), expected

    np.testing.assert_allclose(*both(model), rtol=1e-6)
    with pytest.raises(TypeError, match="lacks encode_image, encode_text, scale"):
        contrastive_loss(model.image, images, ids)
    assert models.text_token_ids(model) == (2, 0)
    assert isinstance(model, models.ContrastiveProtocol)
    # the trainer's objectives too: a model without bias() trains with bias 0
    minimal, z = Minimal(jax.random.key(8)), jax.random.normal(jax.random.key(9), (2, 4, WIDTH))
    objective = train.make_objective("auto", model_loss=models.loss_kind(minimal))
    np.testing.assert_allclose(objective(minimal, z[0], z[1]),
                               clip_loss(normalize(z[0]), normalize(z[1]), minimal.scale()),
                               rtol=1e-6)


def test_attention_impl_switches_on_a_trained_model(model, batch):
    images, _ = batch
    pallas = nn.with_attention_impl(model, "pallas:interpret,block_q=16,block_k=16")
    assert pallas.image.encoder.layers.attention.impl == "pallas:interpret,block_q=16,block_k=16"
    assert pallas.image.positions.weight is model.image.positions.weight  # same parameters
    np.testing.assert_allclose(pallas.encode_image(images[:2]), model.encode_image(images[:2]),
                               rtol=1e-4, atol=1e-5)
    assert nn.AttentionImpl.parse("pallas:interpret") == nn.AttentionImpl("pallas", True)
    with pytest.raises(ValueError, match="unknown attention option"):
        nn.with_attention_impl(model, "pallas:fast")
    with pytest.raises(ValueError, match="power of two"):
        nn.AttentionImpl.parse("pallas:block_q=24")
    with pytest.raises(ValueError, match="options of the Pallas kernel"):
        nn.AttentionImpl("xla", interpret=True)


def test_train_checkpoint_is_importable_as_an_attribute():
    assert callable(train.checkpoint.save) and callable(train.checkpoint.restore)
