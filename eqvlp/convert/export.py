"""Export eqvlp CLIP and SigLIP models as transformers `CLIPModel` / `SiglipModel` directories.

`to_transformers(model, directory)` writes what `save_pretrained` writes (`config.json` and
`model.safetensors`) without importing torch or transformers, so that
`transformers.CLIPModel.from_pretrained(directory)` (or `SiglipModel`) gives the same
embeddings. It is the inverse of `from_transformers`: import -> export -> import gives back
the same model, bit for bit.

Which transformers class a model becomes is read from its image tower: a class token with
CLS pooling is a `CLIPModel` (OpenAI's layout: a LayerNorm before the encoder, a projection
without bias); MAP pooling without a class token and without a projection is a `SiglipModel`.
What the target cannot express is an error naming the setting; two differences are exact
rewrites instead:

- an image patch bias, which `CLIPModel` lacks, is added to the patch tokens' position
  embeddings (the class token's row unchanged);
- transformers' `CLIPModel` reads `eos_token_id=2` as "pool the largest token id" (a legacy
  rule), but eqvlp's tokenizers put EOS at id 2 and pool there. Such a model is exported with
  token ids 2 and `vocab_size - 1` swapped in its embedding table, and EOS at
  `vocab_size - 1`: pass `tokenizer=` to write a `tokenizer.json` with the same swap, so text
  tokenized by it gives the same embeddings.
"""

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np

from eqvlp.convert.safetensors import write_safetensors
from eqvlp.models import CLIP, ContrastiveModel

_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
_LEGACY_ARGMAX_EOS = 2  # transformers' CLIPModel pools argmax(ids) when eos_token_id == 2


@dataclasses.dataclass(frozen=True)
class Exported:
    """What `to_transformers` wrote: the transformers class, the directory, and the token ids
    that moved (`{eqvlp id: exported id}`, empty when none did)."""

    architecture: str
    directory: Path
    token_id_map: dict[int, int]


def _nested_arrays(module) -> dict:
    """The module's arrays as nested dicts of float32 NumPy arrays, keyed by field names."""
    out: dict = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(module)[0]:
        keys = [p.name for p in path]
        node = out
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = np.asarray(leaf, np.float32)
    return out


def _require(ok: bool, problem: str, fix: str) -> None:
    if not ok:
        raise ValueError(f"cannot export to transformers: {problem}: {fix}")


def _activation(name: str, tower: str) -> str:
    _require(name in _ACTIVATIONS, f"the {tower} tower's activation {name!r} has no transformers "
             "name", f"use one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def _square(value, what: str) -> int:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    _require(pair[0] == pair[1], f"{what} {pair} is not square", "transformers' ViTs take one "
             "side length: use a square size")
    return int(pair[0])


def _linear(arrays: dict, name: str, out: dict, *, bias: bool = True) -> None:
    """An eqvlp Linear `(in, out)` as a torch Linear `(out, in)`; a missing bias is zero."""
    out[f"{name}.weight"] = arrays["weight"].T
    if bias:
        out[f"{name}.bias"] = arrays.get("bias", np.zeros(arrays["weight"].shape[1], np.float32))


def _norm(arrays: dict, name: str, out: dict) -> None:
    out[f"{name}.weight"], out[f"{name}.bias"] = arrays["weight"], arrays["bias"]


def _encoder(arrays: dict, prefix: str, depth: int, out: dict) -> None:
    for i in range(depth):
        block = jax.tree.map(lambda x, i=i: x[i], arrays["layers"])
        name = f"{prefix}.{i}"
        _norm(block["norm1"], f"{name}.layer_norm1", out)
        for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"),
                             ("output", "out_proj")):
            _linear(block["attention"][ours], f"{name}.self_attn.{theirs}", out)
        _norm(block["norm2"], f"{name}.layer_norm2", out)
        _linear(block["mlp"]["fc1"], f"{name}.mlp.fc1", out)
        _linear(block["mlp"]["fc2"], f"{name}.mlp.fc2", out)


