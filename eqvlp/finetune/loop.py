"""`eqvlp finetune`: transfer a pre-trained (or new) model to a downstream task, evaluate it,
and resume exactly.

`finetune(config)` reads top to bottom: the starting model (an `eqvlp train` run, a model
passed in, or a new one), a resolution change, the task (classification through a head on the
fused or concatenated embeddings, or LiT), which parameters learn, the optimiser of
`eqvlp train` with layer-wise decay, restore, then the loop (step, log, evaluate, checkpoint)
and the run's outputs in its directory, as `eqvlp train` writes them: `config.json`,
`metrics.jsonl`, `results.json` (with `accuracy`), `curves.png`, `tokenizer.json`,
`checkpoints/`. It runs on one device.
"""

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from eqvlp import models
from eqvlp.data import DataConfig, Loader, SkipCounts, normalization, zeroshot_task
from eqvlp.finetune.batches import TrainBatches, eval_batches
from eqvlp.finetune.classify import (
    accuracy,
    classification_loss,
    logits,
    trainable_spec,
)
from eqvlp.finetune.config import FinetuneConfig
from eqvlp.finetune.fused import fused_size, model_inputs
from eqvlp.finetune.heads import ClassifierHead
from eqvlp.finetune.layer_decay import layer_decay_factors, scale_by_factors
from eqvlp.finetune.lit import lit_trainable_spec, make_lit_loss
from eqvlp.finetune.tasks import make_task
from eqvlp.models.clippo import CLIPPO
from eqvlp.train import checkpoint
from eqvlp.train.config import to_json
from eqvlp.train.curves import plot_metrics
from eqvlp.train.lock import RunLock
from eqvlp.train.loop import context_length, skipped_steps, text_mode, text_preparer
from eqvlp.train.optim import learning_rate, make_optimizer


class Job(NamedTuple):
    """What the loop needs of a task: parameters, which of them train, the loss, the data
    and the evaluation."""

    params: dict
    spec: dict  # booleans over params: True where a leaf trains
    loss: Callable  # (params, batch) -> (loss, aux)
    device_fields: Callable  # host batch -> the arrays the step reads
    make_batches: Callable  # (saved state or None) -> batches with state(), close(), skipped
    evaluate: Callable  # params -> dict with "accuracy"
    eval_keys: tuple[str, ...]  # drawn in curves.png


def initial_model(cfg: FinetuneConfig, model=None, tokenizer=None):
    """`(model, tokenizer, normalization)`: a given model, an `eqvlp train` run's, or new."""
    if model is not None:
        norm = "signed" if isinstance(model, CLIPPO) else "clip"
        return model, tokenizer, norm
    if cfg.init:
        from eqvlp.train.run import load_run

        model, run_cfg, run_tokenizer = load_run(cfg.init)
        return model, tokenizer or run_tokenizer, run_cfg.normalization
    model_config = models.config(cfg.model) if isinstance(cfg.model, str) else cfg.model
    model = models.presets.MODEL_CLASSES[type(model_config)](model_config,
                                                             key=jax.random.key(cfg.seed))
    return model, tokenizer, "signed" if isinstance(model, CLIPPO) else "clip"


def task_tokenizer(cfg: FinetuneConfig, model, corpus, workdir: Path):
    """A BPE tokenizer for a new token-text model: the run's own when resuming, else one
    trained on the shapes captions and the task's texts, saved as `workdir/tokenizer.json`."""
    from eqvlp.data import captions_corpus
    from eqvlp.tokenizer import load_tokenizer, train_tokenizer

    path = workdir / "tokenizer.json"
    if path.exists():
        return load_tokenizer(path)
    vocab = getattr(getattr(model.config, "text", None), "vocab_size", None) or \
        model.config.vocab_size
    tokenizer = train_tokenizer([*captions_corpus(2000), *corpus],
                                vocab_size=min(cfg.vocab_size, vocab))
    tokenizer.save(str(path))
    return tokenizer


def resolve_fusion(cfg: FinetuneConfig, model) -> str:
    """`band` (CLIPPO's rendered text) or `concat` (text through the text tower)."""
    fusion = cfg.fused.fusion
    if fusion == "auto":
        return "band" if isinstance(model, CLIPPO) else "concat"
    if fusion == "band" and not isinstance(model, CLIPPO):
        raise ValueError(f"fused.fusion=band renders text into the image, which only CLIPPO "
                         f"reads; a {type(model).__name__} reads text with its text tower: "
                         "use fused.fusion=concat (or auto)")
    return fusion


