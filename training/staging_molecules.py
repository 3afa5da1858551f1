"""Stager for molecules datasets: ``{"text": <canonical SMILES or protein sequence>}``.

The text redactor is not applied to these records. It replaces whole-word surface forms of the
patient's identifiers with placeholders like ``[NAME]``; in a SMILES string brackets are atom
syntax and letters are elements, so a substitution would silently turn one molecule into another
(or into garbage) while still looking like data. It has nothing to do here anyway: the stored
text was produced by the importer (RDKit's canonical SMILES, or a sequence over the amino-acid
alphabet), which cannot carry free text. So each record is checked again as a structure (the file
is read back from the dataset's storage), and declined, never rewritten, when:
- it is no longer a valid structure of its document type (a damaged or altered file), or
- one of the patient's identifiers appears in it as a whole word (the redactor would change it):
  a coincidence in practice, but a structure that spells an identifier is not staged.
Declined records are counted by ``stage_cohort``.
"""

from __future__ import annotations

from governance.importers.molecules import StructureError, checked_structure
from training.staging import StageItem, register_stager


@register_stager("molecules")
def stage_molecule(item: StageItem) -> dict | None:
    raw = item.source(item.record.file_path).read_text(encoding="utf-8")
    try:
        text = checked_structure(item.record.document_type, raw)
    except StructureError:
        return None
    if item.redact(text) != text:
        return None
    return {"text": text}
