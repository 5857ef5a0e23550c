"""`eqvlp eval` on a trained run, on a preset with random weights, and on a transformers
directory; bad input is one clear error."""

import json

import numpy as np
import pytest

from eqvlp.cli import main

TINY = ["model=clip-tiny", "batch_size=16", "optim.warmup_steps=1", "eval.tasks=()",
        "data.workers=0",
        "data.num_samples=500", "vocab_size=300"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    main(["train", "--workdir", str(workdir), "--steps", "2", "--no-progress",
          *[a for s in TINY for a in ("--set", s)]])
    return workdir


def test_eval_a_trained_run_every_task(run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    main(["eval", "--checkpoint", str(run), "--data", "shapes", "--num-samples", "40",
          "--batch-size", "16", "--tasks", "zeroshot,retrieval,probe,fewshot", "--shots", "1", "2",
          "--seeds", "2", "--zeroshot-task", "colour", "--json", str(out), "--no-progress"])
    results = json.loads(out.read_text())
    for key in ("zeroshot_top1", "zeroshot_top5", "i2t_r1", "t2i_r10", "linear_probe",
                "fewshot_1_mean", "fewshot_2_std"):
        assert 0.0 <= results[key] <= 1.0, key
    assert results["num_images"] == 40 and results["num_texts"] == 200  # 5 captions each
    printed = capsys.readouterr().out
    assert "zeroshot_top1" in printed and "linear_probe" in printed


def test_eval_a_preset_on_shards_with_a_classes_file(tmp_path):
    from eqvlp.data import write_shards

    rng = np.random.default_rng(0)
    write_shards([{"image": rng.integers(0, 255, (40, 40, 3), np.uint8),
                   "text": f"a {['cat', 'dog'][i % 2]} photo", "label": i % 2}
                  for i in range(20)], tmp_path / "s", samples_per_shard=10)
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({"classnames": ["cat", "dog"],
                                   "templates": ["a {} photo", "a photo of a {}"]}))
    out = tmp_path / "eval.json"
    main(["eval", "--preset", "clip-tiny", "--data", str(tmp_path / "s" / "*.tar"),
          "--zeroshot", str(classes), "--tasks", "zeroshot,retrieval,probe",
          "--batch-size", "8", "--json", str(out), "--no-progress"])
    results = json.loads(out.read_text())
    assert results["num_images"] == 20 and 0.0 <= results["linear_probe"] <= 1.0
    assert results["zeroshot_top5"] == 1.0  # two classes: top-5 always holds the label


def test_eval_a_transformers_directory(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    import tokenizers

    torch.manual_seed(0)
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=99, max_position_embeddings=12, eos_token_id=3,
                         bos_token_id=1, pad_token_id=0, **tower),
        vision_config=dict(image_size=32, patch_size=8, **tower), projection_dim=24)
    transformers.CLIPModel(config).eval().save_pretrained(tmp_path / "hf")
    words = ["a", "the", "red", "green", "blue", "circle", "square", "star", "photo", "of"]
    vocab = {"<pad>": 0, "<|startoftext|>": 1, "<unk>": 2, "<|endoftext|>": 3,
             **{w: i + 4 for i, w in enumerate(words)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", 1), ("<|endoftext|>", 3)])
    tok.save(str(tmp_path / "hf" / "tokenizer.json"))
    out = tmp_path / "eval.json"
    main(["eval", "--transformers", str(tmp_path / "hf"), "--num-samples", "24",
          "--batch-size", "8", "--zeroshot-task", "shape", "--json", str(out), "--no-progress"])
    results = json.loads(out.read_text())
    assert 0.0 <= results["zeroshot_top1"] <= 1.0 and results["num_texts"] == 120


def test_bad_eval_input_is_one_clear_error(run, tmp_path):
    with pytest.raises(SystemExit, match="unknown.*'nope'"):
        main(["eval", "--checkpoint", str(run), "--tasks", "zeroshot,nope"])
    with pytest.raises(SystemExit, match="config.json does not exist"):
        main(["eval", "--checkpoint", str(tmp_path)])
    with pytest.raises(SystemExit, match="needs --zeroshot FILE"):
        main(["eval", "--preset", "clip-tiny", "--data", str(tmp_path / "none*.tar")])
