"""Building blocks: shapes, references, errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqvlp import nn


def naive_attention(q, k, v, mask=None, causal=False):
    logits = jnp.einsum("qhd,khd->hqk", q, k) / np.sqrt(q.shape[-1])
    allowed = jnp.ones(logits.shape[1:], bool)
    if mask is not None:
        allowed = allowed & mask[None, :]
    if causal:
        allowed = allowed & jnp.tril(jnp.ones_like(allowed))
    logits = jnp.where(allowed[None], logits, -jnp.inf)
    return jnp.einsum("hqk,khd->qhd", jax.nn.softmax(logits, axis=-1), v)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("use_mask", [False, True])
def test_attention_matches_naive_reference(getkey, causal, use_mask):
    q, k, v = (jax.random.normal(getkey(), (6, 2, 8)) for _ in range(3))
    mask = jnp.array([True, True, True, True, False, False]) if use_mask else None
    out = nn.dot_product_attention(q, k, v, mask=mask, causal=causal)
    np.testing.assert_allclose(out, naive_attention(q, k, v, mask, causal), atol=1e-5)


def test_padding_mask_ignores_padded_keys(getkey):
    attention = nn.MultiheadAttention(16, 4, key=getkey())
    x = jax.random.normal(getkey(), (5, 16))
    mask = jnp.array([True, True, True, False, False])
    garbage = x.at[3:].set(100.0)
    np.testing.assert_allclose(
        attention(x, mask=mask)[:3], attention(garbage, mask=mask)[:3], atol=1e-5
    )


def test_attention_rejects_indivisible_heads(getkey):
    with pytest.raises(ValueError, match="not divisible by num_heads=3"):
        nn.MultiheadAttention(16, 3, key=getkey())


def test_patch_embedding_non_square(getkey):
    embed = nn.PatchEmbedding((4, 8), 32, key=getkey())
    image = jax.random.normal(getkey(), (16, 24, 3))
    tokens = embed(image)
    assert tokens.shape == (4 * 3, 32)
    # patch (row 1, column 2) is pixels [4:8, 16:24] flattened row, column, channel
    patch = image[4:8, 16:24].reshape(-1)
    np.testing.assert_allclose(tokens[1 * 3 + 2], embed.projection(patch), rtol=1e-5)


def test_patch_embedding_rejects_indivisible_image(getkey):
    embed = nn.PatchEmbedding(16, 8, key=getkey())
    with pytest.raises(ValueError, match="does not split into 16x16 patches"):
        embed(jnp.zeros((30, 32, 3)))


def test_linear_names_expected_width(getkey):
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 4\)"):
        nn.Linear(4, 3, key=getkey())(jnp.ones((2, 5)))


def test_jaxtyping_checks_shapes_in_signatures():
    with pytest.raises(Exception, match="heads"):
        nn.dot_product_attention(jnp.ones((4, 2, 8)), jnp.ones((5, 3, 8)), jnp.ones((5, 3, 8)))


def test_sincos_2d_values():
    table = nn.sincos_2d((2, 3), 8)
    assert table.shape == (6, 8)
    # token 4 is row 1, column 1; first quarter is sin(column * omega_0) with omega_0 = 1
    np.testing.assert_allclose(table[4, 0], np.sin(1.0), rtol=1e-6)
    np.testing.assert_allclose(table[4, 6], np.cos(1.0), rtol=1e-6)
    np.testing.assert_allclose(table[0], [0, 0, 1, 1, 0, 0, 1, 1], atol=1e-7)


def test_resample_grid_keeps_prefix_and_is_identity_on_same_grid(getkey):
    table = jax.random.normal(getkey(), (1 + 16, 8))
    np.testing.assert_allclose(nn.resample_grid(table, 4, 4, num_prefix=1), table, atol=1e-6)
    up = nn.resample_grid(table, 4, (8, 6), num_prefix=1, method="bicubic")
    assert up.shape == (1 + 48, 8)
    np.testing.assert_array_equal(up[0], table[0])


def test_resample_grid_preserves_linear_ramp():
    rows, cols = np.meshgrid(np.arange(4.0), np.arange(4.0), indexing="ij")
    ramp = jnp.asarray((rows + 2 * cols).reshape(16, 1), jnp.float32)
    down = nn.resample_grid(ramp, 4, 2).reshape(2, 2)
    # bilinear resampling of a linear function stays linear: corners average their 2x2 blocks
    np.testing.assert_allclose(down, [[1.5, 5.5], [3.5, 7.5]], atol=1e-5)


def test_resample_grid_wrong_table_is_an_error(getkey):
    with pytest.raises(ValueError, match="needs 17"):
        nn.resample_grid(jnp.zeros((16, 8)), 4, 8, num_prefix=1)


def test_position_embeddings_add_and_check_length(getkey):
    learned = nn.LearnedPositionEmbedding(5, 8, key=getkey())
    x = jnp.ones((5, 8))
    np.testing.assert_allclose(learned(x), x + learned.weight)
    # a table without a grid is a text table: shorter sequences take its first rows
    np.testing.assert_allclose(learned(x[:4]), x[:4] + learned.weight[:4])
    with pytest.raises(ValueError, match="has 5"):
        learned(jnp.ones((6, 8)))
    sincos = nn.SinCosPositionEmbedding((2, 2), 8, num_prefix=1)
    out = sincos(x)
    np.testing.assert_allclose(out[0], x[0])  # the CLS token gets no position
    assert sincos.resample(2, 3)(jnp.ones((10, 8))).shape == (10, 8)
    assert learned.resample(2, 3, num_prefix=1).weight.shape == (10, 8)


@pytest.mark.parametrize("name", ["gelu", "gelu_tanh", "quick_gelu"])
def test_mlp_activations(getkey, name):
    mlp = nn.MLP(8, 16, activation=name, key=getkey())
    x = jax.random.normal(getkey(), (3, 8))
    reference = {
        "gelu": lambda h: 0.5 * h * (1 + jax.scipy.special.erf(h / np.sqrt(2))),
        "gelu_tanh": lambda h: 0.5 * h * (1 + jnp.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3))),
        "quick_gelu": lambda h: h * jax.nn.sigmoid(1.702 * h),
    }[name]
    expected = mlp.fc2(reference(mlp.fc1(x)))
    np.testing.assert_allclose(mlp(x), expected, atol=1e-5)


def test_unknown_activation_lists_choices(getkey):
    with pytest.raises(ValueError, match="gelu_tanh"):
        nn.MLP(8, 16, activation="relu6", key=getkey())


def test_pooling_methods():
    x = jnp.arange(12.0).reshape(4, 3)
    ids = jnp.array([5, 9, 2, 0])
    np.testing.assert_array_equal(nn.pool(x, "cls"), x[0])
    np.testing.assert_array_equal(nn.pool(x, "first"), x[0])
    np.testing.assert_array_equal(nn.pool(x, "last"), x[3])
    np.testing.assert_allclose(nn.pool(x, "gap"), x.mean(0))
    mask = jnp.array([True, True, False, False])
    np.testing.assert_allclose(nn.pool(x, "mean", mask=mask), x[:2].mean(0))
    np.testing.assert_array_equal(nn.pool(x, "eos", token_ids=ids, eos_token_id=2), x[2])
    np.testing.assert_array_equal(nn.pool(x, "argmax", token_ids=ids), x[1])
    # no EOS in the sequence: position 0, as transformers' CLIPTextTransformer
    np.testing.assert_array_equal(nn.pool(x, "eos", token_ids=ids, eos_token_id=7), x[0])
    with pytest.raises(ValueError, match="token_ids"):
        nn.pool(x, "eos", eos_token_id=2)
    with pytest.raises(ValueError, match="unknown pooling"):
        nn.pool(x, "max")


def test_map_head_is_probe_cross_attention(getkey):
    head = nn.MAPHead(16, 4, 32, key=getkey())
    x = jax.random.normal(getkey(), (7, 16))
    y = head.attention(head.probe, x)
    expected = (y + head.mlp(head.norm(y)))[0]
    np.testing.assert_allclose(head(x), expected, atol=1e-6)
    # attention pooling is permutation-invariant over tokens
    np.testing.assert_allclose(head(x[::-1]), head(x), atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_scan_encoder_equals_unrolled(getkey, causal):
    encoder = nn.Encoder(3, 16, 4, 32, key=getkey())
    x = jax.random.normal(getkey(), (6, 16))
    mask = jnp.array([True] * 5 + [False])
    scanned = encoder(x, mask=mask, causal=causal)
    unrolled = encoder(x, mask=mask, causal=causal, unroll=True)
    np.testing.assert_allclose(scanned, unrolled, atol=1e-6)


@pytest.mark.parametrize("policy", sorted(nn.REMAT_POLICIES))
def test_remat_gives_same_values_and_gradients(getkey, policy):
    key = getkey()
    plain = nn.Encoder(2, 16, 4, 32, key=key)
    remat = nn.Encoder(2, 16, 4, 32, remat=policy, key=key)
    x = jax.random.normal(getkey(), (5, 16))
    loss = lambda enc: jnp.sum(enc(x) ** 2)  # noqa: E731
    np.testing.assert_allclose(loss(plain), loss(remat), rtol=1e-6)
    g_plain, g_remat = eqx.filter_grad(loss)(plain), eqx.filter_grad(loss)(remat)
    for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_encoder_trace_size_is_flat_in_depth(getkey):
    def equations(depth):
        encoder = nn.Encoder(depth, 16, 4, 32, key=getkey())
        jaxpr = jax.make_jaxpr(lambda e, x: e(x))(encoder, jnp.ones((4, 16)))
        return len(jaxpr.jaxpr.eqns)

    assert equations(2) == equations(24)


def test_unknown_remat_policy(getkey):
    with pytest.raises(ValueError, match="remat policy"):
        nn.Encoder(2, 16, 4, 32, remat="everything", key=getkey())


def test_cast_floating_keeps_float32_master_gradients(getkey):
    layer = nn.Linear(4, 3, key=getkey())
    x = jnp.ones((2, 4), jnp.bfloat16)

    def loss(layer):
        return jnp.sum(nn.cast_floating(layer, jnp.bfloat16)(x).astype(jnp.float32))

    grads = eqx.filter_grad(loss)(layer)
    assert grads.weight.dtype == jnp.float32
    assert nn.cast_floating(layer, "bfloat16")(x).dtype == jnp.bfloat16


def naive_conv_stem(stem, image):
    """Loops over output pixels: stride-2 3x3 convolutions with XLA's SAME padding (the one
    extra pixel goes after), channel LayerNorm (when the stem has one), GELU, then the 1x1
    projection."""
    x = np.asarray(image, np.float64)
    for kernel in stem.kernels:
        kernel = np.asarray(kernel, np.float64)
        h, w = x.shape[:2]
        padded = np.pad(x, ((0, 1), (0, 1), (0, 0)))
        out = np.zeros((h // 2, w // 2, kernel.shape[-1]))
        for i in range(h // 2):
            for j in range(w // 2):
                window = padded[2 * i:2 * i + 3, 2 * j:2 * j + 3]
                out[i, j] = np.einsum("hwc,hwco->o", window, kernel)
        if stem.norm:
            out = (out - out.mean(-1, keepdims=True)) / np.sqrt(out.var(-1, keepdims=True) + 1e-6)
        x = np.asarray(jax.nn.gelu(jnp.asarray(out, jnp.float32)), np.float64)
    tokens = x.reshape(-1, x.shape[-1])
    return tokens @ np.asarray(stem.projection.weight) + np.asarray(stem.projection.bias)


@pytest.mark.parametrize("norm", [True, False])
def test_conv_stem_matches_naive_reference(getkey, norm):
    stem = nn.ConvStem(4, 12, widths=(5, 7), norm=norm, key=getkey())
    image = jax.random.normal(getkey(), (8, 12, 3))
    tokens = stem(image)
    assert tokens.shape == (2 * 3, 12)  # the same tokens as a 4x4 patch embedding
    np.testing.assert_allclose(tokens, naive_conv_stem(stem, image), rtol=1e-4, atol=1e-4)


def test_conv_stem_norm_is_config_only(getkey):
    """`stem_norm` changes the computation, not the parameters: checkpoints of either load."""
    from eqvlp import models

    def vit(stem_norm):
        config = models.ViTConfig.tiny(image_size=16, patch_size=4, depth=1, stem="conv",
                                       stem_norm=stem_norm, projection_dim=8)
        return models.ViT(config, key=jax.random.key(0))

    def arrays(model):
        return [(jax.tree_util.keystr(path), leaf.shape) for path, leaf
                in jax.tree_util.tree_leaves_with_path(eqx.filter(model, eqx.is_array))]

    with_norm, without = vit(True), vit(False)
    assert arrays(with_norm) == arrays(without)
    image = jax.random.normal(getkey(), (16, 16, 3))
    assert not np.allclose(with_norm(image), without(image))


def test_conv_stem_errors_name_the_fix(getkey):
    with pytest.raises(ValueError, match="power-of-two patch size"):
        nn.ConvStem(6, 8, key=getkey())
    with pytest.raises(ValueError, match="needs 3 stride-2 convolutions"):
        nn.ConvStem(8, 8, widths=(4, 4), key=getkey())
    with pytest.raises(ValueError, match="does not split into 8x8 patches"):
        nn.ConvStem(8, 8, key=getkey())(jnp.zeros((12, 16, 3)))
    assert nn.conv_stem_widths(8, 96) == (16, 24, 48)


def test_vit_with_conv_stem_trains(getkey):
    from eqvlp import models

    config = models.ViTConfig.tiny(image_size=16, patch_size=4, depth=1, stem="conv",
                                   projection_dim=8)
    vit = models.ViT(config, key=getkey())
    assert vit.embed(jnp.ones((16, 16, 3))).shape == (1 + 16, config.width)  # CLS + 4x4 grid
    grads = eqx.filter_grad(lambda m: jnp.sum(m(jnp.linspace(0, 1, 768).reshape(16, 16, 3))))(vit)
    assert all(float(jnp.abs(k).sum()) > 0 for k in grads.patch_embedding.kernels)
    # the test session's runtime type checker may catch the Literal first
    with pytest.raises((ValueError, TypeError), match="stem"):
        models.ViTConfig.tiny(stem="convolution")
