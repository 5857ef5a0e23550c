"""Export to transformers: eqvlp models saved as CLIPModel / SiglipModel directories load in
transformers with the same embeddings, and import -> export -> import is the identity."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_convert_transformers import (  # noqa: E402
    check_parity,
    features,
    inputs,
    relative_error,
    tiny_clip,
    tiny_siglip,
)

from eqvlp import models  # noqa: E402
from eqvlp.convert import (  # noqa: E402
    from_transformers,
    read_safetensors,
    to_transformers,
    write_safetensors,
)


def assert_same_model(a, b):
    assert a.config == b.config
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("make", [tiny_clip, lambda: tiny_clip(eos_token_id=2), tiny_siglip],
                         ids=["clip", "clip-legacy-eos-2", "siglip"])
def test_import_export_import_is_the_identity(make, tmp_path):
    hf = make()
    imported = from_transformers(hf)
    exported = to_transformers(imported, tmp_path)
    assert exported.architecture == type(hf).__name__ and exported.token_id_map == {}
    assert_same_model(from_transformers(tmp_path), imported)
    # and transformers reads the directory back as the model it came from, tensor for tensor
    reloaded = type(hf).from_pretrained(tmp_path).eval()
    ours, theirs = reloaded.state_dict(), hf.state_dict()
    assert set(ours) == set(theirs)
    for name in theirs:
        np.testing.assert_array_equal(ours[name].numpy(), theirs[name].numpy(), err_msg=name)
    check_parity(reloaded, imported, eos_token_id=hf.config.text_config.eos_token_id)


def test_eqvlp_siglip_loads_in_transformers_with_the_same_embeddings(tmp_path):
    model = models.create("siglip-tiny", key=jax.random.key(0))
    assert to_transformers(model, tmp_path).architecture == "SiglipModel"
    hf = transformers.SiglipModel.from_pretrained(tmp_path).eval()
    check_parity(hf, model)
    np.testing.assert_allclose(float(hf.logit_bias.detach()[0]), float(model.bias()), rtol=1e-6)


def eqvlp_clip(key, **vision):
    """A tiny CLIP as eqvlp trains it: OpenAI's pre-norm, a patch bias, EOS at id 2."""
    cfg = models.config("clip-tiny")
    cfg = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, pre_norm=True,
                                                              **vision))
    model = models.CLIP(cfg, key=key)
    # non-trivial patch bias, norms and scale, so that the rewrites are really exercised
    return jax.tree.map(lambda x: x + 0.1 * jax.random.normal(key, x.shape, x.dtype)
                        if jnp.issubdtype(x.dtype, jnp.floating) else x, model)


def test_eqvlp_clip_with_eos_id_2_exports_with_ids_swapped(tmp_path, getkey):
    model = eqvlp_clip(getkey())
    assert model.config.text.pooling == "eos" and model.config.text.eos_token_id == 2
    exported = to_transformers(model, tmp_path)
    last = model.config.text.vocab_size - 1
    assert exported.token_id_map == {2: last, last: 2}
    hf = transformers.CLIPModel.from_pretrained(tmp_path).eval()
    assert hf.config.text_config.eos_token_id == last
    pixels, ids = inputs(eos_token_id=2)  # eqvlp ids: EOS 2, padding 0
    ids[0, 1] = last  # the swapped token is used too
    moved = np.vectorize(lambda i: exported.token_id_map.get(int(i), int(i)))(ids)
    with torch.no_grad():
        hf_image = features(hf.get_image_features(pixel_values=torch.from_numpy(pixels)))
        hf_text = features(hf.get_text_features(input_ids=torch.from_numpy(moved)))
    assert relative_error(model.encode_image(jnp.asarray(pixels.transpose(0, 2, 3, 1))),
                          hf_image) < 1e-5
    assert relative_error(model.encode_text(jnp.asarray(ids, jnp.int32)), hf_text) < 1e-5


def test_exported_tokenizer_gives_the_exported_model_its_ids(tmp_path, getkey):
    from eqvlp.tokenizer import tokenize, train_tokenizer

    texts = ["a red square at the top", "a small blue circle", "the green star is large"]
    tokenizer = train_tokenizer(texts * 20, vocab_size=300)
    model = eqvlp_clip(getkey())
    exported = to_transformers(model, tmp_path, tokenizer=tokenizer)
    texts.append("word " * 40)  # truncated: EOS stays last
    length = model.config.text.context_length
    ours = tokenize(tokenizer, texts, context_length=length)
    expected = np.vectorize(lambda i: exported.token_id_map.get(int(i), int(i)))(ours)
    # the file pads and truncates by itself (what `eqvlp eval --transformers` reads) ...
    plain = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    np.testing.assert_array_equal([e.ids for e in plain.encode_batch(texts)], expected)
    # ... and transformers' tokenizer gives the same ids with its usual arguments
    hf_tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(tmp_path / "tokenizer.json"))
    theirs = hf_tokenizer(texts, padding="max_length", truncation=True, max_length=length)
    np.testing.assert_array_equal(theirs["input_ids"], expected)


def test_models_transformers_cannot_express_raise_clear_errors(tmp_path, getkey):
    with pytest.raises(ValueError, match="pre_norm=True"):
        to_transformers(models.create("clip-tiny", key=getkey()), tmp_path)
    with pytest.raises(ValueError, match="stem='patch'"):
        to_transformers(eqvlp_clip(getkey(), stem="conv", stem_widths=None), tmp_path)
    with pytest.raises(TypeError, match="no transformers equivalent"):
        to_transformers(models.create("clippo-tiny", key=getkey()), tmp_path)
    gap = eqvlp_clip(getkey(), pooling="gap")
    with pytest.raises(ValueError, match="CLIPModel pools the class token"):
        to_transformers(gap, tmp_path)
    with pytest.raises(ValueError, match="eqvlp tokenizer"):
        to_transformers(eqvlp_clip(getkey()), tmp_path, tokenizer=_OtherTokenizer())


class _OtherTokenizer:
    def token_to_id(self, token):
        return None


def test_safetensors_round_trip_and_torch_reads_it(tmp_path):
    from safetensors.torch import load_file

    tensors = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.ones(3, np.int64),
               "c": np.zeros((), np.float32)}
    write_safetensors(tmp_path / "x.safetensors", tensors, metadata={"format": "pt"})
    back = read_safetensors(tmp_path / "x.safetensors")
    torch_back = load_file(tmp_path / "x.safetensors")
    for name, value in tensors.items():
        np.testing.assert_array_equal(back[name], value)
        np.testing.assert_array_equal(torch_back[name].numpy(), value)
    header_size = int.from_bytes((tmp_path / "x.safetensors").read_bytes()[:8], "little")
    assert header_size % 8 == 0
    header = json.loads((tmp_path / "x.safetensors").read_bytes()[8:8 + header_size])
    assert header["__metadata__"] == {"format": "pt"}
    with pytest.raises(ValueError, match="safetensors does not store"):
        write_safetensors(tmp_path / "y.safetensors", {"s": np.array(["x"])})
