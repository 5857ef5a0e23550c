"""Import transformers' `CLIPModel` / `SiglipModel` weights into eqvlp models.

Works on a loaded model object (duck-typed: `.config.to_dict()` and `.state_dict()`) or on a
`save_pretrained` directory (`config.json` + safetensors), without importing torch or
transformers. Architecture sizes are read from the weight shapes; head counts, activations,
LayerNorm eps and token ids from the config (with transformers' defaults where a saved config
leaves them out).
"""

import json
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from eqvlp.config_checks import replace
from eqvlp.convert.safetensors import read_checkpoint_dir
from eqvlp.models import CLIP, CLIPConfig, TextConfig, ViTConfig

_ACTIVATIONS = {
    "quick_gelu": "quick_gelu",
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
}

# transformers' defaults for the fields a diff-only saved config.json may leave out.
_DEFAULTS = {
    "clip": {
        "text": dict(num_attention_heads=8, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                     eos_token_id=49407),
        "vision": dict(num_attention_heads=12, hidden_act="quick_gelu", layer_norm_eps=1e-5),
    },
    "siglip": {
        "text": dict(num_attention_heads=12, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6),
        "vision": dict(num_attention_heads=12, hidden_act="gelu_pytorch_tanh",
                       layer_norm_eps=1e-6, vision_use_head=True),
    },
}


def _read(source: Any) -> tuple[dict, dict[str, np.ndarray]]:
    """(config dict, name -> float32 NumPy array) from a model object or a directory."""
    if isinstance(source, (str, Path)):
        directory = Path(source)
        if not (directory / "config.json").exists():
            raise FileNotFoundError(
                f"{directory} has no config.json: pass a directory written by "
                "save_pretrained, or the loaded transformers model"
            )
        config = json.loads((directory / "config.json").read_text())
        tensors = read_checkpoint_dir(directory)
    elif hasattr(source, "config") and hasattr(source, "state_dict"):
        config = source.config.to_dict()
        tensors = {
            name: (t.detach().float() if t.is_floating_point() else t.detach()).cpu().numpy()
            for name, t in source.state_dict().items()
        }
    else:
        raise TypeError(
            f"from_transformers takes a transformers CLIPModel/SiglipModel or a "
            f"save_pretrained directory, got {type(source).__name__}"
        )
    return config, {k: np.asarray(v, np.float32) if v.dtype.kind == "f" else v
                    for k, v in tensors.items()}


def _settings(config: dict, model_type: str, tower: str) -> dict:
    return _DEFAULTS[model_type][tower] | (config.get(f"{tower}_config") or {})


def _activation(name: str) -> str:
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation {name!r} has no eqvlp equivalent: one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def _depth(tensors: dict, prefix: str) -> int:
    return 1 + max(int(k[len(prefix):].split(".")[0]) for k in tensors if k.startswith(prefix))


