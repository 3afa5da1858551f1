"""Synthetic molecules and protein sequences of synthetic patients (the molecules modality's demo data).

Each patient of ``generate_hospital(n, seed)`` (the same invented people as the synthetic
hospital's notes, with their birth dates and visit dates) gets two to four compounds from their
samples and up to two sequences of a variant protein. Compounds are drug-like SMILES assembled
from fragments (aryl head, linker, optional ring core, linker, tail) and checked and canonicalised
with RDKit; the fragment grammar gives a few hundred thousand distinct molecules, so two patients
rarely share one and a model that reproduces one has learnt that patient's. Protein sequences are
windows of a small fixed library of invented "genes" carrying one to three point substitutions
(a tumour's variants). The patients' fragments and genes follow a fixed preference (the hospital's
treatments and tumour types); the corpus draws them uniformly. Only ``random.Random`` seeded from
the arguments is used: equal arguments give equal results.

``synthetic_corpus(n, seed)`` gives sequences without patients, for training a tokenizer and
pre-training a base model; use a seed other than the dataset's so the base model has not seen it.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

from governance.importers.molecules import PROTEIN_TYPE, SMILES_TYPE, StructureError, canonical_smiles
from governance.records import ClinicalRecord, PatientIdentity, age_on
from governance.synthetic import generate_hospital

__all__ = ["SyntheticMolecules", "generate_molecules", "random_protein", "random_smiles", "synthetic_corpus"]

# Fragments written so that plain concatenation bonds the next fragment to the right atom: a head
# ends on the atom that bonds on (after any closed branch), a core starts on one bonding atom and
# ends on the other, a tail starts on the atom that bonds back.
HEADS = (
    "c1ccccc1", "Fc1ccc(cc1)", "Clc1ccc(cc1)", "Brc1cccc(c1)", "COc1ccc(cc1)", "Cc1ccc(cc1)",
    "FC(F)(F)c1ccc(cc1)", "N#Cc1ccc(cc1)", "Cc1ccc(C)c(c1)", "c1ccc2ccccc2c1", "c1ccncc1", "c1ccsc1",
    "C1CCCCC1", "CC(C)", "O=C1CCCN1", "c1ccc2[nH]ccc2c1", "CC(C)(C)OC(=O)N", "Oc1ccc(cc1)",
)
LINKERS = (
    "", "C", "CC", "O", "N", "S", "C(=O)", "C(=O)N", "NC(=O)", "C(=O)O", "OC", "CN", "NC(=O)N",
    "S(=O)(=O)N", "NS(=O)(=O)", "CC(=O)N", "C(C)N", "OCC",
)
CORES = (
    "c1ccc(cc1)", "c1cccc(c1)", "C1CCN(CC1)", "N1CCN(CC1)", "c1ccc(nc1)", "C1CCC(CC1)", "c1cc(sc1)",
    "c1cnc(nc1)", "C1CN(C1)",
)
TAILS = (
    "c1ccccc1", "c1ccc(F)cc1", "c1ccc(Cl)cc1", "c1ccc(OC)cc1", "c1ccncc1", "c1cccnc1", "C1CCNCC1",
    "N1CCOCC1", "N1CCN(C)CC1", "N1CCCC1", "C(=O)O", "C(=O)N", "C(F)(F)F", "CC(C)C", "C1CC1",
    "c1ccc2[nH]ccc2c1", "c1nccs1", "c1cnc(N)nc1", "N(C)C", "O", "C#N", "CCO", "c1ccco1", "S(=O)(=O)C",
    "C(=O)OC", "c1ccc(O)cc1", "n1ccnc1",
)
HEAVY_ATOMS = (8, 40)  # drug-like sizes

# Amino-acid background frequencies (UniProt, rounded), for the invented genes.
_RESIDUES = "ACDEFGHIKLMNPQRSTVWY"
_FREQUENCIES = (8.3, 1.4, 5.5, 6.8, 3.9, 7.1, 2.3, 5.9, 5.8, 9.7, 2.4, 4.1, 4.7, 3.9, 5.5, 6.6, 5.4, 6.9, 1.1, 2.9)
_GENES = 8
_GENE_LENGTH = 160
PROTEIN_WINDOW = (24, 64)


@dataclass(frozen=True)
class SyntheticMolecules:
    seed: int
    patients: tuple[PatientIdentity, ...]
    records: tuple[ClinicalRecord, ...]


def _genes() -> tuple[str, ...]:
    # One fixed library for every seed: the corpus and every dataset share the "genes", as
    # patients share a genome; what differs between patients is their windows and variants.
    rng = random.Random("rapha-synthetic-genes")
    return tuple("M" + "".join(rng.choices(_RESIDUES, weights=_FREQUENCIES, k=_GENE_LENGTH - 1)) for _ in range(_GENES))


GENES = _genes()


def _zipf_weights(items: tuple[str, ...], label: str) -> tuple[float, ...]:
    """Weights 1, 1/2, 1/3, ... over a fixed shuffle of ``items``: the hospital's own chemistry."""
    ranks = list(range(len(items)))
    random.Random(f"rapha-hospital-profile:{label}").shuffle(ranks)
    return tuple(1 / (rank + 1) for rank in ranks)


