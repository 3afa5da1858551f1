"""Molecules recipe: a causal LM over SMILES strings and protein sequences, one structure per record.

Everything that makes a causal LM (tokenizer, encoding, padding, next-token losses, greedy
continuation for the extraction probe) is the text recipe's. What differs:
- canaries: the text canary is a sentence with a secret number, which means nothing inside a
  SMILES string or a sequence, so none are planted; the memorisation probe below takes their place
  (the portal resolves ``canaries`` to false for this modality);
- per-patient DP joins a patient's structures as [BOS a EOS][BOS b EOS]..., each exactly as it is
  encoded alone, instead of joining texts with blank lines (a blank line is no chemistry);
- membership inference is per patient (a patient has several compounds and sequences);
- memorisation: sample structures from the adapted model and count exact reproductions of training
  structures versus held-out ones (canonical SMILES when RDKit is importable, which it is wherever
  the worker's virtual environment is bound).
"""

from __future__ import annotations

import random
from typing import Any

from .. import stats
from . import register
from .base import Record, Recipe
from .text import TextRecipe

MEMORISATION_SAMPLES = 128
SAMPLE_BATCH = 32


@register
class MoleculeRecipe(TextRecipe):
    modality = "molecules"
    can_plant_canaries = False
    can_sample = True
    membership_by_patient = True

    # Not the text recipe's: a text canary planted into structures would corrupt them (the portal
    # turns canaries off for recipes that cannot plant them; a spec that asks anyway is refused).
    plant_canaries = Recipe.plant_canaries

    def encode_group(self, records: list[Record]) -> dict[str, Any]:
        ids: list[int] = []
        for record in records:
            ids.extend(self.encode(record)["input_ids"])
        return {"input_ids": ids[: self.max_length]}

    # --- memorisation -----------------------------------------------------------------------

    def sample_texts(self, model: Any, count: int, *, seed: int) -> list[str]:
        """``count`` structures sampled from the start token at temperature 1 (no top-k/top-p), seeded."""
        import torch

        start = self.tokenizer.bos_token_id
        if start is None:
            start = self.tokenizer.eos_token_id
        eos = self.tokenizer.eos_token_id
        torch.manual_seed(seed)
        model.eval()
        texts: list[str] = []
        with torch.no_grad():
            for offset in range(0, count, SAMPLE_BATCH):
                n = min(SAMPLE_BATCH, count - offset)
                prompt = torch.full((n, 1), start, dtype=torch.long, device=self.device)
                generated = model.generate(
                    input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=True, temperature=1.0,
                    top_k=0, top_p=1.0, max_new_tokens=self.max_length - 1, pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=eos,
                )
                for row in generated[:, 1:].tolist():
                    if eos is not None and eos in row:
                        row = row[: row.index(eos)]
                    texts.append(self.tokenizer.decode(row, skip_special_tokens=True))
        return texts

    def memorisation(self, model: Any, members: list[Record], nonmembers: list[Record], *, seed: int) -> dict:
        """Share of samples that reproduce a training structure versus a held-out one, exactly.

        Equally many members and non-members (a seeded sample of the larger group), so the two
        rates are comparable: a structure common to many patients (a usual drug) is as likely to
        be among the non-members, and only an excess on the members' side is memorisation.
        """
        n = min(len(members), len(nonmembers))
        rng = random.Random(f"memorisation:{seed}")
        canonical = _canonicaliser()
        member_set = {canonical(self.text_of(r)) for r in rng.sample(members, n)}
        nonmember_set = {canonical(self.text_of(r)) for r in rng.sample(nonmembers, n)}
        samples = [canonical(text) for text in self.sample_texts(model, MEMORISATION_SAMPLES, seed=seed)]
        member_hits = sum(1 for s in samples if s in member_set)
        nonmember_hits = sum(1 for s in samples if s in nonmember_set)
        total = len(samples)
        return {
            "n_samples": total,
            "n_members": n,
            "n_nonmembers": n,
            "match_threshold": 0,
            "member_match_rate": round(member_hits / total, 6),
            "nonmember_match_rate": round(nonmember_hits / total, 6),
            "p_value": round(min(max(stats.two_proportion_p_value(member_hits, total, nonmember_hits, total), 0.0), 1.0), 6),
        }


def _canonicaliser():
    """Canonical SMILES for strings RDKit parses, the stripped string otherwise (sequences, garbage)."""
    try:
        from rdkit import Chem, RDLogger
    except ImportError:  # a runtime without RDKit: compare the strings as written
        return str.strip
    # Samples are mostly not valid SMILES; RDKit would log each one, with its text, to the job log.
    RDLogger.DisableLog("rdApp.*")

    def canonical(text: str) -> str:
        text = text.strip()
        if not text:
            return text
        mol = Chem.MolFromSmiles(text)
        return Chem.MolToSmiles(mol) if mol is not None else text

    return canonical
