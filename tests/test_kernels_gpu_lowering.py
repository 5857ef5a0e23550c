"""Every Pallas kernel and attention path lowered for a GPU (CUDA) on this CPU-only machine.

`eqvlp.kernels.lowering.lower_for_gpu` runs all of JAX's and Pallas' GPU lowering without a GPU,
so what Pallas, Triton's front end or JAX's cuDNN rules reject (the Mosaic GPU default, tiles that
are not powers of two, odd sequence lengths for cuDNN training) fails here. What only the
Triton compiler sees (shared memory, registers) is covered by the budget asserted here. Nothing
in this file runs on a GPU.
"""

import dataclasses
import importlib
import re
import sys
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
import pytest
from jax.sharding import PartitionSpec as P

from eqvlp import models, sharding
from eqvlp.kernels import (
    AttentionBlockSizes,
    LossBlockSizes,
    attention,
    attention_reference,
    flash_attention,
    fused_sigmoid_loss,
    lowering,
)
from eqvlp.kernels import attention_block_sizes_for as attention_blocks
from eqvlp.kernels import loss_block_sizes_for as loss_blocks
from eqvlp.kernels.attention import gpu_shared_memory_bytes as attention_shared_memory
from eqvlp.kernels.sigmoid_loss import gpu_shared_memory_bytes as loss_shared_memory
from eqvlp.losses import distributed_sigmoid_loss
from eqvlp.train import make_train_step, sharded_train_step

# JAX 0.11 warns that Pallas' Triton backend is deprecated (docs/kernels.md says what next).
pytestmark = pytest.mark.filterwarnings("ignore:The Pallas Triton backend:DeprecationWarning")

FLASH = ["eqvlp_flash_attention_dkv", "eqvlp_flash_attention_dq", "eqvlp_flash_attention_fwd"]
LOSS = ["eqvlp_sigmoid_loss_dzimg", "eqvlp_sigmoid_loss_dztxt", "eqvlp_sigmoid_loss_fwd"]
TRITON_CALL = "@__gpu$xla.gpu.triton("
TRITON_CONFIG = re.compile(r'name = "(\w+)", num_stages = (\d+) : i32, num_warps = (\d+) : i32')


def triton_kernels(lowered) -> list[str]:
    """The Triton kernels of a lowered program, each checked to carry eqvlp's launch settings."""
    text = lowered.as_text()
    found = TRITON_CONFIG.findall(text)
    assert len(found) == text.count(TRITON_CALL)
    for _, stages, warps in found:
        assert int(stages) == lowering.NUM_STAGES and int(warps) in (4, 8)
    return sorted({name for name, _, _ in found})


def cudnn_calls(lowered) -> int:
    return lowered.as_text().count("@__cudnn$fmha")