# The patients' compounds and proteins lean towards some fragments and genes (the hospital's
# treatments and tumour types); the corpus a base model is pre-trained on draws them uniformly, as
# general chemistry would. So a fine-tune has something to learn that is common to the hospital's
# patients, not only each patient's own structures, as with real data on a general base model.
_PROFILE = {name: _zipf_weights(items, name) for name, items in
            (("heads", HEADS), ("linkers", LINKERS), ("cores", CORES), ("tails", TAILS))}
_GENE_PROFILE = (8.0, 4.0, 2.0, 1.0, 1.0, 0.5, 0.5, 0.5)


def random_smiles(rng: random.Random, *, hospital: bool = False) -> tuple[str, int]:
    """A drug-like molecule as (canonical SMILES, heavy atoms), drawn from the fragment grammar.

    ``hospital``: with the patients' fragment preferences instead of uniformly.
    """
    def pick(items: tuple[str, ...], name: str) -> str:
        return rng.choices(items, weights=_PROFILE[name])[0] if hospital else rng.choice(items)

    while True:
        parts = [pick(HEADS, "heads"), pick(LINKERS, "linkers")]
        if rng.random() < 0.6:
            parts += [pick(CORES, "cores"), pick(LINKERS, "linkers")]
        parts.append(pick(TAILS, "tails"))
        try:
            smiles, heavy = canonical_smiles("".join(parts))
        except StructureError:  # e.g. a linker pair the valences refuse; draw again
            continue
        if HEAVY_ATOMS[0] <= heavy <= HEAVY_ATOMS[1]:
            return smiles, heavy


def random_protein(rng: random.Random, *, hospital: bool = False) -> str:
    """A window of one of the library's genes with one to three point substitutions.

    ``hospital``: some genes (the hospital's common tumour types) more often than others.
    """
    gene = rng.choices(GENES, weights=_GENE_PROFILE)[0] if hospital else rng.choice(GENES)
    length = rng.randint(*PROTEIN_WINDOW)
    start = rng.randrange(len(gene) - length + 1)
    residues = list(gene[start:start + length])
    for position in rng.sample(range(length), rng.randint(1, 3)):
        residues[position] = rng.choice([r for r in _RESIDUES if r != residues[position]])
    return "".join(residues)


def generate_molecules(patients: int, seed: int) -> SyntheticMolecules:
    """``patients`` synthetic patients with 2-4 compounds and 0-2 protein sequences each."""
    hospital = generate_hospital(patients, seed)
    visits: dict[str, list] = defaultdict(list)
    for record in hospital.records:
        visits[record.patient_key].append(record.record_date)
    rng = random.Random(f"molecules:{seed}")
    records: list[ClinicalRecord] = []
    counters = {SMILES_TYPE: 0, PROTEIN_TYPE: 0}
    for identity in hospital.patients:
        entries = [SMILES_TYPE] * rng.randint(2, 4) + [PROTEIN_TYPE] * rng.choice((0, 1, 1, 2))
        for document_type in entries:
            counters[document_type] += 1
            if document_type == SMILES_TYPE:
                text, heavy = random_smiles(rng, hospital=True)
                record_id, attributes = f"mol-{counters[document_type]:07d}", {"kind": "small_molecule", "heavy_atoms": heavy}
            else:
                text = random_protein(rng, hospital=True)
                record_id, attributes = f"seq-{counters[document_type]:07d}", {"kind": "protein", "length": len(text)}
            record_date = rng.choice(visits[identity.key])
            records.append(ClinicalRecord(
                record_id=record_id, patient_key=identity.key, record_date=record_date, document_type=document_type,
                conditions=(), text=text, age_at_record=age_on(identity.birth_date, record_date),
                attributes=tuple(sorted(attributes.items())),
            ))
    return SyntheticMolecules(seed=seed, patients=hospital.patients, records=tuple(records))


def synthetic_corpus(n: int, seed: int) -> list[str]:
    """``n`` sequences (about four compounds to each protein sequence), for tokenizers and pre-training."""
    rng = random.Random(f"molecule-corpus:{seed}")
    return [random_protein(rng) if rng.random() < 0.25 else random_smiles(rng)[0] for _ in range(n)]
