"""Importing molecules (CSV, SDF) and protein sequences (FASTA): invalid entries are reported per line and
left out, the valid ones are written all or nothing, and a file with no valid entry changes nothing."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from governance.importers.molecules import StructureError, canonical_smiles, checked_protein, parse_file
from governance.models import Dataset, DirectIdentifier, Patient, Record
from governance.synthetic_molecules import generate_molecules, synthetic_corpus
from portal.models import AuditEvent
from tests import factories

CSV = """patient_id,birth_date,sex,record_id,date,smiles,name
pat-1,1960-02-03,female,mol-1,2021-05-06,OC(=O)c1ccccc1OC(C)=O,aspirin
pat-1,1960-02-03,female,mol-2,2021-05-06,C1CC,
pat-2,1970-01-01,male,mol-3,2022-01-02,C(C)(C)(C)(C)C,
pat-2,1970-01-01,male,mol-4,2022-01-02,CCX,
,1970-01-01,male,mol-5,2022-01-02,CCO,
pat-2,1970-01-01,male,mol-6,2022-01-02,C1=CC=CC=C1,benzene
pat-2,1970-01-01,male,mol-1,2022-01-02,CCO,
pat-3,1980-01-01,female,mol-7,1979-06-01,CCO,
"""
FASTA = """MKTAYIAKQR
>seq-1 patient=p1 birth_date=1960-01-01 sex=female date=2020-02-02 name=KRAS_G12D
MTEYKLVVVGADGVGKSALTIQLIQNHFV
DEYDPTIEDSYRKQ*
>seq-2 patient=p1 birth_date=1960-01-01 sex=female date=2020-02-02
MTEYKLVJVGA
>seq-3 patient=p2 birth_date=1975-01-01 sex=male date=2020-02-02
>seq-4 birth_date=1960-01-01 sex=female date=2020-02-02
MTEYKLVVVG
>seq-5 patient=p2 birth_date=1975-01-01 sex=male date=2021-07-08
mteyklvvvgaggvgk
"""


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _run(*args, **options) -> str:
    out = StringIO()
    call_command(*args, stdout=out, **options)
    return out.getvalue()


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _sdf(tmp_path: Path) -> Path:
    """Two good molecules, one whose carbon has five bonds, one whose counts line is garbage."""
    from rdkit import Chem

    blocks = []
    for smiles, patient, record in (("OCC", "007", "sdf-1"), ("Oc1ccccc1", "p2", "sdf-2")):
        mol = Chem.MolFromSmiles(smiles)
        mol.SetProp("_Name", f"compound {record}")
        for key, value in {"patient_id": patient, "birth_date": "1950-01-01", "sex": "male", "record_id": record,
                           "date": "2020-01-01"}.items():
            mol.SetProp(key, value)
        blocks.append(Chem.MolToMolBlock(mol) + "".join(f"> <{k}>\n{mol.GetProp(k)}\n\n" for k in
                                                       ("patient_id", "birth_date", "sex", "record_id", "date")) + "$$$$\n")
    pentavalent = Chem.MolToMolBlock(Chem.MolFromSmiles("C(C)(C)(C)(C)C", sanitize=False))
    blocks.insert(1, pentavalent + "> <patient_id>\np3\n\n> <record_id>\nsdf-bad\n\n$$$$\n")
    blocks.append("garbage\n  RDKit\n\n  x  y  0  0  0  0  0  0  0  0999 V2000\nM  END\n$$$$\n")
    return _write(tmp_path, "compounds.sdf", "".join(blocks))


# Structures ---------------------------------------------------------------------------------------

def test_canonical_smiles_equal_for_one_molecule_written_two_ways():
    assert canonical_smiles("C1=CC=CC=C1") == canonical_smiles("c1ccccc1") == ("c1ccccc1", 6)


@pytest.mark.parametrize("smiles, reason", [
    ("C1CC", "invalid SMILES: SMILES Parse Error: unclosed ring for input: 'C1CC'"),
    ("C(C)(C)(C)(C)C", "invalid SMILES: Explicit valence for atom # 0 C, 5, is greater than permitted"),
    ("", "empty SMILES"),
    ("[H][H]", "SMILES has no heavy atoms"),
    ("CC O", "SMILES contains whitespace"),
])
def test_canonical_smiles_refuses_with_rdkits_reason(smiles, reason, capfd):
    with pytest.raises(StructureError) as excinfo:
        canonical_smiles(smiles)
    assert str(excinfo.value) == reason
    assert capfd.readouterr().err == ""  # RDKit's own log is captured, not printed


def test_checked_protein_normalises_and_refuses_non_residues():
    assert checked_protein(" mkta yiak\n*") == "MKTAYIAK"
    with pytest.raises(StructureError, match=r"^'J' at position 3 is not an amino-acid letter"):
        checked_protein("MKJAYIAK")
    with pytest.raises(StructureError, match=r"^sequence of 4 residues; allowed 5 to 5000$"):
        checked_protein("MKTA")


# Files --------------------------------------------------------------------------------------------

def test_parse_csv_reports_each_invalid_line_with_its_reason(tmp_path):
    parsed = parse_file(_write(tmp_path, "compounds.csv", CSV))

    assert [(r.record_id, r.patient_key, r.text, r.document_type, r.age_at_record) for r in parsed.records] == [
        ("mol-1", "pat-1", "CC(=O)Oc1ccccc1C(=O)O", "smiles", 61),
        ("mol-6", "pat-2", "c1ccccc1", "smiles", 52),
    ]
    assert dict(parsed.records[0].attributes) == {"kind": "small_molecule", "heavy_atoms": 13, "name": "aspirin"}
    assert [str(e) for e in parsed.invalid] == [
        "line 3 (mol-2): invalid SMILES: SMILES Parse Error: unclosed ring for input: 'C1CC'",
        "line 4 (mol-3): invalid SMILES: Explicit valence for atom # 0 C, 5, is greater than permitted",
        "line 5 (mol-4): invalid SMILES: SMILES Parse Error: syntax error while parsing: CCX",
        "line 6 (mol-5): missing patient_id (every entry belongs to a patient)",
        "line 8 (mol-1): record_id already used on line 2",
        "line 9 (mol-7): date 1979-06-01 is before the patient's birth date",
    ]
    assert [p.key for p in parsed.patients] == ["pat-1", "pat-2"]


def test_parse_sdf_reads_properties_and_reports_broken_records(tmp_path):
    parsed = parse_file(_sdf(tmp_path))

    assert [(r.record_id, r.patient_key, r.text) for r in parsed.records] == [("sdf-1", "007", "CCO"),
                                                                             ("sdf-2", "p2", "Oc1ccccc1")]
    assert dict(parsed.records[0].attributes)["name"] == "compound sdf-1"
    assert [(e.record_id, e.reason) for e in parsed.invalid] == [
        ("sdf-bad", "invalid molecule: Explicit valence for atom # 0 C, 5, is greater than permitted"),
        ("", "unreadable SDF record: ERROR: Cannot convert '  x' to unsigned int on line 4"),
    ]
    text = (tmp_path / "compounds.sdf").read_text().splitlines()
    assert [text[e.line - 1] for e in parsed.invalid] == ["", "garbage"]  # each entry's first line (RDKit's title line)


def test_parse_fasta_reports_bad_letters_empty_sequences_and_missing_headers(tmp_path):
    parsed = parse_file(_write(tmp_path, "variants.fasta", FASTA))

    assert [(r.record_id, r.patient_key, r.text, r.document_type) for r in parsed.records] == [
        ("seq-1", "p1", "MTEYKLVVVGADGVGKSALTIQLIQNHFVDEYDPTIEDSYRKQ", "protein_sequence"),
        ("seq-5", "p2", "MTEYKLVVVGAGGVGK", "protein_sequence"),
    ]
    assert dict(parsed.records[0].attributes) == {"kind": "protein", "length": 43, "name": "KRAS_G12D"}
    assert [str(e) for e in parsed.invalid] == [
        "line 1: sequence line before any '>' header (an entry needs a header naming its record and patient)",
        "line 5 (seq-2): 'J' at position 8 is not an amino-acid letter (allowed: the 20 standard amino acids and X, B, Z, U, O)",
        "line 7 (seq-3): empty sequence",
        "line 8 (seq-4): missing patient_id (every entry belongs to a patient)",
    ]


# The command ----------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_import_molecules_writes_valid_entries_and_lists_invalid_ones(tmp_path):
    factories.steward()
    path = _write(tmp_path, "compounds.csv", CSV)

    printed = _run("import_molecules", str(path), dataset="compounds")
    again = _run("import_molecules", str(path), dataset="compounds")

    assert printed.splitlines()[0] == f"invalid entry: {path}: line 3 (mol-2): invalid SMILES: SMILES Parse Error: unclosed ring for input: 'C1CC'"
    assert printed.splitlines()[-1] == "compounds: 2 patients and 2 records added, 0 already present, 6 invalid entries left out."
    assert again.splitlines()[-1] == "compounds: 0 patients and 0 records added, 2 already present, 6 invalid entries left out."
    dataset = Dataset.objects.get(name="compounds")
    assert dataset.modality == "molecules"
    rows = {r.source_id: r for r in Record.objects.filter(dataset=dataset)}
    assert sorted(rows) == ["mol-1", "mol-6"]
    assert rows["mol-1"].document_type == "smiles" and rows["mol-1"].age == 61
    assert (dataset.storage_dir / rows["mol-1"].file_path).read_text() == "CC(=O)Oc1ccccc1C(=O)O"
    assert set(DirectIdentifier.objects.filter(patient__dataset=dataset).values_list("kind", flat=True)) == {
        "source_id", "birth_date"}


@pytest.mark.django_db
def test_import_molecules_fasta_into_the_same_dataset(tmp_path):
    factories.steward()
    _run("import_molecules", str(_write(tmp_path, "compounds.csv", CSV)), dataset="tumour")

    printed = _run("import_molecules", str(_write(tmp_path, "variants.txt", FASTA)), dataset="tumour", fmt="fasta")

    assert printed.splitlines()[-1] == "tumour: 2 patients and 2 records added, 0 already present, 4 invalid entries left out."
    assert sorted(Record.objects.filter(dataset__name="tumour").values_list("document_type", flat=True)) == [
        "protein_sequence", "protein_sequence", "smiles", "smiles"]


@pytest.mark.django_db
@pytest.mark.parametrize("name, text, message", [
    ("bad.csv", "patient_id,birth_date,sex,record_id,date,smiles\np1,1960-01-01,female,m1,2020-01-01,C1CC\n"
                "p1,1960-01-01,female,m2,2020-01-01,CCX\n",
     "Nothing imported: none of the 2 entries of {path} is valid."),
    ("bad.fasta", "MKTAYIAK\n>s1 patient=p1 birth_date=1960-01-01 sex=female date=2020-01-01\n\n",
     "Nothing imported: none of the 2 entries of {path} is valid."),
    ("cols.csv", "patient,record_id,smiles,colour\np1,m1,CCO,red\n",
     "Nothing imported. {path}: line 1: missing column(s) patient_id, birth_date, sex, date; unknown column(s) "
     "patient, colour (columns: patient_id, birth_date, sex, record_id, date, smiles, optionally name)"),
    ("mol.txt", "CCO\n", "Nothing imported. {path}: cannot tell the format from the suffix '.txt'; pass --format csv|sdf|fasta"),
])
def test_import_molecules_without_a_valid_entry_changes_nothing(tmp_path, settings, name, text, message):
    factories.steward()
    path = _write(tmp_path, name, text)
    events = AuditEvent.objects.count()

    with pytest.raises(CommandError) as excinfo:
        _run("import_molecules", str(path), dataset="nothing")

    assert str(excinfo.value) == message.format(path=path)
    assert not Dataset.objects.filter(name="nothing").exists()
    assert (Patient.objects.count(), Record.objects.count(), AuditEvent.objects.count()) == (0, 0, events)
    assert [p for p in settings.DATA_ROOT.rglob("*") if p.is_file()] == []


@pytest.mark.django_db
def test_import_molecules_strict_refuses_a_file_with_an_invalid_entry(tmp_path):
    factories.steward()

    with pytest.raises(CommandError, match=r"^Nothing imported \(--strict\): 6 of the 8 entries of .* are invalid\.$"):
        _run("import_molecules", str(_write(tmp_path, "compounds.csv", CSV)), dataset="strict", strict=True)

    assert not Dataset.objects.filter(name="strict").exists() and Record.objects.count() == 0


def test_import_molecules_sdf_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.sdf"
    path.write_bytes(b"title\n  RDKit\n\n> <name>\ncaf\xe9\n")

    with pytest.raises(CommandError, match=r"latin1\.sdf: line 5 is not UTF-8$"):
        _run("import_molecules", str(path), dataset="x")


# Synthetic data --------------------------------------------------------------------------------------

def test_generate_molecules_is_deterministic_and_every_structure_valid():
    first, second = generate_molecules(12, seed=3), generate_molecules(12, seed=3)

    assert first == second
    assert generate_molecules(12, seed=4).records != first.records
    by_patient = {}
    for record in first.records:
        by_patient.setdefault(record.patient_key, []).append(record.document_type)
        if record.document_type == "smiles":
            assert canonical_smiles(record.text)[0] == record.text
        else:
            assert checked_protein(record.text) == record.text
    assert len(by_patient) == 12 and all(2 <= types.count("smiles") <= 4 for types in by_patient.values())
    assert {"smiles", "protein_sequence"} == {r.document_type for r in first.records}


def test_synthetic_corpus_is_deterministic_and_differs_by_seed():
    corpus = synthetic_corpus(200, seed=1001)

    assert corpus == synthetic_corpus(200, seed=1001) != synthetic_corpus(200, seed=1002)
    assert len(set(corpus)) > 180
    assert not set(corpus) & {r.text for r in generate_molecules(30, seed=7).records if r.document_type == "smiles"}


@pytest.mark.django_db
def test_generate_synthetic_molecules_twice_adds_nothing():
    factories.steward()
    generated = generate_molecules(6, 11)

    first = _run("generate_synthetic_molecules", patients=6, seed=11, dataset="synth-mol")
    second = _run("generate_synthetic_molecules", patients=6, seed=11, dataset="synth-mol")

    n = len(generated.records)
    assert first == f"synth-mol: 6 patients and {n} records added, 0 already present.\n"
    assert second == f"synth-mol: 0 patients and 0 records added, {n} already present.\n"
    assert Dataset.objects.get(name="synth-mol").modality == "molecules"