def classification_job(cfg: FinetuneConfig, model, prepare_text, mean_std, workdir: Path,
                       tokenizer=None, pretrained: bool = False) -> tuple[Job, object]:
    """`(parts, model)` of a classification task; the model comes back resized when a
    question band makes its images taller."""
    image_size = model.config.vision.image_size
    task = make_task(cfg.task, image_size=image_size, eval_split=cfg.eval_split,
                     train_samples=cfg.train_samples, eval_samples=cfg.eval_samples,
                     label_key=cfg.label_key, data=cfg.data, eval_data=cfg.eval_data,
                     num_classes=cfg.num_classes, questions=cfg.questions)
    fusion = resolve_fusion(cfg, model)
    if task.inputs == "image_text" and fusion == "band":
        patch = model.config.vision.patch_size
        patch = patch if isinstance(patch, int) else patch[0]
        if cfg.fused.band_height % patch:
            raise ValueError(f"fused.band_height={cfg.fused.band_height} must be a multiple of "
                             f"the patch size {patch}: the band becomes whole rows of patches")
        model = models.resize(model, image_size=fused_size(image_size, cfg.fused.band_height))
    if task.inputs != "image" and fusion == "concat" and prepare_text is None:
        if text_mode(model.config) == "tokens" and tokenizer is None:
            if pretrained:  # a new tokenizer would give the learned embeddings other words
                raise ValueError(f"task {cfg.task} reads text with the model's text tower: "
                                 "pass the tokenizer it was trained with (tokenizer=) or "
                                 "prepare_text=")
            tokenizer = task_tokenizer(cfg, model, task.corpus, workdir)
        prepare_text = text_preparer(model, model.config, tokenizer)
    render = getattr(model.config, "render", None)
    render_options = {} if render is None else {"render": render}

    def make_batch(examples):
        return model_inputs(examples, inputs=task.inputs, fusion=fusion,
                            prepare_text=prepare_text, image_size=image_size,
                            band_height=cfg.fused.band_height, position=cfg.fused.position,
                            **render_options)

    parts_in = {"image": 1, "image_text": 2 - (fusion == "band"),
                "text_pair": 2 - (fusion == "band")}[task.inputs]
    head = ClassifierHead(parts_in * model.config.embed_dim, len(task.classes),
                          hidden_dim=cfg.head_hidden_dim,
                          key=jax.random.fold_in(jax.random.key(cfg.seed), 1))
    params = {"model": model, "head": head}
    eval_data: list = []
    eval_skipped = None

    @eqx.filter_jit
    def predict(params, batch):
        return jnp.argmax(logits(params, batch, normalize=mean_std), axis=-1)

    def evaluate(params):
        nonlocal eval_skipped
        if not eval_data:  # drawn once, reused at every evaluation
            eval_skipped = SkipCounts()
            eval_data.extend(eval_batches(task.eval, task.example, make_batch,
                                          batch_size=cfg.eval_batch_size,
                                          num_samples=cfg.eval_samples, skipped=eval_skipped))
        out = accuracy(lambda batch: predict(params, batch), eval_data, kinds=task.kinds)
        return dict(out, eval_skipped=dict(eval_skipped.counts)) if eval_skipped.total else out

    def loss(params, batch):
        return classification_loss(params, batch, normalize=mean_std)

    def make_batches(state):
        return TrainBatches(task.train, task.example, make_batch, batch_size=cfg.batch_size,
                            seed=cfg.seed, state=state)

    def device_fields(host: dict) -> dict:
        return {k: v for k, v in host.items() if k != "kind"}  # kinds are for the report

    kinds = tuple(f"accuracy_{k}" for k in task.kinds) if len(task.kinds) > 1 else ()
    parts = Job(params, trainable_spec(params, cfg.mode), loss, device_fields, make_batches,
                evaluate, ("accuracy", *kinds))
    return parts, model