def _patch_kernel(kernel: np.ndarray, patch: tuple[int, int]) -> np.ndarray:
    """eqvlp's `(ph * pw * 3, width)` kernel as torch's conv weight `(width, 3, ph, pw)`."""
    return kernel.reshape(patch[0], patch[1], 3, -1).transpose(3, 2, 0, 1)


def _tower_config(tower, *, kind: str) -> dict:
    return {"hidden_size": tower.width, "intermediate_size": tower.mlp_dim,
            "num_hidden_layers": tower.depth, "num_attention_heads": tower.num_heads,
            "hidden_act": _activation(tower.activation, kind),
            "layer_norm_eps": tower.layer_norm_eps}


def _check_vision(v, *, siglip: bool) -> None:
    _require(v.stem == "patch", f"image stem {v.stem!r} has no transformers equivalent",
             "train with ViTConfig(stem='patch') to export")
    _require(v.position_embedding == "learned", "sin-cos image position embeddings are not "
             "stored by transformers' ViTs", "use ViTConfig(position_embedding='learned')")
    if siglip:
        _require(not v.pre_norm, "SiglipModel has no LayerNorm before the encoder",
                 "use ViTConfig(pre_norm=False)")
        _require(v.projection_dim is None, "SiglipModel's image embedding is the MAP head's "
                 "output, without a projection", "use ViTConfig(projection_dim=None)")
    else:
        _require(v.pre_norm, "transformers' CLIPModel always applies a LayerNorm before the "
                 "image encoder (pre_layrnorm)", "use ViTConfig(pre_norm=True), as OpenAI's "
                 "CLIP and the clip-vit-* presets do")
        _require(not v.projection_bias, "CLIPModel's image projection has no bias",
                 "use ViTConfig(projection_bias=False)")


def _clip(model: CLIP) -> tuple[dict, dict, dict[int, int]]:
    """(config.json, tensors, token id map) of a `CLIPModel`."""
    v, t = model.config.vision, model.config.text
    _check_vision(v, siglip=False)
    _require(model.logit_bias is None, "CLIPModel has no logit bias (a SigLIP-style sigmoid "
             "model with a CLS token)", "export a model with MAP pooling as SiglipModel")
    _require(t.causal, "CLIPModel's text tower is causal", "use TextConfig(causal=True)")
    _require(not t.projection_bias, "CLIPModel's text projection has no bias",
             "use TextConfig(projection_bias=False)")
    _require(t.pooling in ("eos", "argmax"), f"CLIPModel pools text at the EOS token, not "
             f"{t.pooling!r}", "use TextConfig(pooling='eos') or 'argmax'")
    arrays = _nested_arrays(model)
    image, text = arrays["image"], arrays["text"]
    patch = (_square(v.patch_size, "patch size"),) * 2
    out: dict = {}
    positions = image["position_embedding"]["weight"].copy()
    bias = image["patch_embedding"]["projection"].get("bias")
    if bias is not None:  # the patch bias moves into the patch tokens' positions
        positions[1:] += bias
    out["vision_model.embeddings.patch_embedding.weight"] = _patch_kernel(
        image["patch_embedding"]["projection"]["weight"], patch)
    out["vision_model.embeddings.class_embedding"] = image["class_token"].reshape(-1)
    out["vision_model.embeddings.position_embedding.weight"] = positions
    _norm(image["pre_norm"], "vision_model.pre_layrnorm", out)
    _encoder(image["encoder"], "vision_model.encoder.layers", v.depth, out)
    _norm(image["final_norm"], "vision_model.post_layernorm", out)
    _linear(image["projection"], "visual_projection", out, bias=False)

    tokens, id_map = text["token_embedding"].copy(), {}
    eos = _LEGACY_ARGMAX_EOS if t.pooling == "argmax" else t.eos_token_id
    if t.pooling == "eos" and t.eos_token_id == _LEGACY_ARGMAX_EOS:
        last = t.vocab_size - 1
        _require(last != _LEGACY_ARGMAX_EOS, "a 3-token vocabulary leaves no id to move EOS to",
                 "use a larger vocabulary")
        tokens[[_LEGACY_ARGMAX_EOS, last]] = tokens[[last, _LEGACY_ARGMAX_EOS]]
        id_map, eos = {_LEGACY_ARGMAX_EOS: last, last: _LEGACY_ARGMAX_EOS}, last
    out["text_model.embeddings.token_embedding.weight"] = tokens
    out["text_model.embeddings.position_embedding.weight"] = text["position_embedding"]["weight"]
    _encoder(text["encoder"], "text_model.encoder.layers", t.depth, out)
    _norm(text["final_norm"], "text_model.final_layer_norm", out)
    _linear(text["projection"], "text_projection", out, bias=False)
    out["logit_scale"] = arrays["logit_scale"].reshape(())

    embed = model.config.embed_dim
    config = {
        "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": embed,
        "logit_scale_init_value": float(arrays["logit_scale"]),
        "text_config": {"model_type": "clip_text_model", **_tower_config(t, kind="text"),
                        "vocab_size": t.vocab_size, "max_position_embeddings": t.context_length,
                        "eos_token_id": int(eos), "bos_token_id": None, "pad_token_id": None,
                        "projection_dim": embed},
        "vision_config": {"model_type": "clip_vision_model", **_tower_config(v, kind="image"),
                          "image_size": _square(v.image_size, "image size"),
                          "patch_size": patch[0], "num_channels": 3, "projection_dim": embed},
    }
    return config, out, id_map


