"""Parity with transformers: random-initialised CLIPModel / SiglipModel, converted to eqvlp."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402

from eqvlp.convert import from_transformers  # noqa: E402

TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def relative_error(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def features(output):
    """transformers 5 returns a model output whose pooler_output holds the features."""
    return (output.pooler_output if hasattr(output, "pooler_output") else output).detach().numpy()


def tiny_clip(eos_token_id=3):
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=99, max_position_embeddings=12, eos_token_id=eos_token_id,
                         bos_token_id=1, pad_token_id=0, **TOWER),
        vision_config=dict(image_size=32, patch_size=8, **TOWER),
        projection_dim=24,
    )
    return transformers.CLIPModel(config).eval()


def tiny_siglip():
    torch.manual_seed(0)
    config = transformers.SiglipConfig(
        text_config=dict(vocab_size=99, max_position_embeddings=12, projection_size=32,
                         bos_token_id=1, eos_token_id=3, pad_token_id=0, **TOWER),
        vision_config=dict(image_size=32, patch_size=8, **TOWER),
    )
    return transformers.SiglipModel(config).eval()


def inputs(eos_token_id=3):
    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(3, 3, 32, 32)).astype(np.float32)
    ids = rng.integers(4, 99, size=(3, 12))
    for row, length in enumerate([5, 12, 8]):  # an EOS, then padding (0) after it
        ids[row, length - 1] = eos_token_id
        ids[row, length:] = 0
    return pixels, ids


def check_parity(hf_model, ours, eos_token_id=3):
    pixels, ids = inputs(eos_token_id)
    with torch.no_grad():
        hf_image = features(hf_model.get_image_features(pixel_values=torch.from_numpy(pixels)))
        hf_text = features(hf_model.get_text_features(input_ids=torch.from_numpy(ids)))
    our_image = ours.encode_image(jnp.asarray(pixels.transpose(0, 2, 3, 1)))
    our_text = ours.encode_text(jnp.asarray(ids, jnp.int32))
    assert our_image.shape == hf_image.shape and our_text.shape == hf_text.shape
    assert relative_error(our_image, hf_image) < 1e-5
    assert relative_error(our_text, hf_text) < 1e-5


def test_clip_parity():
    hf = tiny_clip()
    ours = from_transformers(hf)
    assert ours.config.text.pooling == "eos" and ours.config.text.eos_token_id == 3
    check_parity(hf, ours)
    np.testing.assert_allclose(float(ours.logit_scale), float(hf.logit_scale.detach()), rtol=1e-6)


def test_clip_legacy_eos_id_2_pools_argmax():
    hf = tiny_clip(eos_token_id=2)
    ours = from_transformers(hf)
    assert ours.config.text.pooling == "argmax"
    pixels, ids = inputs(eos_token_id=98)  # argmax picks the largest id, as transformers does
    with torch.no_grad():
        hf_text = features(hf.get_text_features(input_ids=torch.from_numpy(ids)))
    assert relative_error(ours.encode_text(jnp.asarray(ids, jnp.int32)), hf_text) < 1e-5


def test_siglip_parity():
    hf = tiny_siglip()
    ours = from_transformers(hf)
    assert ours.config.loss == "sigmoid" and ours.config.vision.pooling == "map"
    check_parity(hf, ours)
    np.testing.assert_allclose(float(ours.bias()), float(hf.logit_bias.detach()[0]), rtol=1e-6)
    np.testing.assert_allclose(float(ours.scale()), float(hf.logit_scale.detach().exp()[0]), rtol=1e-6)


@pytest.mark.parametrize("make", [tiny_clip, tiny_siglip])
def test_saved_directory_matches_model_object(make, tmp_path):
    hf = make()
    hf.save_pretrained(tmp_path)
    from_dir = from_transformers(tmp_path)
    check_parity(hf, from_dir)


def test_bad_sources_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        from_transformers(tmp_path)
    with pytest.raises(TypeError, match="CLIPModel/SiglipModel"):
        from_transformers(42)
