"""DP-SGD through Opacus, accounted per patient (PRV accountant).

Per patient, not per record: all of a patient's records form ONE training example (joined and
truncated to max_seq_length), so Poisson sampling picks patients and the clipping bound holds for
everything one patient contributes. The noise is calibrated for the steps the run will actually
take, and the accountant reports the epsilon spent.

Deliberately not reproducible: the sampling and the noise draw from OS entropy, not from the
recipe seed. A DP guarantee assumes the adversary cannot predict the noise; the seed is part of
the approved recipe that researchers see.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .recipes import Record, Recipe
from .spec import JobSpec, SpecError

ACCOUNTANT = "prv"
EPSILON_TOLERANCE = 0.05


@dataclass
class PrivateTraining:
    model: Any  # GradSampleModule around the peft model
    optimizer: Any  # DPOptimizer
    loader: Any  # DPDataLoader (Poisson sampling over patients)
    engine: Any
    delta: float
    total_steps: int

    def unwrap(self) -> Any:
        """The peft model with Opacus' hooks removed (for evaluation and saving)."""
        self.model.remove_hooks()
        return self.model._module

    def report(self, peft_model: Any) -> dict[str, float]:
        return {
            "epsilon": float(self.engine.get_epsilon(self.delta)),
            "noise_multiplier": float(self.optimizer.noise_multiplier),
            "sample_rate": float(self.loader.sample_rate),
            "lora_moved": int(_lora_b_moved(peft_model)),
        }


def make_private(recipe: Recipe, model: Any, optimizer: Any, records: list[Record], spec: JobSpec) -> PrivateTraining:
    import torch
    from opacus import PrivacyEngine
    from opacus.accountants.utils import get_noise_multiplier
    from torch.utils.data import DataLoader

    dp = spec.recipe.dp
    patients = _group_by_patient(records)
    if len(patients) < 2:
        raise SpecError("DP training needs at least two patients")
    examples = [recipe.encode_group(group) for group in patients]
    loader = DataLoader(examples, batch_size=min(spec.recipe.batch_size, len(examples)), collate_fn=recipe.collate)
    sample_rate = 1 / len(loader)
    total_steps = spec.recipe.epochs * len(loader)
    if spec.max_steps is not None:
        total_steps = min(total_steps, spec.max_steps)
    noise = get_noise_multiplier(
        target_epsilon=dp.target_epsilon,
        target_delta=dp.delta,
        sample_rate=sample_rate,
        steps=total_steps,
        accountant=ACCOUNTANT,
        # The reported epsilon lands within this much below the target; a tighter search costs
        # many more PRV evaluations (seconds each on a CPU) for no practical gain.
        epsilon_tolerance=EPSILON_TOLERANCE,
    )
    # From here on every random draw (Poisson sampling, Gaussian noise) must be unpredictable.
    torch.manual_seed(int.from_bytes(os.urandom(8), "little"))
    engine = PrivacyEngine(accountant=ACCOUNTANT)
    private_model, private_optimizer, private_loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=noise,
        max_grad_norm=dp.max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode="hooks",
    )
    return PrivateTraining(
        model=private_model,
        optimizer=private_optimizer,
        loader=private_loader,
        engine=engine,
        delta=dp.delta,
        total_steps=total_steps,
    )


def _group_by_patient(records: list[Record]) -> list[list[Record]]:
    groups: dict[str, list[Record]] = {}
    for record in records:
        groups.setdefault(record.patient, []).append(record)
    return [groups[p] for p in sorted(groups)]


def _lora_b_moved(model: Any) -> bool:
    """LoRA B starts at zero; if it is still zero, the adapter learned nothing (noise drowned it)."""
    return any(bool(p.detach().abs().sum() > 0) for name, p in model.named_parameters() if "lora_B" in name)