def spec(shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


@pytest.fixture
def gpu_host(monkeypatch):
    """Traces as on a GPU machine: eqvlp's dispatcher sees the backend "gpu", JAX's cuDNN
    attention a cuDNN 9.8 (a CPU-only jaxlib has no cuDNN to ask)."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    cudnn = importlib.import_module("jax._src.cudnn.fused_attention_stablehlo")
    if not hasattr(cudnn, "check_cudnn_version"):
        pytest.fail("this JAX moved jax._src.cudnn.fused_attention_stablehlo.check_cudnn_version: "
                    "update the gpu_host fixture")
    monkeypatch.setattr(cudnn, "check_cudnn_version", lambda: 90800)


@pytest.fixture
def device_checks_off(monkeypatch):
    """Equinox checks (the losses' finiteness checks) in "nan" mode: in "raise" mode they are
    host callbacks, which a CPU machine cannot lower for CUDA (a GPU runs them as usual). JAX's
    caches are cleared on both sides so no other test sees a program traced in this mode."""
    errors = importlib.import_module("equinox._errors")
    if not hasattr(errors, "EQX_ON_ERROR"):
        pytest.fail("this Equinox moved equinox._errors.EQX_ON_ERROR: update the fixture")
    jax.clear_caches()
    monkeypatch.setattr(errors, "EQX_ON_ERROR", "nan")
    yield
    jax.clear_caches()


# ------------------------------------------------------------------------------------------
# Flash attention


def flash_forward_and_grads(causal, masked, block_sizes=None):
    def run(q, k, v, mask):
        f = lambda q, k, v: flash_attention(q, k, v, causal=causal,  # noqa: E731
                                            mask=mask if masked else None, block_sizes=block_sizes)
        out, vjp = jax.vjp(f, q, k, v)
        return out, vjp(out)

    return run


ATTENTION_CASES = [
    # batch, q_seq, kv_seq, heads, head_dim, causal, masked: no length a multiple of the blocks
    (2, 197, 197, 3, 64, False, True),  # ViT-B/16's tokens with a key padding mask
    (2, 77, 77, 2, 32, True, True),  # CLIP text: causal and key padding
    (1, 1, 196, 2, 128, False, False),  # MAP pooling: one probe over the patches
]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("case", ATTENTION_CASES)
def test_flash_attention_forward_and_backward_lower_to_triton(case, dtype):
    b, t, s, h, d, causal, masked = case
    q, kv = spec((b, t, h, d), dtype), spec((b, s, h, d), dtype)
    lowered = lowering.lower_for_gpu(flash_forward_and_grads(causal, masked), q, kv, kv,
                                     spec((b, s), jnp.bool_))
    assert triton_kernels(lowered) == FLASH


# The blocks long sequences get (the table in docs/kernels.md): the largest that fit an H100.
LONG_SEQUENCE_BLOCKS = {
    (jnp.bfloat16, 32): (128, 128), (jnp.bfloat16, 48): (128, 128), (jnp.bfloat16, 64): (128, 128),
    (jnp.bfloat16, 128): (128, 64), (jnp.bfloat16, 256): (64, 64),
    (jnp.float32, 32): (128, 128), (jnp.float32, 48): (128, 64), (jnp.float32, 64): (128, 64),
    (jnp.float32, 128): (64, 64), (jnp.float32, 256): (32, 32),
}


@pytest.mark.parametrize("head_dim", [32, 48, 64, 128, 256])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_attention_blocks_are_triton_tiles_within_h100_shared_memory(head_dim, dtype):
    for q_seq, kv_seq in [(1, 196), (77, 77), (197, 197), (4096, 4096)]:
        sizes = attention_blocks(q_seq, kv_seq, head_dim, dtype)
        for block in (sizes.block_q, sizes.block_k):
            assert lowering.is_power_of_two(block) and 16 <= block <= 128
        used = attention_shared_memory(sizes.block_q, sizes.block_k, head_dim,
                                       jnp.dtype(dtype).itemsize)
        assert used <= lowering.SHARED_MEMORY_BYTES
    expected = AttentionBlockSizes(*LONG_SEQUENCE_BLOCKS[dtype, head_dim])
    assert attention_blocks(4096, 4096, head_dim, dtype) == expected
    # one step larger along either axis would not fit
    itemsize = jnp.dtype(dtype).itemsize
    bq, bk = expected.block_q, expected.block_k
    for larger in [(2 * bq, bk), (bq, 2 * bk)]:
        if max(larger) <= 128:
            too_much = attention_shared_memory(*larger, head_dim, itemsize)
            assert too_much > lowering.SHARED_MEMORY_BYTES


@pytest.mark.parametrize("head_dim, dtype", [(32, jnp.float32), (256, jnp.float32),
                                             (72, jnp.bfloat16)])
def test_flash_attention_lowers_at_the_ends_of_the_head_dim_range(head_dim, dtype):
    # 72 (SigLIP So400m) is zero-padded to 128: Triton tiles are powers of two
    x = spec((1, 300, 2, head_dim), dtype)
    lowered = lowering.lower_for_gpu(flash_forward_and_grads(True, False), x, x, x,
                                     spec((1, 300), jnp.bool_))
    assert triton_kernels(lowered) == FLASH


def test_blocks_must_be_triton_tiles():
    with pytest.raises(ValueError, match="power of two"):
        AttentionBlockSizes(100, 128)
    with pytest.raises(ValueError, match="power of two >= 16"):
        LossBlockSizes(8, 16)


def test_blocks_over_the_shared_memory_estimate_warn_when_bound_for_a_gpu():
    q = spec((1, 256, 1, 256))
    z = spec((256, 512))
    too_big = [
        lambda q: flash_attention(q, q, q, block_sizes=AttentionBlockSizes(128, 128),
                                  interpret=False),
        lambda z: fused_sigmoid_loss(z, z, 10.0, -10.0, block_sizes=LossBlockSizes(128, 128),
                                     interpret=False),
    ]
    for fn, x in zip(too_big, (q, z)):
        with pytest.warns(UserWarning, match="shared memory.*smaller block_sizes"):
            lowering.lower_for_gpu(fn, x)
    # the interpreter has no shared memory to run out of
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jax.eval_shape(lambda q: flash_attention(q, q, q, block_sizes=AttentionBlockSizes(128, 128),
                                                 interpret=True), q)


def test_interpret_none_interprets_on_cpu_and_matches_reference():
    q = jax.random.normal(jax.random.key(0), (1, 20, 1, 16))
    run = jax.jit(lambda q: flash_attention(q, q, q, causal=True))
    assert TRITON_CALL not in run.trace(q).lower().as_text()
    out = run(q)
    assert jnp.allclose(out, attention_reference(q, q, q, causal=True), atol=2e-5)


def test_missing_triton_backend_is_a_clear_error(monkeypatch):
    from jax.experimental import pallas

    monkeypatch.delattr(pallas, "triton", raising=False)
    monkeypatch.setitem(sys.modules, "jax.experimental.pallas.triton", None)
    with pytest.raises(ImportError, match="no Pallas Triton backend.*impl='xla'"):
        lowering.triton_compiler_params(4)


# ------------------------------------------------------------------------------------------
# Fused sigmoid loss


@pytest.mark.parametrize("batch, dim, dtype", [(1000, 512, jnp.float32), (32768, 512, jnp.float32),
                                               (300, 72, jnp.bfloat16)])
def test_fused_sigmoid_loss_forward_and_backward_lower_to_triton(batch, dim, dtype):
    sizes = loss_blocks(batch, batch, dim)
    assert loss_shared_memory(sizes.block_i, sizes.block_j, dim) <= lowering.SHARED_MEMORY_BYTES
    if dim == 512:
        assert sizes == LossBlockSizes(32, 32)
    value_and_grads = jax.value_and_grad(fused_sigmoid_loss, argnums=(0, 1, 2, 3))
    z = spec((batch, dim), dtype)
    lowered = lowering.lower_for_gpu(value_and_grads, z, z, spec(()), spec(()))
    assert triton_kernels(lowered) == LOSS


@pytest.mark.parametrize("method", ["ring", "bidir"])
def test_distributed_sigmoid_loss_with_pallas_blocks_lowers_in_shard_map(method, device_checks_off):
    mesh = lowering.gpu_abstract_mesh(sharding.make_mesh(data=8))
    body = lambda a, b: distributed_sigmoid_loss(a, b, 10.0, -10.0, axis_name="data",  # noqa: E731
                                                 method=method, impl="pallas")
    loss = jax.shard_map(body, mesh=mesh, in_specs=(P("data"), P("data")), out_specs=P(),
                         check_vma=False)  # Pallas outputs carry no device-variance types
    value_and_grads = jax.value_and_grad(loss, argnums=(0, 1))
    lowered = lowering.lower_for_gpu(value_and_grads, spec((64, 32)), spec((64, 32)), mesh=mesh)
    assert triton_kernels(lowered) == LOSS


# ------------------------------------------------------------------------------------------
# The attention dispatcher's paths, as a GPU machine would trace them


def attention_forward_and_grads(impl, causal, masked):
    def run(q, k, v, mask):
        f = lambda q, k, v: attention(q, k, v, causal=causal,  # noqa: E731
                                      mask=mask if masked else None, impl=impl)
        out, vjp = jax.vjp(f, q, k, v)
        return out, vjp(out)

    return run


@pytest.mark.parametrize(
    "impl, dtype, q_seq, kv_seq, causal, masked, path",
    [
        ("xla", jnp.bfloat16, 77, 77, True, True, "xla"),
        ("cudnn", jnp.bfloat16, 77, 77, True, True, "cudnn"),  # odd lengths and a key mask
        ("cudnn", jnp.float16, 1, 196, False, False, "cudnn"),  # MAP pooling's one query
        (None, jnp.bfloat16, 197, 197, False, False, "cudnn"),
        (None, jnp.bfloat16, 77, 77, True, True, "xla"),  # key masks stay on XLA by default
        (None, jnp.float32, 197, 197, False, False, "xla"),  # the kernel only on request
        ("pallas", jnp.float32, 77, 77, True, True, "triton"),
    ],
)
def test_attention_paths_lower_for_cuda(gpu_host, impl, dtype, q_seq, kv_seq, causal, masked, path):
    q, kv = spec((2, q_seq, 2, 64), dtype), spec((2, kv_seq, 2, 64), dtype)
    lowered = lowering.lower_for_gpu(attention_forward_and_grads(impl, causal, masked), q, kv, kv,
                                     spec((2, kv_seq), jnp.bool_))
    assert cudnn_calls(lowered) == (2 if path == "cudnn" else 0)  # forward and backward
    assert triton_kernels(lowered) == (FLASH if path == "triton" else [])


# ------------------------------------------------------------------------------------------
# Whole training steps


def abstract_model_and_state(name, optimizer, attention_impl=None, **overrides):
    """A preset's model and optimizer state as shapes only: nothing is initialised."""

    def make():
        cfg = models.config(name)
        model = models.create(
            name, key=jax.random.key(0), **overrides,
            vision=dataclasses.replace(cfg.vision, attention_impl=attention_impl),
            text=dataclasses.replace(cfg.text, attention_impl=attention_impl))
        return model, optimizer.init(eqx.filter(model, eqx.is_array))

    return eqx.filter_eval_shape(make)


def lower_step(name, mesh_shape=None, **overrides):
    """A training step of the preset (sharded by fsdp_tp rules over `mesh_shape`) for CUDA."""
    optimizer = optax.adamw(1e-3)
    model, state = abstract_model_and_state(name, optimizer, **overrides)
    step, mesh = make_train_step(optimizer), None
    if mesh_shape is not None:
        mesh = sharding.make_mesh(**mesh_shape)
        step = sharded_train_step(step, model, state, sharding.rules("fsdp_tp"), mesh,
                                  donate=False)
    images = spec((8, *model.config.vision.image_shape))
    token_ids = spec((8, model.config.text.context_length), jnp.int32)
    return lowering.lower_for_gpu(step, model, state, images, token_ids, mesh=mesh)


def test_sharded_clip_step_with_pallas_attention_lowers_for_cuda(device_checks_off):
    lowered = lower_step("clip-tiny", dict(fsdp=8), attention_impl="pallas")
    assert triton_kernels(lowered) == FLASH
    assert cudnn_calls(lowered) == 0


@pytest.mark.parametrize("name", ["clip-tiny", "siglip-tiny"])
def test_bfloat16_steps_with_default_attention_use_cudnn(name, gpu_host, device_checks_off):
    # clip-tiny: 17 image tokens and causal text; siglip-tiny: MAP pooling's one-query attention
    lowered = lower_step(name, dtype="bfloat16")
    text = lowered.as_text()
    assert text.count("@__cudnn$fmhaSoftmax(") >= 2  # the towers' forward passes
    assert text.count("@__cudnn$fmhaSoftmaxBackward(") >= 2
    assert triton_kernels(lowered) == []


def test_sharded_bfloat16_siglip_step_with_default_attention_lowers_for_cuda(gpu_host,
                                                                           device_checks_off):
    # sharded, JAX wraps cuDNN attention in a custom partitioning (resolved when XLA compiles)
    lowered = lower_step("siglip-tiny", dict(fsdp=4, tensor=2), dtype="bfloat16")
    assert "@CustomSPMDPartitioning(" in lowered.as_text()
    assert triton_kernels(lowered) == []
