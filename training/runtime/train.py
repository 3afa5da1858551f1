"""The shared training loop: any registered recipe, LoRA or QLoRA, optionally DP-SGD."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

from .canaries import make_canaries
from .modeling import choose_placement, load_lora_model, save_adapter
from .progress import ProgressWriter
from .recipes import Recipe, recipe_class
from .spec import JobSpec, SpecError

GRAD_CLIP_NORM = 1.0  # non-DP runs; DP runs clip per example at recipe.dp.max_grad_norm
EVAL_MAX_RECORDS = 1000  # a seeded sample of the holdout is plenty for a loss estimate


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    # warn_only: a few CUDA kernels have no deterministic variant; CPU runs are bit-for-bit.
    torch.use_deterministic_algorithms(True, warn_only=True)


def run_train(spec: JobSpec) -> None:
    import torch

    seed_everything(spec.recipe.seed)
    placement = choose_placement(spec.recipe.quantization)
    recipe = recipe_class(spec.modality)(spec, placement.device)
    train_records = recipe.read_split("train")
    holdout = recipe.read_split("holdout")
    if len(holdout) > EVAL_MAX_RECORDS:
        holdout = random.Random(f"eval:{spec.recipe.seed}").sample(holdout, EVAL_MAX_RECORDS)
    if spec.recipe.canaries is not None:
        train_records = recipe.plant_canaries(train_records, make_canaries(spec.recipe.canaries))

    recipe.load_processor()
    torch.manual_seed(spec.recipe.seed)  # LoRA init draws from the global generator
    model = load_lora_model(recipe, placement, inference=False)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise SpecError("the LoRA configuration left no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=spec.recipe.learning_rate, weight_decay=0.0)

    dp = None
    if spec.recipe.dp is not None:
        from .dp import make_private

        dp = make_private(recipe, model, optimizer, train_records, spec)
        model, optimizer, loader = dp.model, dp.optimizer, dp.loader
    else:
        loader = _loader(recipe, [recipe.encode(r) for r in train_records], spec)

    steps_per_epoch = max(len(loader), 1)
    total_steps = spec.recipe.epochs * steps_per_epoch
    if spec.max_steps is not None:
        total_steps = min(total_steps, spec.max_steps)
    if dp is not None:
        total_steps = dp.total_steps  # the noise was calibrated for exactly this many steps

    out_dir = Path(spec.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = ProgressWriter(out_dir, total_steps=total_steps)
    try:
        _loop(recipe, model, optimizer, loader, progress, params, steps_per_epoch, total_steps, dp_enabled=dp is not None)
        peft_model = dp.unwrap() if dp is not None else model
        eval_batch = max(spec.recipe.batch_size, 16)
        adapted = recipe.eval_loss(peft_model, holdout, batch_size=eval_batch)
        with peft_model.disable_adapter():
            base = recipe.eval_loss(peft_model, holdout, batch_size=eval_batch)
        save_adapter(peft_model, out_dir)
        final = {"step": total_steps, "total_steps": total_steps, "eval_loss_base": base,
                 "eval_loss_adapted": adapted, "qlora": int(placement.qlora)}
        if dp is not None:
            final.update(dp.report(peft_model))
        progress.write(**final)
    finally:
        progress.close()


def _loader(recipe: Recipe, examples: list[dict[str, Any]], spec: JobSpec) -> Any:
    import torch
    from torch.utils.data import DataLoader

    generator = torch.Generator().manual_seed(spec.recipe.seed)
    return DataLoader(
        examples, batch_size=spec.recipe.batch_size, shuffle=True, generator=generator, collate_fn=recipe.collate
    )


def _loop(
    recipe: Recipe,
    model: Any,
    optimizer: Any,
    loader: Any,
    progress: ProgressWriter,
    params: list[Any],
    steps_per_epoch: int,
    total_steps: int,
    *,
    dp_enabled: bool,
) -> None:
    import torch

    model.train()
    step = 0
    while step < total_steps:
        step_at_epoch_start = step
        for batch in loader:
            if step >= total_steps:
                break
            optimizer.zero_grad(set_to_none=True)
            tokens = 0
            loss_value = 0.0
            if _batch_size(batch):
                loss, tokens = recipe.batch_loss(model, recipe.to_device(batch))
                loss.backward()
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    raise RuntimeError(f"training loss became non-finite at step {step + 1}")
            elif dp_enabled:
                # An empty Poisson batch (no patient sampled) must still take its noise-only step:
                # skipping it would tell an observer that nobody was sampled, which the accountant's
                # subsampling argument does not allow. Models cannot run forward on zero rows, so
                # hand Opacus empty per-sample gradients directly; it clips nothing and adds noise.
                for param in params:
                    param.grad_sample = torch.zeros((0, *param.shape), device=param.device, dtype=param.dtype)
            if not dp_enabled:
                torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP_NORM)
            optimizer.step()
            step += 1
            progress.step(step=step, epoch=step / steps_per_epoch, loss=loss_value, tokens=tokens)
        if step == step_at_epoch_start:
            raise RuntimeError("the data loader yielded no batches")


def _batch_size(batch: dict[str, Any]) -> int:
    first = next(iter(batch.values()))
    return int(first.shape[0]) if hasattr(first, "shape") else len(first)