def _siglip(model: CLIP) -> tuple[dict, dict, dict[int, int]]:
    """(config.json, tensors, token id map) of a `SiglipModel`."""
    v, t = model.config.vision, model.config.text
    _check_vision(v, siglip=True)
    _require(not t.causal, "SiglipModel's text tower is bidirectional",
             "use TextConfig(causal=False)")
    _require(t.pooling == "last", f"SiglipModel pools text at the last position, not "
             f"{t.pooling!r}", "use TextConfig(pooling='last')")
    _require(t.projection_dim is not None, "SiglipModel's text tower ends in a projection "
             "(its head)", "set TextConfig.projection_dim")
    arrays = _nested_arrays(model)
    image, text = arrays["image"], arrays["text"]
    patch = (_square(v.patch_size, "patch size"),) * 2
    out: dict = {}
    out["vision_model.embeddings.patch_embedding.weight"] = _patch_kernel(
        image["patch_embedding"]["projection"]["weight"], patch)
    out["vision_model.embeddings.patch_embedding.bias"] = image["patch_embedding"][
        "projection"].get("bias", np.zeros(v.width, np.float32))
    out["vision_model.embeddings.position_embedding.weight"] = image["position_embedding"][
        "weight"]
    _encoder(image["encoder"], "vision_model.encoder.layers", v.depth, out)
    _norm(image["final_norm"], "vision_model.post_layernorm", out)
    head = image["head"]
    attention = head["attention"]
    out["vision_model.head.probe"] = head["probe"].reshape(1, 1, -1)
    out["vision_model.head.attention.in_proj_weight"] = np.concatenate(
        [attention[p]["weight"].T for p in ("query", "key", "value")])
    out["vision_model.head.attention.in_proj_bias"] = np.concatenate(
        [attention[p]["bias"] for p in ("query", "key", "value")])
    _linear(attention["output"], "vision_model.head.attention.out_proj", out)
    _norm(head["norm"], "vision_model.head.layernorm", out)
    _linear(head["mlp"]["fc1"], "vision_model.head.mlp.fc1", out)
    _linear(head["mlp"]["fc2"], "vision_model.head.mlp.fc2", out)
    out["text_model.embeddings.token_embedding.weight"] = text["token_embedding"]
    out["text_model.embeddings.position_embedding.weight"] = text["position_embedding"]["weight"]
    _encoder(text["encoder"], "text_model.encoder.layers", t.depth, out)
    _norm(text["final_norm"], "text_model.final_layer_norm", out)
    _linear(text["projection"], "text_model.head", out)
    out["logit_scale"] = arrays["logit_scale"].reshape(1)
    out["logit_bias"] = arrays.get("logit_bias", np.zeros((), np.float32)).reshape(1)
    config = {
        "architectures": ["SiglipModel"], "model_type": "siglip",
        "text_config": {"model_type": "siglip_text_model", **_tower_config(t, kind="text"),
                        "vocab_size": t.vocab_size, "max_position_embeddings": t.context_length,
                        "projection_size": t.projection_dim, "bos_token_id": None,
                        "eos_token_id": None, "pad_token_id": None},
        "vision_config": {"model_type": "siglip_vision_model", **_tower_config(v, kind="image"),
                          "image_size": _square(v.image_size, "image size"),
                          "patch_size": patch[0], "num_channels": 3, "vision_use_head": True},
    }
    return config, out, {}