def lit_job(cfg: FinetuneConfig, model, prepare_text, mean_std, tokenizer) -> Job:
    """LiT on image-caption data: the shapes captions or caption shards."""
    from eqvlp.eval import load_zeroshot_file
    from eqvlp.eval.evaluate import evaluate, load_eval_set

    params = {"model": model}
    spec = lit_trainable_spec(params)  # raises for one-tower models
    if prepare_text is None:
        if tokenizer is None:
            raise ValueError("LiT trains the text tower on captions and needs the tokenizer: "
                             "start from an eqvlp train run (init=DIR) or pass tokenizer=")
        prepare_text = text_preparer(model, model.config, tokenizer)
    image_size = model.config.vision.image_size
    shards = cfg.data != "shapes"
    if shards and not (cfg.eval_data and cfg.zeroshot):
        raise ValueError("LiT on shards is evaluated zero-shot on labelled shards: set "
                         "eval_data='val/*.tar' and zeroshot=classes.json")
    if shards:
        classnames, templates = load_zeroshot_file(cfg.zeroshot)
        label_key = "label"
    else:
        classnames, templates, label_key = zeroshot_task(cfg.label_key)
    data = DataConfig(data=cfg.data, num_samples=cfg.train_samples, image_size=image_size,
                      text="tokens", context_length=context_length(model.config),
                      batch_size=cfg.batch_size, seed=cfg.seed)
    eval_config = dataclasses.replace(
        data, data=cfg.eval_data or cfg.data, split=cfg.eval_split, num_samples=None,
        label_key=label_key)
    eval_set: list = []

    def run_eval(params):
        if not eval_set:
            eval_set.append(load_eval_set(eval_config, num_samples=cfg.eval_samples))
        out = evaluate(params["model"], eval_set[0], prepare_text=prepare_text,
                       normalize=mean_std, classnames=classnames, templates=templates,
                       batch_size=cfg.eval_batch_size)
        return dict(out, accuracy=out["zeroshot_top1"])

    def make_batches(state):
        return Loader(data, tokenizer=tokenizer, state=state)

    def device_fields(host: dict) -> dict:
        return {"image": host["image"], "text": host["text"]}

    return Job(params, spec, make_lit_loss(model.config.loss, normalize=mean_std),
               device_fields, make_batches, run_eval, ("accuracy", "i2t_r1", "t2i_r1"))


def make_step(optimizer, loss_fn: Callable):
    """`step(trainable, opt_state, frozen, batch) -> (trainable, opt_state, metrics)`."""

    @eqx.filter_jit
    def step(trainable, opt_state, frozen, batch):
        def objective(trainable):
            return loss_fn(eqx.combine(trainable, frozen), batch)

        (loss, aux), grads = eqx.filter_value_and_grad(objective, has_aux=True)(trainable)
        params = eqx.filter(trainable, eqx.is_array)
        updates, opt_state = optimizer.update(grads, opt_state, params, loss=loss)
        leaves = [g for g in jax.tree.leaves(grads) if g is not None]
        grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in leaves))
        return eqx.apply_updates(trainable, updates), opt_state, \
            {"loss": loss, "grad_norm": grad_norm, **aux}

    return step


def finetune(cfg: FinetuneConfig, *, model=None, tokenizer=None,
             prepare_text: Callable | None = None, log=print, progress: bool = True) -> dict:
    """Runs (or resumes) `cfg` in `cfg.workdir`; returns the results also written to
    `DIR/results.json` (`DIR` is `cfg.run_dir`), `accuracy` among them.

    **Arguments:**

    - `model`: start from this model (e.g. `eqvlp.convert.from_transformers(...)`) instead of
      `cfg.init` or a new `cfg.model`.
    - `tokenizer`, `prepare_text`: how strings become the text tower's input (default: the
      init run's tokenizer, or one trained on the task's texts; CLIPPO renders).
    """
    workdir = Path(cfg.run_dir)
    workdir.mkdir(parents=True, exist_ok=True)
    with RunLock(workdir, log=log):  # one run per directory, as `eqvlp train`
        return _finetune(cfg, workdir, model, tokenizer, prepare_text, log, progress)