def _build_config(config: dict, w: dict) -> CLIPConfig:
    model_type = config.get("model_type")
    if model_type not in _DEFAULTS:
        raise ValueError(
            f"model_type {model_type!r} is not supported: eqvlp imports 'clip' and 'siglip'"
        )
    t, v = _settings(config, model_type, "text"), _settings(config, model_type, "vision")
    siglip = model_type == "siglip"
    patch = w["vision_model.embeddings.patch_embedding.weight"]  # (width, 3, ph, pw)
    grid_tokens = w["vision_model.embeddings.position_embedding.weight"].shape[0] - (not siglip)
    side = int(round(grid_tokens**0.5))
    if side * side != grid_tokens:
        raise ValueError(f"vision position table of {grid_tokens} patches is not a square grid")
    if siglip and not v["vision_use_head"]:
        raise ValueError("SigLIP vision towers without the attention-pooling head are not supported")
    vision_width = patch.shape[0]
    vision = ViTConfig(
        image_size=side * patch.shape[2],
        patch_size=(patch.shape[2], patch.shape[3]),
        width=vision_width,
        depth=_depth(w, "vision_model.encoder.layers."),
        num_heads=v["num_attention_heads"],
        mlp_dim=w["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        activation=_activation(v["hidden_act"]),
        layer_norm_eps=v["layer_norm_eps"],
        class_token=not siglip,
        pre_norm=not siglip,
        patch_bias=siglip,
        pooling="map" if siglip else "cls",
        projection_dim=None if siglip else w["visual_projection.weight"].shape[0],
    )
    token_table = w["text_model.embeddings.token_embedding.weight"]
    if siglip:
        pooling, eos, projection = "last", None, w["text_model.head.weight"].shape[0]
    else:
        eos = t["eos_token_id"]
        pooling = "argmax" if eos == 2 else "eos"  # transformers' legacy rule for eos id 2
        projection = w["text_projection.weight"].shape[0]
    text = TextConfig(
        vocab_size=token_table.shape[0],
        context_length=w["text_model.embeddings.position_embedding.weight"].shape[0],
        width=token_table.shape[1],
        depth=_depth(w, "text_model.encoder.layers."),
        num_heads=t["num_attention_heads"],
        mlp_dim=w["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        activation=_activation(t["hidden_act"]),
        layer_norm_eps=t["layer_norm_eps"],
        causal=not siglip,
        pooling=pooling,
        eos_token_id=eos if pooling == "eos" else None,
        projection_dim=projection,
        projection_bias=siglip,
    )
    return CLIPConfig(
        vision=vision,
        text=text,
        loss="sigmoid" if siglip else "softmax",
        max_logit_scale=None if siglip else 100.0,
    )


def _linear(w: dict, name: str, bias: bool = True) -> dict:
    """A torch Linear `(out, in)` becomes an eqvlp Linear `(in, out)`."""
    out = {"weight": w[f"{name}.weight"].T}
    if bias:
        out["bias"] = w[f"{name}.bias"]
    return out


def _block_arrays(w: dict, prefix: str) -> dict:
    attn = f"{prefix}.self_attn"
    return {
        "norm1": {"weight": w[f"{prefix}.layer_norm1.weight"], "bias": w[f"{prefix}.layer_norm1.bias"]},
        "attention": {
            "query": _linear(w, f"{attn}.q_proj"),
            "key": _linear(w, f"{attn}.k_proj"),
            "value": _linear(w, f"{attn}.v_proj"),
            "output": _linear(w, f"{attn}.out_proj"),
        },
        "norm2": {"weight": w[f"{prefix}.layer_norm2.weight"], "bias": w[f"{prefix}.layer_norm2.bias"]},
        "mlp": {"fc1": _linear(w, f"{prefix}.mlp.fc1"), "fc2": _linear(w, f"{prefix}.mlp.fc2")},
    }


def _encoder_arrays(w: dict, prefix: str, depth: int) -> dict:
    layers = [_block_arrays(w, f"{prefix}.{i}") for i in range(depth)]
    return {"layers": jax.tree.map(lambda *xs: np.stack(xs), *layers)}


def _norm(w: dict, name: str) -> dict:
    return {"weight": w[f"{name}.weight"], "bias": w[f"{name}.bias"]}


def _arrays(cfg: CLIPConfig, w: dict) -> dict:
    """Nested dict mirroring the eqvlp model's fields, holding the converted arrays."""
    siglip = cfg.loss == "sigmoid"
    patch = w["vision_model.embeddings.patch_embedding.weight"]
    patch_kernel = patch.transpose(2, 3, 1, 0).reshape(-1, patch.shape[0])
    image = {
        "patch_embedding": {"projection": {"weight": patch_kernel}},
        "position_embedding": {"weight": w["vision_model.embeddings.position_embedding.weight"]},
        "encoder": _encoder_arrays(w, "vision_model.encoder.layers", cfg.vision.depth),
        "final_norm": _norm(w, "vision_model.post_layernorm"),
    }
    if siglip:
        image["patch_embedding"]["projection"]["bias"] = w["vision_model.embeddings.patch_embedding.bias"]
        head = "vision_model.head"
        q, k, v = np.split(w[f"{head}.attention.in_proj_weight"], 3, axis=0)
        qb, kb, vb = np.split(w[f"{head}.attention.in_proj_bias"], 3, axis=0)
        image["head"] = {
            "probe": w[f"{head}.probe"].reshape(1, -1),
            "attention": {
                "query": {"weight": q.T, "bias": qb},
                "key": {"weight": k.T, "bias": kb},
                "value": {"weight": v.T, "bias": vb},
                "output": _linear(w, f"{head}.attention.out_proj"),
            },
            "norm": _norm(w, f"{head}.layernorm"),
            "mlp": {"fc1": _linear(w, f"{head}.mlp.fc1"), "fc2": _linear(w, f"{head}.mlp.fc2")},
        }
    else:
        image["class_token"] = w["vision_model.embeddings.class_embedding"].reshape(1, -1)
        image["pre_norm"] = _norm(w, "vision_model.pre_layrnorm")
        image["projection"] = _linear(w, "visual_projection", bias=False)
    text = {
        "token_embedding": w["text_model.embeddings.token_embedding.weight"],
        "position_embedding": {"weight": w["text_model.embeddings.position_embedding.weight"]},
        "encoder": _encoder_arrays(w, "text_model.encoder.layers", cfg.text.depth),
        "final_norm": _norm(w, "text_model.final_layer_norm"),
        "projection": (_linear(w, "text_model.head") if siglip
                       else _linear(w, "text_projection", bias=False)),
    }
    out = {"image": image, "text": text, "logit_scale": w["logit_scale"].reshape(())}
    if siglip:
        out["logit_bias"] = w["logit_bias"].reshape(())
    return out


def _fill(skeleton: eqx.Module, arrays: dict) -> eqx.Module:
    """Puts each converted array at the matching field of an abstract model, checking shapes."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(skeleton)
    filled = []
    for path, leaf in leaves:
        keys = [p.name for p in path]
        node = arrays
        for k in keys:
            if not isinstance(node, dict) or k not in node:
                raise ValueError(f"no converted weight for eqvlp parameter {'.'.join(keys)}")
            node = node[k]
        if tuple(node.shape) != tuple(leaf.shape):
            raise ValueError(
                f"{'.'.join(keys)}: converted weight has shape {tuple(node.shape)}, "
                f"the eqvlp model expects {tuple(leaf.shape)}"
            )
        filled.append(jnp.asarray(node, jnp.float32))
    return jax.tree_util.tree_unflatten(treedef, filled)


def from_transformers(source: Any, **overrides) -> CLIP:
    """Converts a transformers `CLIPModel`/`SiglipModel`, or its saved directory, to eqvlp.

    **Arguments:**

    - `source`: the loaded model, or a path written by `save_pretrained`.
    - `overrides`: `CLIPConfig` fields to replace, e.g. `dtype="bfloat16"`.

    **Returns:** a `CLIP` whose `encode_image(images)` takes `(batch, H, W, 3)` where
    transformers takes `(batch, 3, H, W)`; its embeddings match `get_image_features` /
    `get_text_features`.
    """
    config, tensors = _read(source)
    cfg = replace(_build_config(config, tensors), "from_transformers", **overrides)
    skeleton = jax.eval_shape(lambda: CLIP(cfg, key=jax.random.key(0)))
    return _fill(skeleton, _arrays(cfg, tensors))