def _write_tokenizer(tokenizer, path: Path, id_map: dict[int, int], context_length: int) -> None:
    """The eqvlp tokenizer with `id_map` applied, adding `[BOS] ... [EOS]`, truncation and
    padding to `context_length` as `eqvlp.tokenizer.tokenize` does."""
    from tokenizers import Tokenizer, processors

    from eqvlp.tokenizer import BOS, EOS, PAD, SPECIAL_TOKENS

    ids = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
    if ids != [0, 1, 2, 3]:
        raise ValueError(f"tokenizer= must be an eqvlp tokenizer (special tokens "
                         f"{SPECIAL_TOKENS} at ids 0-3), got ids {ids}: save other tokenizers "
                         "yourself")
    data = json.loads(tokenizer.to_str())
    data["model"]["vocab"] = {token: id_map.get(i, i) for token, i in data["model"]["vocab"].items()}
    for added in data.get("added_tokens", []):
        added["id"] = id_map.get(added["id"], added["id"])
    data["post_processor"], data["truncation"], data["padding"] = None, None, None
    exported = Tokenizer.from_str(json.dumps(data))
    bos, eos = exported.token_to_id(BOS), exported.token_to_id(EOS)
    exported.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", pair=f"{BOS} $A {EOS} $B {EOS}",
        special_tokens=[(BOS, bos), (EOS, eos)])
    exported.enable_truncation(context_length)
    exported.enable_padding(length=context_length, pad_id=exported.token_to_id(PAD),
                            pad_token=PAD)
    exported.save(str(path))


def to_transformers(model: ContrastiveModel, directory: str | Path, *, tokenizer=None) -> Exported:
    """Writes `model` as a transformers `CLIPModel` or `SiglipModel` `save_pretrained`
    directory: `config.json` and `model.safetensors` (float32).

    **Arguments:**

    - `model`: an eqvlp `CLIP` (CLIP or SigLIP layout, see the module docstring).
    - `directory`: created if needed; existing files of the same names are replaced.
    - `tokenizer`: the eqvlp tokenizer the model was trained with (`tokenizer.json` of its
      run); written as `directory/tokenizer.json`, with the export's id changes, adding BOS
      and EOS and padding to the context length, so `eqvlp eval --transformers DIR` and
      transformers' `PreTrainedTokenizerFast` give the exported model its inputs.

    **Returns:** an `Exported` naming the class and any token ids that moved.
    """
    if not isinstance(model, CLIP):
        raise TypeError(f"to_transformers exports two-tower CLIP/SigLIP models; a "
                        f"{type(model).__name__} (one tower for images and text) has no "
                        "transformers equivalent")
    vision = model.config.vision
    if vision.pooling == "map" and not vision.class_token:
        architecture, (config, tensors, id_map) = "SiglipModel", _siglip(model)
    elif vision.pooling == "cls" and vision.class_token:
        architecture, (config, tensors, id_map) = "CLIPModel", _clip(model)
    else:
        raise ValueError(f"cannot export to transformers: image pooling {vision.pooling!r} "
                         f"with class_token={vision.class_token}: CLIPModel pools the class "
                         "token ('cls'), SiglipModel attends with a MAP head and has no class "
                         "token ('map', class_token=False)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    write_safetensors(directory / "model.safetensors",
                      {k: np.asarray(v, np.float32) for k, v in tensors.items()},
                      metadata={"format": "pt"})
    if tokenizer is not None:
        _write_tokenizer(tokenizer, directory / "tokenizer.json", id_map,
                         model.config.text.context_length)
    return Exported(architecture, directory, id_map)
