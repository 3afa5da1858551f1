"""A synthetic, clinical-looking corpus for the runtime tests (no real data anywhere).

Every note mixes template text with random specifics (ages, vitals, doses, dates), so a model
that memorises a note learns something a non-member note cannot tell it: that is what makes
membership inference measurable on a tiny model.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

DIAGNOSES = [
    "community-acquired pneumonia", "acute decompensated heart failure", "NSTEMI", "sepsis of urinary origin",
    "COPD exacerbation", "diabetic ketoacidosis", "acute kidney injury", "cellulitis of the left leg",
    "upper GI bleed", "atrial fibrillation with rapid ventricular response", "ischaemic stroke", "pulmonary embolism",
]
MEDICATIONS = [
    "amoxicillin", "furosemide", "bisoprolol", "apixaban", "metformin", "ramipril", "atorvastatin",
    "prednisolone", "omeprazole", "ceftriaxone", "insulin glargine", "salbutamol",
]
FREQUENCIES = ["once daily", "twice daily", "three times daily", "at night", "every eight hours"]
CLINICS = ["cardiology", "respiratory", "renal", "diabetes", "stroke", "general medicine"]
HISTORY = [
    "Background of hypertension and type 2 diabetes", "Known ischaemic heart disease", "Ex-smoker with 30 pack-years",
    "Lives alone, independent with activities of daily living", "History of chronic kidney disease stage 3",
    "No significant past medical history",
]


def clinical_note(rng: random.Random) -> str:
    sex = rng.choice(["man", "woman"])
    return (
        f"Discharge summary. {rng.randint(19, 94)}-year-old {sex} admitted with {rng.choice(DIAGNOSES)}. "
        f"{rng.choice(HISTORY)}. "
        f"Observations: BP {rng.randint(85, 190)}/{rng.randint(45, 110)}, HR {rng.randint(48, 140)}, "
        f"temperature {rng.randint(355, 401) / 10} C, SpO2 {rng.randint(86, 100)}%. "
        f"Bloods: Hb {rng.randint(70, 170)} g/L, creatinine {rng.randint(45, 420)}, CRP {rng.randint(1, 300)}. "
        f"Treated with {rng.choice(MEDICATIONS)} {rng.choice([5, 10, 20, 40, 80, 250, 500])} mg "
        f"{rng.choice(FREQUENCIES)} for {rng.randint(2, 14)} days. "
        f"Follow-up in {rng.choice(CLINICS)} clinic in {rng.randint(1, 12)} weeks."
    )


def notes(count: int, *, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [clinical_note(rng) for _ in range(count)]


def write_split(path: Path, texts: list[str], *, first_patient: int = 0, records_per_patient: int = 1) -> Path:
    """Write staged JSONL lines in the contract's shape, with per-job pseudonyms."""
    with open(path, "w", encoding="utf-8") as handle:
        for i, text in enumerate(texts):
            patient = first_patient + i // records_per_patient
            handle.write(json.dumps({"record": f"r-{first_patient * 10 + i:06d}", "patient": f"p-{patient:06d}", "text": text}) + "\n")
    return path