def _finetune(cfg: FinetuneConfig, workdir: Path, model, tokenizer, prepare_text, log,
              progress) -> dict:
    (workdir / "config.json").write_text(json.dumps(to_json(cfg), indent=1))
    ckpt_dir = workdir / "checkpoints"
    given = model is not None
    model, tokenizer, norm = initial_model(cfg, model, tokenizer)
    if cfg.image_size is not None:  # a new resolution: position embeddings resampled
        model = models.resize(model, image_size=cfg.image_size)
    mean_std = normalization(cfg.normalization or norm)
    if cfg.task == "lit":
        if tokenizer is None and prepare_text is None and (workdir / "tokenizer.json").exists():
            from eqvlp.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(workdir / "tokenizer.json")
        job = lit_job(cfg, model, prepare_text, mean_std, tokenizer)
    else:
        job, model = classification_job(cfg, model, prepare_text, mean_std, workdir, tokenizer,
                                        pretrained=given)
    if tokenizer is not None and not (workdir / "tokenizer.json").exists():
        tokenizer.save(str(workdir / "tokenizer.json"))

    trainable, frozen = eqx.partition(job.params, job.spec)
    factors = layer_decay_factors(trainable, cfg.layer_decay)
    optimizer = optax.chain(make_optimizer(cfg.optim, trainable, cfg.steps),
                            scale_by_factors(factors))
    opt_state = optimizer.init(eqx.filter(trainable, eqx.is_array))
    start, data_state, damaged = 0, None, []
    state = {"trainable": eqx.filter(trainable, eqx.is_array), "opt_state": opt_state}
    for step in checkpoint.committed_steps(ckpt_dir)[::-1]:  # the newest intact one, as train
        try:
            restored, extra = checkpoint.restore(ckpt_dir, state, step=step)
        except checkpoint.CheckpointError as error:
            damaged.append(f"step {step}: {error}")
            continue
        for bad in checkpoint.committed_steps(ckpt_dir):
            if bad > step:  # kept for inspection, no longer resumed from
                log(f"warning: checkpoint step {bad} is damaged; set aside as "
                    f"{checkpoint.set_aside(ckpt_dir, bad)}")
        trainable = eqx.combine(restored["trainable"], trainable)
        opt_state, data_state, start = restored["opt_state"], extra.get("data"), step
        log(f"resumed from step {start} ({ckpt_dir})")
        break
    if damaged and not start:
        raise checkpoint.CheckpointError(
            f"no intact checkpoint in {ckpt_dir}, nothing changed: " + "; ".join(damaged)
            + ". Move the directory away to start afresh")
    step_fn = make_step(optimizer, job.loss)
    schedule = learning_rate(cfg.optim, cfg.steps)
    batches = job.make_batches(data_state)

    metrics_file = (workdir / "metrics.jsonl").open("a")

    def record(entry: dict):
        metrics_file.write(json.dumps(entry) + "\n")
        metrics_file.flush()

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc=f"finetune {cfg.task}", unit="step",
                   dynamic_ncols=True)
    results_eval, last_loss, seen = {}, None, 0
    started = time.perf_counter()
    timed_from, timed = started, 0
    try:
        for step in range(start, cfg.steps):
            host = next(batches)
            batch = {k: jnp.asarray(v) for k, v in job.device_fields(host).items()}
            trainable, opt_state, metrics = step_fn(trainable, opt_state, frozen, batch)
            seen += cfg.batch_size
            timed += cfg.batch_size
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps or step == start:
                last_loss = float(metrics["loss"])
                now = time.perf_counter()
                rate, timed_from, timed = timed / max(now - timed_from, 1e-9), now, 0
                record({"step": done, **{k: float(v) for k, v in metrics.items()},
                        "lr": float(schedule(step)), "examples_per_s": rate,
                        "skipped_steps": skipped_steps(opt_state[0]),
                        "data_skipped": dict(batches.skipped.counts)})
                if bar is not None:
                    bar.set_postfix(loss=f"{last_loss:.4f}", ex_s=f"{rate:.0f}")
            if bar is not None:
                bar.update(1)
            if (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps:
                results_eval = job.evaluate(eqx.combine(trainable, frozen))
                record({"step": done, "eval": results_eval})
                log(f"step {done}: " + ", ".join(f"{k} {v:.3f}" for k, v in results_eval.items()
                                                 if isinstance(v, float)))
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                state = {"trainable": eqx.filter(trainable, eqx.is_array), "opt_state": opt_state}
                checkpoint.save(ckpt_dir, done, state, {"step": done, "data": batches.state()})
                checkpoint.prune(ckpt_dir, cfg.keep_checkpoints)
    finally:
        if bar is not None:
            bar.close()
        batches.close()
        metrics_file.close()
    if start >= cfg.steps:  # nothing left to train: report the finished run's evaluation
        results_eval = job.evaluate(eqx.combine(trainable, frozen))
    wall = time.perf_counter() - started
    results = {
        "task": cfg.task, "mode": "lit" if cfg.task == "lit" else cfg.mode, "init": cfg.init,
        **results_eval, "steps": cfg.steps, "resumed_from": start, "wall_s": wall,
        "examples_per_s": seen / wall if wall > 0 else 0.0, "final_loss": last_loss,
        "skipped_steps": skipped_steps(opt_state[0]),
        "data_skipped": dict(batches.skipped.counts),
    }
    (workdir / "results.json").write_text(json.dumps(results, indent=1))
    plot_metrics(workdir / "metrics.jsonl", workdir / "curves.png", eval_keys=job.eval_keys)
    return results
