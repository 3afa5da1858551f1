"""A synthetic hospital: patients, clinical documents with coded diagnoses, and FHIR R4 export.

Everything here is invented and deterministic for a seed: ``generate_hospital(n, seed)`` always
returns equal objects, and ``write_fhir_bundles`` always writes byte-identical files for them. Only
``random.Random(seed)`` is used; no global random state, no clock, no external data.

The text reads like UK hospital paperwork (discharge summaries, clinic letters, operation notes,
radiology and pathology reports, ward progress notes). Every document carries the patient's fake
direct identifiers the way real notes do (name, DOB, MRN, NHS number, often a telephone number), so
that identifier scans have something to find, and every coded condition of a record is written into
its text as ICD-10 and SNOMED CT codes. Identifiers are deliberately fake: NHS numbers come from
the 999 test range (with a valid modulus-11 check digit) and telephone numbers from Ofcom's ranges
reserved for drama.
"""

from __future__ import annotations

import base64
import json
import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from governance.records import (
    DOCUMENT_TYPES,
    ICD10_URI,
    SNOMED_URI,
    ClinicalRecord,
    PatientIdentity,
    age_on,
    format_nhs_number,
    nhs_check_digit,
)

__all__ = [
    "CONDITIONS",
    "DOCUMENT_TYPES",
    "ClinicalRecord",
    "ConditionInfo",
    "PatientIdentity",
    "SyntheticHospital",
    "generate_hospital",
    "synthetic_corpus",
    "write_fhir_bundles",
]

# --------------------------------------------------------------------------------------------
# FHIR constants (shared with governance.importers.fhir)
# --------------------------------------------------------------------------------------------

MRN_SYSTEM = "https://rapha.example.org/fhir/sid/mrn"
NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
DOCUMENT_TYPE_SYSTEM = "https://rapha.example.org/fhir/CodeSystem/document-type"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
LOINC_URI = "http://loinc.org"
SEARCHSET_BASE = "https://fhir.rapha.example.org/R4"

# LOINC document codes used when writing; the importer maps them back.
DOCUMENT_TYPE_LOINC = {
    "discharge_summary": ("18842-5", "Discharge summary"),
    "clinic_letter": ("11488-4", "Consult note"),
    "operative_note": ("11504-8", "Surgical operation note"),
    "radiology_report": ("18748-4", "Diagnostic imaging study"),
    "pathology_report": ("11526-1", "Pathology study"),
    "progress_note": ("11506-3", "Progress note"),
}
DOCUMENT_TYPE_TITLES = {
    "discharge_summary": "Discharge summary",
    "clinic_letter": "Clinic letter",
    "operative_note": "Operation note",
    "radiology_report": "Radiology report",
    "pathology_report": "Pathology report",
    "progress_note": "Progress note",
}

_UUID_NAMESPACE = uuid.UUID("6f1c1d0e-5a43-4c55-9d1e-7a0b5c2f9e11")

# --------------------------------------------------------------------------------------------
# Catalogue of conditions
# --------------------------------------------------------------------------------------------

Med = tuple[str, str, str, str]  # (drug, dose, route, frequency code)


@dataclass(frozen=True)
class ConditionInfo:
    key: str
    name: str
    icd10: str
    snomed: str
    kind: str  # "chronic" | "acute" | "surgical" | "fracture" | "cancer"
    specialty: str
    meds: tuple[Med, ...] = ()
    complaint: tuple[str, ...] = ()
    history: tuple[str, ...] = ()
    exam: tuple[str, ...] = ()
    imaging: tuple[tuple[str, str, str], ...] = ()  # (examination, findings, impression)
    pathology: tuple[tuple[str, str, str, str], ...] = ()  # (specimen, macro, micro, conclusion)
    procedure: tuple[tuple[str, str, str], ...] = ()  # (operation, findings, steps)
    course: tuple[str, ...] = ()
    plan: tuple[str, ...] = ()
    labs: tuple[str, ...] = ()
    vitals: tuple[str, ...] = ()
    sex: str | None = None
    min_age: int = 18
    max_onset_age: int = 120  # oldest age at which a new diagnosis is plausible
    los: tuple[int, int] = (2, 7)

    @property
    def codes(self) -> tuple[tuple[str, str], tuple[str, str]]:
        return (("icd10", self.icd10), ("snomed", self.snomed))


def _c(**kw) -> ConditionInfo:
    for name in ("complaint", "history", "exam", "course", "plan", "labs", "vitals"):
        if name in kw and isinstance(kw[name], str):
            kw[name] = (kw[name],)
    return ConditionInfo(**kw)


CONDITIONS: tuple[ConditionInfo, ...] = (
    # ---- chronic -----------------------------------------------------------------------------
    _c(key="t2dm", name="Type 2 diabetes mellitus", icd10="E11.9", snomed="44054006", kind="chronic",
       specialty="Diabetes and Endocrinology",
       meds=(("Metformin", "1 g", "oral", "BD"), ("Gliclazide", "80 mg", "oral", "BD"),
             ("Empagliflozin", "10 mg", "oral", "OD"), ("Sitagliptin", "100 mg", "oral", "OD")),
       history=("Diabetes control has been {trend} since the last review; home capillary glucose readings are mostly {cbg} mmol/L.",
                "No hypoglycaemic episodes reported. Last retinal screening showed background retinopathy only.",
                "Foot check today: pulses palpable, monofilament sensation intact bilaterally."),
       plan=("Continue current glucose-lowering therapy and repeat HbA1c in 3 months.",
             "Referred to the structured education programme (DESMOND).",
             "Annual foot and retinal screening are up to date."),
       labs=("hba1c", "glucose"), min_age=25),
    _c(key="t1dm", name="Type 1 diabetes mellitus", icd10="E10.9", snomed="46635009", kind="chronic",
       specialty="Diabetes and Endocrinology",
       meds=(("Insulin glargine", "18 units", "SC", "ON"), ("Insulin aspart", "4-8 units", "SC", "TDS")),
       history=("Uses a basal-bolus regimen and carbohydrate counts; flash glucose monitoring time in range is {tir}%.",
                "Two minor hypoglycaemic episodes in the last month, both self-treated."),
       plan=("Adjust the evening basal dose by 2 units and review the download in 6 weeks.",
             "Sick-day rules and ketone testing reinforced."),
       labs=("hba1c", "glucose"), max_onset_age=40),
    _c(key="htn", name="Essential hypertension", icd10="I10", snomed="38341003", kind="chronic",
       specialty="General Medicine",
       meds=(("Amlodipine", "5 mg", "oral", "OD"), ("Ramipril", "5 mg", "oral", "OD"),
             ("Indapamide", "2.5 mg", "oral", "OM"), ("Losartan", "50 mg", "oral", "OD")),
       history=("Home blood pressure average is {homebp} mmHg.",
                "Tolerating antihypertensives without postural symptoms."),
       plan=("Titrate antihypertensive therapy to a clinic target below 140/90 mmHg.",
             "Check U&E two weeks after any dose change."),
       vitals=("hypertension",)),
    _c(key="lipids", name="Hyperlipidaemia", icd10="E78.5", snomed="55822004", kind="chronic",
       specialty="General Medicine",
       meds=(("Atorvastatin", "20 mg", "oral", "ON"),),
       history=("On a statin with no muscle symptoms.",),
       plan=("Continue atorvastatin; repeat lipid profile in 12 months.",),
       labs=("lipids",)),
    _c(key="copd", name="Chronic obstructive pulmonary disease", icd10="J44.9", snomed="13645005", kind="chronic",
       specialty="Respiratory Medicine",
       meds=(("Tiotropium", "18 micrograms", "inhaled", "OD"), ("Salbutamol", "100 micrograms 2 puffs", "inhaled", "PRN"),
             ("Beclometasone/formoterol 100/6", "2 puffs", "inhaled", "BD")),
       history=("Ex-smoker of {packyears} pack-years. MRC dyspnoea grade {mrc}.",
                "{exac} exacerbations requiring oral steroids in the past year."),
       plan=("Inhaler technique checked and satisfactory.", "Referred for pulmonary rehabilitation.",
             "Rescue pack of prednisolone and amoxicillin provided with a written self-management plan."),
       vitals=("mild_hypoxia",), min_age=40),
    _c(key="asthma", name="Asthma", icd10="J45.9", snomed="195967001", kind="chronic",
       specialty="Respiratory Medicine",
       meds=(("Beclometasone", "100 micrograms 2 puffs", "inhaled", "BD"), ("Salbutamol", "100 micrograms 2 puffs", "inhaled", "PRN"),
             ("Montelukast", "10 mg", "oral", "ON")),
       history=("Reliever use {reliever} times per week. Peak flow best {pef} L/min.",
                "Nocturnal symptoms once or twice a month."),
       plan=("Personalised asthma action plan updated.", "Step up to a combination inhaler if control does not improve.")),
    _c(key="hf", name="Heart failure", icd10="I50.9", snomed="84114007", kind="chronic",
       specialty="Cardiology",
       meds=(("Bisoprolol", "2.5 mg", "oral", "OD"), ("Furosemide", "40 mg", "oral", "OM"),
             ("Ramipril", "2.5 mg", "oral", "OD"), ("Spironolactone", "25 mg", "oral", "OD"),
             ("Dapagliflozin", "10 mg", "oral", "OD")),
       history=("NYHA class {nyha}. Echocardiogram shows an ejection fraction of {ef}%.",
                "Weight stable on daily weighing; mild ankle swelling by evening."),
       plan=("Up-titrate bisoprolol as heart rate and blood pressure allow.", "Heart failure nurse follow-up arranged.",
             "Daily weights; contact the team if weight rises by more than 2 kg in 3 days."),
       labs=("bnp",), min_age=40),
    _c(key="af", name="Atrial fibrillation", icd10="I48.9", snomed="49436004", kind="chronic",
       specialty="Cardiology",
       meds=(("Apixaban", "5 mg", "oral", "BD"), ("Bisoprolol", "5 mg", "oral", "OD"), ("Edoxaban", "60 mg", "oral", "OD")),
       history=("CHA2DS2-VASc score {chads}; anticoagulated without bleeding problems.",
                "Occasional palpitations; rate controlled on current therapy."),
       plan=("Continue anticoagulation; annual renal function and full blood count.", "Rate control strategy continued."),
       vitals=("af",), min_age=45),
    _c(key="ckd", name="Chronic kidney disease stage 3", icd10="N18.3", snomed="433144002", kind="chronic",
       specialty="Renal Medicine",
       history=("eGFR has been stable between {egfr_lo} and {egfr_hi} mL/min/1.73m2 over the last year.",
                "Urine albumin:creatinine ratio {acr} mg/mmol."),
       plan=("Avoid NSAIDs and nephrotoxic drugs.", "Repeat U&E and ACR in 6 months."),
       labs=("ckd",), min_age=40),
    _c(key="angina", name="Stable angina", icd10="I20.9", snomed="194828000", kind="chronic",
       specialty="Cardiology",
       meds=(("Glyceryl trinitrate spray", "400 micrograms", "SL", "PRN"), ("Isosorbide mononitrate MR", "30 mg", "oral", "OD"),
             ("Aspirin", "75 mg", "oral", "OD")),
       history=("Exertional chest tightness after walking about {yards} yards, relieved by GTN within minutes.",),
       plan=("CT coronary angiography requested.", "Continue secondary prevention."), min_age=40),
    _c(key="hypothyroid", name="Hypothyroidism", icd10="E03.9", snomed="40930008", kind="chronic",
       specialty="Diabetes and Endocrinology",
       meds=(("Levothyroxine", "100 micrograms", "oral", "OM"),),
       history=("Clinically euthyroid on levothyroxine.",),
       plan=("Repeat thyroid function tests in 6-8 weeks after the dose change.",), labs=("tft",)),
    _c(key="depression", name="Depressive episode", icd10="F32.9", snomed="35489007", kind="chronic",
       specialty="Liaison Psychiatry",
       meds=(("Sertraline", "50 mg", "oral", "OD"), ("Mirtazapine", "15 mg", "oral", "ON")),
       history=("Mood low for several months with poor sleep and reduced appetite. PHQ-9 score {phq}. No thoughts of self-harm.",),
       plan=("Self-referral to talking therapies encouraged.", "Review response to antidepressant in 4 weeks.")),
    _c(key="oa_knee", name="Osteoarthritis of knee", icd10="M17.9", snomed="239873007", kind="chronic",
       specialty="Trauma and Orthopaedics",
       meds=(("Paracetamol", "1 g", "oral", "QDS"), ("Co-codamol 30/500", "2 tablets", "oral", "PRN")),
       history=("Mechanical knee pain limiting walking distance to about {yards} yards.",),
       imaging=(("XR knee weight-bearing", "Medial joint space narrowing with marginal osteophytes and subchondral sclerosis.",
                 "Moderate medial compartment osteoarthritis."),),
       plan=("Physiotherapy and weight-loss advice.", "Listed for consideration of total knee replacement."), min_age=45),
    _c(key="oa_hip", name="Osteoarthritis of hip", icd10="M16.9", snomed="239872002", kind="chronic",
       specialty="Trauma and Orthopaedics",
       meds=(("Paracetamol", "1 g", "oral", "QDS"), ("Naproxen", "500 mg", "oral", "BD")),
       history=("Groin pain on weight-bearing with reduced internal rotation.",),
       imaging=(("XR pelvis and hip", "Superolateral joint space loss with osteophytes and subchondral cysts.",
                 "Established osteoarthritis of the hip."),),
       plan=("Discussed total hip replacement; patient wishes to proceed.",), min_age=45),
    _c(key="gord", name="Gastro-oesophageal reflux disease", icd10="K21.9", snomed="235595009", kind="chronic",
       specialty="Gastroenterology",
       meds=(("Omeprazole", "20 mg", "oral", "OD"), ("Lansoprazole", "30 mg", "oral", "OD")),
       history=("Heartburn after meals, improved on a proton pump inhibitor. No dysphagia or weight loss.",),
       plan=("Step down to the lowest effective PPI dose.",)),
    _c(key="migraine", name="Migraine", icd10="G43.9", snomed="37796009", kind="chronic",
       specialty="Neurology",
       meds=(("Sumatriptan", "50 mg", "oral", "PRN"), ("Propranolol", "40 mg", "oral", "BD")),
       history=("About {migraine_days} migraine days a month with visual aura.",),
       plan=("Headache diary; limit triptan use to avoid medication-overuse headache.",), max_onset_age=60),
    _c(key="epilepsy", name="Epilepsy", icd10="G40.9", snomed="84757009", kind="chronic",
       specialty="Neurology",
       meds=(("Levetiracetam", "500 mg", "oral", "BD"), ("Lamotrigine", "100 mg", "oral", "BD")),
       history=("Last generalised seizure {months} months ago. DVLA guidance discussed.",),
       plan=("Continue antiseizure medication; epilepsy nurse follow-up.",)),
    _c(key="alzheimers", name="Alzheimer's disease", icd10="G30.9", snomed="26929004", kind="chronic",
       specialty="Medicine for Older People",
       meds=(("Donepezil", "10 mg", "oral", "ON"),),
       history=("Progressive short-term memory loss over two years; MoCA {moca}/30.",),
       plan=("Memory clinic follow-up; carer support assessment requested.",), min_age=65),
    _c(key="parkinsons", name="Parkinson's disease", icd10="G20", snomed="49049000", kind="chronic",
       specialty="Neurology",
       meds=(("Co-careldopa 25/100", "1 tablet", "oral", "TDS"),),
       history=("Right-sided resting tremor and bradykinesia; occasional end-of-dose wearing off.",),
       plan=("Parkinson's nurse specialist review; falls risk assessment.",), min_age=55),
    _c(key="gout", name="Gout", icd10="M10.9", snomed="90560007", kind="chronic",
       specialty="Rheumatology",
       meds=(("Allopurinol", "100 mg", "oral", "OD"), ("Colchicine", "500 micrograms", "oral", "BD")),
       history=("Recurrent attacks affecting the first metatarsophalangeal joint.",),
       plan=("Titrate allopurinol to a serum urate below 360 micromol/L.",), labs=("urate",)),
    _c(key="obesity", name="Obesity", icd10="E66.9", snomed="414916001", kind="chronic",
       specialty="General Medicine",
       history=("BMI {bmi} kg/m2.",),
       plan=("Referred to the tier 3 weight management service.",)),
    _c(key="ra", name="Rheumatoid arthritis", icd10="M06.9", snomed="69896004", kind="chronic",
       specialty="Rheumatology",
       meds=(("Methotrexate", "15 mg", "oral", "WEEKLY"), ("Folic acid", "5 mg", "oral", "WEEKLY")),
       history=("Morning stiffness of about an hour; DAS28 {das}.",),
       plan=("Continue methotrexate with monitoring bloods every 12 weeks.",)),
    _c(key="ida", name="Iron deficiency anaemia", icd10="D50.9", snomed="87522002", kind="chronic",
       specialty="Gastroenterology",
       meds=(("Ferrous sulfate", "200 mg", "oral", "OD"),),
       history=("Tiredness and exertional breathlessness; no overt bleeding.",),
       plan=("Bidirectional endoscopy requested to exclude a gastrointestinal source.",), labs=("anaemia",)),
    # ---- acute medical -----------------------------------------------------------------------
    _c(key="pneumonia", name="Community-acquired pneumonia", icd10="J18.9", snomed="233604007", kind="acute",
       specialty="Respiratory Medicine",
       meds=(("Amoxicillin", "500 mg", "oral", "TDS"), ("Clarithromycin", "500 mg", "oral", "BD")),
       complaint=("Productive cough, fever and shortness of breath for {days} days.",
                  "Increasing breathlessness and green sputum."),
       history=("{days}-day history of cough productive of purulent sputum with right-sided pleuritic chest pain and rigors.",
                "Seen by the GP and started on oral antibiotics without improvement."),
       exam=("Bronchial breathing and coarse crackles at the right base.", "Dull to percussion at the left base."),
       imaging=(("XR chest PA", "Airspace consolidation in the right lower zone. No pleural effusion. Heart size normal.",
                 "Right lower lobe pneumonia."),
                ("XR chest AP (portable)", "Patchy consolidation in the left lower zone with a small left effusion.",
                 "Left basal consolidation in keeping with infection.")),
       course=("CURB-65 score {curb} on admission. Treated with IV co-amoxiclav and oral clarithromycin, switched to oral antibiotics after 48 hours.",
               "Oxygen weaned to room air by day {o2day}. Inflammatory markers fell steadily."),
       plan=("Complete a 5-day course of antibiotics.", "Repeat chest X-ray in 6 weeks to confirm resolution."),
       labs=("infection",), vitals=("fever", "tachy", "hypoxia"), los=(3, 8)),
    _c(key="sepsis", name="Sepsis", icd10="A41.9", snomed="91302008", kind="acute",
       specialty="Acute Medicine",
       meds=(("Co-amoxiclav", "625 mg", "oral", "TDS"),),
       complaint=("Fever, rigors and confusion.", "Collapse at home with fever."),
       history=("Found by family drowsy and hot to touch; {days} days of malaise and reduced oral intake.",),
       exam=("Peripherally cool with a capillary refill time of 4 seconds.", "Warm peripheries, bounding pulse."),
       course=("Sepsis six completed within the first hour: blood cultures, lactate, IV piperacillin-tazobactam and 2 L of crystalloid.",
               "Blood cultures grew Escherichia coli sensitive to co-amoxiclav; antibiotics rationalised.",
               "Reviewed by critical care outreach; did not require vasopressors."),
       plan=("Complete 7 days of antibiotics in total.", "GP to check FBC and CRP in one week."),
       labs=("severe_infection", "lactate", "aki"), vitals=("fever", "tachy", "hypotension"), los=(4, 12)),
    _c(key="uti", name="Urinary tract infection", icd10="N39.0", snomed="68566005", kind="acute",
       specialty="Acute Medicine",
       meds=(("Nitrofurantoin MR", "100 mg", "oral", "BD"), ("Trimethoprim", "200 mg", "oral", "BD")),
       complaint=("Dysuria, frequency and suprapubic pain.", "New confusion and urinary incontinence."),
       history=("{days} days of dysuria and frequency with offensive urine.",),
       exam=("Suprapubic tenderness; renal angles non-tender.",),
       course=("Urine culture grew a coliform; treated with antibiotics according to sensitivities.",),
       plan=("Complete the antibiotic course.", "Encourage oral fluids."),
       labs=("infection",), vitals=("fever",), los=(1, 4)),
    _c(key="cellulitis", name="Cellulitis", icd10="L03.9", snomed="128045006", kind="acute",
       specialty="Acute Medicine",
       meds=(("Flucloxacillin", "1 g", "oral", "QDS"),),
       complaint=("Red, hot, swollen left lower leg.", "Spreading redness of the right shin."),
       history=("Redness spreading over {days} days from a small abrasion.",),
       exam=("Erythema and warmth extending to mid-shin, margin marked. No crepitus.",),
       course=("IV flucloxacillin for 48 hours with leg elevation; erythema receded from the marked margin.",),
       plan=("Oral flucloxacillin to complete 7 days.", "Emollients and leg elevation."),
       labs=("infection",), vitals=("fever",), los=(2, 6)),
    _c(key="mi", name="Acute myocardial infarction", icd10="I21.9", snomed="22298006", kind="acute",
       specialty="Cardiology",
       meds=(("Aspirin", "75 mg", "oral", "OD"), ("Ticagrelor", "90 mg", "oral", "BD"),
             ("Atorvastatin", "80 mg", "oral", "ON"), ("Bisoprolol", "2.5 mg", "oral", "OD"),
             ("Ramipril", "2.5 mg", "oral", "OD")),
       complaint=("Central crushing chest pain radiating to the left arm.", "Chest pain and sweating for {hours} hours."),
       history=("Sudden onset central chest pain at rest, radiating to the jaw, with nausea and diaphoresis.",),
       exam=("Heart sounds normal, no murmurs. Chest clear.",),
       imaging=(("XR chest PA", "Normal heart size. Lungs clear. No pneumothorax.", "No acute cardiopulmonary abnormality."),),
       course=("ECG showed ST elevation in leads II, III and aVF. Primary PCI with a drug-eluting stent to the right coronary artery.",
               "Echocardiogram: mildly impaired left ventricular function, EF {ef}%."),
       plan=("Dual antiplatelet therapy for 12 months.", "Cardiac rehabilitation referral made.",
             "No driving for one week."),
       labs=("troponin",), vitals=("tachy",), los=(3, 6), min_age=35),
    _c(key="stroke", name="Cerebral infarction", icd10="I63.9", snomed="432504007", kind="acute",
       specialty="Stroke Medicine",
       meds=(("Clopidogrel", "75 mg", "oral", "OD"), ("Atorvastatin", "80 mg", "oral", "ON")),
       complaint=("Sudden right arm weakness and slurred speech.", "Left facial droop and left leg weakness."),
       history=("Witnessed sudden onset of symptoms at {clock}; NIHSS {nihss} on arrival.",),
       exam=("Right upper limb power 3/5, expressive dysphasia.", "Left-sided weakness with extensor plantar."),
       imaging=(("CT head non-contrast", "Loss of grey-white differentiation in the left MCA territory. No haemorrhage.",
                 "Acute left MCA territory infarct."),
                ("MRI head", "Restricted diffusion in the right corona radiata consistent with an acute lacunar infarct.",
                 "Acute right lacunar infarct.")),
       course=("Thrombolysed with alteplase within the time window; aspirin 300 mg for 14 days thereafter.",
               "Swallow screen passed. Carotid Doppler showed less than 50% stenosis bilaterally."),
       plan=("Early supported discharge team follow-up.", "Stroke clinic in 6 weeks."),
       vitals=("hypertension",), los=(5, 14), min_age=40),
    _c(key="dvt", name="Deep vein thrombosis of lower limb", icd10="I80.2", snomed="128053003", kind="acute",
       specialty="Acute Medicine",
       meds=(("Apixaban", "5 mg", "oral", "BD"),),
       complaint=("Painful swollen right calf.",),
       history=("Calf swelling for {days} days after a long-haul flight.",),
       exam=("Right calf circumference 3 cm greater than the left; pitting oedema.",),
       imaging=(("US Doppler lower limb veins", "Non-compressible right popliteal and posterior tibial veins with echogenic thrombus.",
                 "Acute right popliteal DVT."),),
       course=("Wells score {wells}. Started on apixaban in the ambulatory care unit.",),
       plan=("Anticoagulation for 3 months then review.",), labs=("ddimer",), los=(0, 1)),
    _c(key="pe", name="Pulmonary embolism", icd10="I26.9", snomed="59282003", kind="acute",
       specialty="Respiratory Medicine",
       meds=(("Rivaroxaban", "15 mg", "oral", "BD"),),
       complaint=("Sudden pleuritic chest pain and breathlessness.",),
       history=("Acute onset of breathlessness and right-sided pleuritic pain; recent knee surgery.",),
       exam=("Tachypnoeic; chest clear; calves soft.",),
       imaging=(("CT pulmonary angiogram", "Filling defects in the right lower lobe segmental arteries. RV:LV ratio below 1.",
                 "Acute right segmental pulmonary emboli without right heart strain."),),
       course=("Anticoagulated with rivaroxaban; PESI class II.",),
       plan=("Rivaroxaban 15 mg twice daily for 21 days, then 20 mg once daily.",), labs=("ddimer",),
       vitals=("tachy", "hypoxia"), los=(1, 4)),
    _c(key="aki", name="Acute kidney injury", icd10="N17.9", snomed="14669001", kind="acute",
       specialty="Renal Medicine",
       meds=(),
       complaint=("Vomiting and diarrhoea with reduced urine output.",),
       history=("{days} days of diarrhoea and vomiting while continuing ramipril and furosemide.",),
       exam=("Dry mucous membranes, JVP not visible.",),
       imaging=(("US kidneys and bladder", "Both kidneys normal in size with no hydronephrosis. Bladder empty.",
                 "No obstructive uropathy."),),
       course=("AKI stage {akistage}. ACE inhibitor and diuretic withheld; IV fluids given. Creatinine returned towards baseline.",),
       plan=("Restart ramipril only after renal function has recovered.", "Repeat U&E in one week."),
       labs=("aki",), vitals=("tachy",), los=(3, 8), min_age=40),
    _c(key="gibleed", name="Gastrointestinal haemorrhage", icd10="K92.2", snomed="74474003", kind="acute",
       specialty="Gastroenterology",
       meds=(("Omeprazole", "40 mg", "oral", "BD"),),
       complaint=("Melaena and dizziness.", "Coffee-ground vomiting."),
       history=("Black tarry stools for {days} days on aspirin and naproxen.",),
       exam=("Pale; melaena on rectal examination.",),
       course=("Glasgow-Blatchford score {gbs}. OGD showed a clean-based duodenal ulcer; no endoscopic therapy required.",
               "Transfused two units of red cells."),
       plan=("Stop naproxen. High-dose PPI for 8 weeks.", "Helicobacter pylori serology sent."),
       labs=("bleed",), vitals=("tachy",), los=(2, 6)),
    _c(key="pancreatitis", name="Acute pancreatitis", icd10="K85.9", snomed="197456007", kind="acute",
       specialty="General Surgery",
       meds=(),
       complaint=("Severe epigastric pain radiating to the back with vomiting.",),
       history=("Sudden epigastric pain after a heavy meal; known gallstones.",),
       exam=("Epigastric tenderness with guarding; bowel sounds present.",),
       imaging=(("US abdomen", "Multiple gallstones in a thin-walled gallbladder. CBD 5 mm. Pancreas obscured by bowel gas.",
                 "Cholelithiasis."),),
       course=("Modified Glasgow score {glasgow}. Managed with IV fluids, analgesia and early enteral nutrition.",),
       plan=("Laparoscopic cholecystectomy on the same admission or within 2 weeks.",),
       labs=("amylase", "infection"), vitals=("tachy",), los=(3, 10)),
    _c(key="syncope", name="Syncope", icd10="R55", snomed="271594007", kind="acute",
       specialty="Acute Medicine",
       meds=(),
       complaint=("Transient loss of consciousness.",),
       history=("Lost consciousness for under a minute on standing; prodrome of light-headedness; no tongue biting.",),
       exam=("Lying and standing BP showed a postural drop of {drop} mmHg.",),
       course=("ECG sinus rhythm with a normal QTc. 24-hour tape arranged as an outpatient.",),
       plan=("Increase fluid intake; review antihypertensives.",), los=(0, 2)),
    # ---- surgical ----------------------------------------------------------------------------
    _c(key="appendicitis", name="Acute appendicitis", icd10="K35.8", snomed="85189001", kind="surgical",
       specialty="General Surgery",
       meds=(("Paracetamol", "1 g", "oral", "QDS"), ("Ibuprofen", "400 mg", "oral", "TDS")),
       complaint=("Right iliac fossa pain.", "Central abdominal pain migrating to the right iliac fossa."),
       history=("{hours}-hour history of periumbilical pain migrating to the RIF with anorexia and nausea.",),
       exam=("Tender in the RIF with rebound and guarding; Rovsing's sign positive.",),
       imaging=(("CT abdomen and pelvis with contrast", "Dilated 11 mm appendix with periappendiceal fat stranding. No collection.",
                 "Acute uncomplicated appendicitis."),),
       procedure=(("Laparoscopic appendicectomy", "Inflamed, non-perforated appendix. Minimal free fluid in the pelvis.",
                   "Three-port technique. Mesoappendix divided with diathermy. Base secured with two endoloops. Specimen retrieved in a bag."),),
       pathology=(("Appendix", "An appendix 65 mm in length with a congested serosa.",
                   "Transmural neutrophilic infiltrate with mucosal ulceration. No neoplasia.",
                   "Acute suppurative appendicitis."),),
       course=("Uneventful post-operative recovery; eating and drinking on day 1.",),
       plan=("Wound check with the practice nurse at 7-10 days.", "No heavy lifting for 2 weeks."),
       labs=("infection",), vitals=("fever",), los=(1, 3), min_age=18),
    _c(key="cholecystitis", name="Acute cholecystitis", icd10="K81.0", snomed="65275009", kind="surgical",
       specialty="General Surgery",
       meds=(("Paracetamol", "1 g", "oral", "QDS"),),
       complaint=("Right upper quadrant pain and fever.",),
       history=("Constant RUQ pain for {days} days after fatty food with vomiting.",),
       exam=("Murphy's sign positive; tender RUQ.",),
       imaging=(("US abdomen", "Distended gallbladder with a 4 mm thickened wall, pericholecystic fluid and an impacted stone in the neck.",
                 "Acute calculous cholecystitis."),),
       procedure=(("Laparoscopic cholecystectomy", "Oedematous gallbladder with omental adhesions. Critical view of safety obtained.",
                   "Four-port technique. Cystic duct and artery clipped and divided. Gallbladder dissected off the liver bed with diathermy."),),
       pathology=(("Gallbladder", "A gallbladder 85 mm long containing multiple yellow faceted stones; wall up to 5 mm.",
                   "Mucosal ulceration with transmural acute inflammation on a background of chronic cholecystitis.",
                   "Acute on chronic calculous cholecystitis."),),
       course=("Treated with IV co-amoxiclav, then laparoscopic cholecystectomy on the index admission.",),
       plan=("Follow-up in the surgical clinic is not required.",), labs=("lft", "infection"),
       vitals=("fever",), los=(2, 6)),
    _c(key="hernia", name="Inguinal hernia", icd10="K40.9", snomed="396232000", kind="surgical",
       specialty="General Surgery",
       meds=(("Paracetamol", "1 g", "oral", "QDS"),),
       complaint=("Groin swelling.",), history=("Reducible right groin swelling for several months, aching at the end of the day.",),
       exam=("Reducible right inguinal hernia with a cough impulse.",),
       procedure=(("Open right inguinal hernia repair with mesh (Lichtenstein)", "Indirect sac with a wide neck.",
                   "Sac dissected and reduced. Polypropylene mesh sutured to the inguinal ligament with 2-0 Prolene."),),
       course=("Day-case procedure; discharged the same evening.",), plan=("Avoid heavy lifting for 4 weeks.",),
       sex="male", los=(0, 1)),
    _c(key="sbo", name="Intestinal obstruction", icd10="K56.6", snomed="81060008", kind="surgical",
       specialty="General Surgery",
       meds=(),
       complaint=("Colicky abdominal pain, distension and vomiting.",),
       history=("No flatus for {days} days; previous open appendicectomy.",),
       exam=("Distended, tympanic abdomen; high-pitched bowel sounds.",),
       imaging=(("CT abdomen and pelvis with contrast", "Dilated small bowel loops to 4 cm with a transition point in the right iliac fossa. No closed loop.",
                 "Adhesional small bowel obstruction."),),
       procedure=(("Laparotomy and adhesiolysis", "Single band adhesion causing obstruction; bowel viable.",
                   "Midline laparotomy. Band divided. Small bowel run from the DJ flexure to the terminal ileum. Mass closure with loop PDS."),),
       course=("Initially managed with a nasogastric tube and IV fluids; proceeded to surgery after failed water-soluble contrast challenge.",),
       plan=("Surgical clinic in 6 weeks.",), labs=("aki",), los=(5, 12), min_age=25),
    _c(key="diverticulitis", name="Diverticulitis of large intestine", icd10="K57.3", snomed="307496006", kind="surgical",
       specialty="General Surgery",
       meds=(("Co-amoxiclav", "625 mg", "oral", "TDS"),),
       complaint=("Left iliac fossa pain and fever.",),
       history=("{days} days of LIF pain with loose stool.",),
       exam=("Tender LIF with localised guarding.",),
       imaging=(("CT abdomen and pelvis with contrast", "Sigmoid diverticulosis with pericolic fat stranding. No free gas or collection.",
                 "Uncomplicated sigmoid diverticulitis."),),
       course=("Managed conservatively with IV antibiotics and bowel rest.",),
       plan=("Colonoscopy in 6 weeks to exclude malignancy.",), labs=("infection",), los=(2, 6), min_age=40),
    # ---- fractures ---------------------------------------------------------------------------
    _c(key="nof", name="Fracture of neck of femur", icd10="S72.0", snomed="5913000", kind="fracture",
       specialty="Trauma and Orthopaedics",
       meds=(("Paracetamol", "1 g", "oral", "QDS"), ("Enoxaparin", "40 mg", "SC", "OD"),
             ("Colecalciferol", "800 units", "oral", "OD")),
       complaint=("Fall at home with left hip pain and inability to weight-bear.",),
       history=("Mechanical fall from standing; no loss of consciousness.",),
       exam=("Left leg shortened and externally rotated.",),
       imaging=(("XR pelvis and left hip", "Displaced intracapsular fracture of the left femoral neck (Garden IV).",
                 "Displaced left intracapsular neck of femur fracture."),),
       procedure=(("Left hip cemented hemiarthroplasty", "Displaced intracapsular fracture.",
                   "Posterior approach. Femoral head excised and sized. Cemented stem and bipolar head inserted; stable through range. Layered closure."),),
       course=("Orthogeriatric review on day 1; mobilised with a frame on day 2.",),
       plan=("Enoxaparin for 28 days.", "Bone health assessment: start bisphosphonate after vitamin D replacement."),
       labs=("anaemia",), los=(7, 20), min_age=60),
    _c(key="ankle", name="Fracture of ankle", icd10="S82.8", snomed="16114001", kind="fracture",
       specialty="Trauma and Orthopaedics",
       meds=(("Paracetamol", "1 g", "oral", "QDS"), ("Codeine phosphate", "30 mg", "oral", "PRN")),
       complaint=("Inversion injury to the right ankle.",),
       history=("Twisted the ankle stepping off a kerb; unable to weight-bear.",),
       exam=("Swelling and tenderness over the lateral malleolus; neurovascularly intact.",),
       imaging=(("XR right ankle", "Oblique fracture of the distal fibula at the level of the syndesmosis with medial clear-space widening.",
                 "Unstable Weber B ankle fracture."),),
       procedure=(("ORIF right ankle", "Weber B fracture with talar shift.",
                   "Lateral approach. Lag screw and one-third tubular neutralisation plate. Syndesmosis stable on hook test."),),
       course=("Elevated in a backslab; surgery once swelling settled.",),
       plan=("Non-weight-bearing in a cast for 6 weeks.", "Fracture clinic in 2 weeks for wound check."),
       los=(1, 4)),
    # ---- cancers -----------------------------------------------------------------------------
    _c(key="colon_ca", name="Malignant neoplasm of colon", icd10="C18.9", snomed="363406005", kind="cancer",
       specialty="Colorectal Surgery",
       meds=(("Capecitabine", "1250 mg/m2", "oral", "BD"),),
       complaint=("Change in bowel habit and iron deficiency anaemia.",),
       history=("Three months of looser stools and weight loss of {kg} kg; FIT {fit} micrograms/g.",),
       imaging=(("CT chest, abdomen and pelvis with contrast", "Irregular 4 cm mural thickening of the ascending colon with adjacent sub-centimetre nodes. Liver and lungs clear.",
                 "Ascending colon carcinoma, radiological T3 N1 M0."),),
       pathology=(("Right hemicolectomy", "A right hemicolectomy specimen with an ulcerated tumour 42 mm in maximum dimension.",
                   "Moderately differentiated adenocarcinoma invading through the muscularis propria into pericolic fat. {nodes} of 21 lymph nodes involved. Margins clear.",
                   "Adenocarcinoma of colon, pT3 pN1b, R0. Mismatch repair proteins retained."),
                  ("Colonic biopsy", "Three fragments of tan tissue, the largest 4 mm.",
                   "Fragments of colonic mucosa infiltrated by malignant glands with desmoplastic stroma.",
                   "Invasive adenocarcinoma.")),
       procedure=(("Laparoscopic right hemicolectomy", "Tumour in the ascending colon, no peritoneal or liver metastases.",
                   "Medial-to-lateral dissection with high ligation of the ileocolic pedicle. Stapled ileocolic anastomosis."),),
       plan=("Discussed at the colorectal MDT: adjuvant chemotherapy recommended.", "CEA and CT surveillance for 5 years."),
       labs=("anaemia", "cea"), min_age=40, los=(4, 9)),
    _c(key="lung_ca", name="Malignant neoplasm of bronchus and lung", icd10="C34.9", snomed="363358000", kind="cancer",
       specialty="Respiratory Medicine",
       meds=(("Morphine sulfate oral solution", "2.5 mg", "oral", "PRN"),),
       complaint=("Haemoptysis and weight loss.",),
       history=("Persistent cough with haemoptysis for {weeks} weeks; {packyears} pack-year smoker.",),
       imaging=(("CT chest with contrast", "Spiculated 38 mm mass in the right upper lobe with ipsilateral hilar lymphadenopathy. No adrenal lesion.",
                 "Right upper lobe mass highly suspicious for primary lung cancer, T2a N1."),),
       pathology=(("EBUS-TBNA station 10R", "Multiple cores of blood-stained tissue.",
                   "Sheets of malignant epithelial cells, TTF-1 positive, p40 negative. PD-L1 TPS {pdl1}%.",
                   "Metastatic non-small cell carcinoma, favour adenocarcinoma."),),
       plan=("Lung MDT: PET-CT and lung function for consideration of radical treatment.",
             "Referred to the lung cancer nurse specialist."), min_age=45, los=(2, 6)),
    _c(key="breast_ca", name="Malignant neoplasm of breast", icd10="C50.9", snomed="254837009", kind="cancer",
       specialty="Breast Surgery",
       meds=(("Letrozole", "2.5 mg", "oral", "OD"),),
       complaint=("Painless left breast lump.",),
       history=("Noticed a lump in the left breast {weeks} weeks ago; no nipple discharge.",),
       imaging=(("Mammogram and US left breast", "Irregular 18 mm hypoechoic mass at 2 o'clock with posterior shadowing. Axillary nodes normal.",
                 "Suspicious left breast mass, M5 U5."),),
       pathology=(("Left breast core biopsy", "Four cores, 15 mm each.",
                   "Invasive carcinoma of no special type, grade 2. ER 8/8, PR 6/8, HER2 negative.",
                   "Invasive breast carcinoma NST, grade 2, ER positive, HER2 negative."),),
       procedure=(("Left wide local excision and sentinel lymph node biopsy", "Palpable tumour at 2 o'clock; two blue and hot sentinel nodes.",
                   "Wire-guided excision with cavity shaves. Sentinel nodes identified with dual technique."),),
       plan=("Adjuvant radiotherapy and endocrine therapy for 5 years.",), sex="female", min_age=30, los=(0, 2)),
    _c(key="prostate_ca", name="Malignant neoplasm of prostate", icd10="C61", snomed="399068003", kind="cancer",
       specialty="Urology",
       meds=(("Bicalutamide", "50 mg", "oral", "OD"),),
       complaint=("Raised PSA.",),
       history=("PSA {psa} ng/mL on routine testing; nocturia twice a night.",),
       imaging=(("MRI prostate (multiparametric)", "PI-RADS 5 lesion in the left peripheral zone measuring 14 mm without extraprostatic extension.",
                 "Highly suspicious left peripheral zone lesion."),),
       pathology=(("Transperineal prostate biopsies", "Twenty-four cores in eight pots.",
                   "Acinar adenocarcinoma, Gleason score 3+4=7 (Grade Group 2) in 5 of 24 cores.",
                   "Prostatic adenocarcinoma, Gleason 3+4=7."),),
       plan=("Urology MDT: radical treatment options discussed, including radiotherapy with hormone therapy.",),
       labs=("psa",), sex="male", min_age=50, los=(0, 1)),
    _c(key="pancreas_ca", name="Malignant neoplasm of pancreas", icd10="C25.9", snomed="363418001", kind="cancer",
       specialty="Hepatobiliary Surgery",
       meds=(("Pancreatin (Creon 25000)", "2 capsules", "oral", "TDS"),),
       complaint=("Painless jaundice and weight loss.",),
       history=("Two weeks of jaundice, dark urine and pale stools; weight loss of {kg} kg.",),
       imaging=(("CT pancreas protocol", "Hypoattenuating 29 mm mass in the pancreatic head with double-duct dilatation; abuts the SMV.",
                 "Pancreatic head adenocarcinoma, borderline resectable."),),
       pathology=(("EUS-guided FNB pancreatic head", "Two cores of pale tissue.",
                   "Infiltrating malignant glands in desmoplastic stroma.",
                   "Ductal adenocarcinoma of pancreas."),),
       plan=("HPB MDT: neoadjuvant chemotherapy then restaging.", "ERCP and biliary stenting arranged."),
       labs=("lft",), min_age=45, los=(3, 8)),
)

_BY_KEY = {c.key: c for c in CONDITIONS}
_BY_ICD10 = {c.icd10: c for c in CONDITIONS}
_BY_SNOMED = {c.snomed: c for c in CONDITIONS}
_CHRONIC = tuple(c for c in CONDITIONS if c.kind == "chronic")
_EPISODIC = {kind: tuple(c for c in CONDITIONS if c.kind == kind) for kind in ("acute", "surgical", "fracture", "cancer")}
# Conditions that stay on the problem list after the episode.
_PERSISTING = frozenset({"mi", "stroke", "colon_ca", "lung_ca", "breast_ca", "prostate_ca", "pancreas_ca"})


def condition_display(system: str, code: str) -> str:
    """Display name of a catalogue code ("" if unknown)."""
    info = (_BY_ICD10 if system == "icd10" else _BY_SNOMED).get(code)
    return info.name if info else ""


# --------------------------------------------------------------------------------------------
# Names, places, people
# --------------------------------------------------------------------------------------------

_FEMALE = (
    "Olivia Amelia Isla Ava Mia Ivy Lily Isabella Rosie Sophia Grace Freya Evie Poppy Ella Charlotte "
    "Margaret Patricia Susan Linda Barbara Elizabeth Jean Pauline Carol Christine Janet Sandra Anne "
    "Maureen Brenda Shirley Joan Valerie Hazel Doreen Sheila Gillian Helen Karen Julie Alison Fiona "
    "Nicola Rachel Claire Emma Sarah Laura Hannah Priya Aisha Fatima Zainab Amira Mei Yasmin Anjali "
    "Chloe Niamh Siobhan Bronwen Eilidh Catriona Agnieszka Oksana Nkechi Abena Chidinma Leah Naomi Ruth"
).split()
_MALE = (
    "Oliver George Noah Arthur Leo Oscar Harry Jack Charlie Thomas James William Henry Jacob Alfie "
    "John David Michael Peter Robert Paul Stephen Richard Christopher Anthony Brian Kenneth Derek Keith "
    "Graham Trevor Colin Barry Roger Malcolm Gordon Alan Ian Mark Andrew Simon Gareth Neil Darren Lee "
    "Daniel Matthew Ryan Mohammed Ahmed Ibrahim Imran Ravi Sanjay Arjun Wei Tariq Kwame Chukwuemeka "
    "Femi Dylan Rhys Callum Ewan Seamus Declan Piotr Tomasz Mehmet Yusuf Kofi Samuel Joseph Patrick Hugh"
).split()
_SURNAMES = (
    "Smith Jones Taylor Brown Williams Wilson Johnson Davies Robinson Wright Thompson Evans Walker White "
    "Roberts Green Hall Wood Jackson Clarke Patel Khan Lewis James Phillips Mason Mitchell Rose Davis "
    "Rodriguez Cox Alexander Morgan Moore Hughes Edwards Hill Ward Turner Harris Cooper Baker Harrison "
    "Morris King Parker Bennett Gray Carter Price Shaw Lloyd Collins Murphy Kelly O'Brien Campbell "
    "Stewart MacDonald Fraser Reid Murray Ross Sinclair Begum Hussain Ahmed Ali Rahman Shah Singh Kaur "
    "Sharma Chaudhry Iqbal Mahmood Okafor Adeyemi Mensah Asante Boateng Nwosu Chen Wang Li Zhang Nguyen "
    "Kowalski Nowak Wiśniewska Yilmaz Demir Papadopoulos Rossi Ferreira Silva O'Connor Doyle Byrne "
    "Fletcher Holmes Lawrence Pearson Marshall Owen Barker Fox Dixon Knight Lamb Burton Hunt Gibson "
    "Ellis Webb Palmer Booth Atkinson Chambers Dawson Pritchard Rees Llewellyn Vaughan Griffiths"
).split()
_CLINICIAN_SURNAMES = (
    "Okonkwo Hargreaves Raman Whitfield Desai Brennan Osei Lindqvist Mahajan Kerr Fairweather Achebe "
    "Castellano Iyer Thornton Nakamura Bradshaw Mukherjee Oyelaran Sutherland Ferguson Haddad Varga "
    "Pemberton Chowdhury Ashworth Kapoor Montague Lowe Radcliffe"
).split()
_INITIALS = "A B C D E F G H J K L M N P R S T V".split()
_HOSPITALS = (
    ("Northgate General Hospital", "Northgate Hospitals NHS Foundation Trust"),
    ("St Aldric's Infirmary", "Aldric Valley University Hospitals NHS Trust"),
    ("Riverside University Hospital", "Riverside and Fenwick NHS Foundation Trust"),
    ("Hallamshire Royal Infirmary", "Hallam Teaching Hospitals NHS Trust"),
    ("Queen Elspeth Hospital", "Elspeth Health NHS Foundation Trust"),
)
_PRACTICES = (
    "Riverside Medical Centre, 14 Mill Lane", "The Old Forge Surgery, 2 High Street",
    "Parkview Health Centre, Church Road", "Beacon Hill Practice, 88 Station Road",
    "Meadowbank Surgery, 5 Orchard Way", "Castle Gate Medical Practice, 31 Castle Street",
    "Ashgrove Family Practice, Ashgrove Avenue", "Willowbrook Health Centre, 7 Brook Street",
)
_WARDS = {
    "Acute Medicine": ("Ward 12 (Acute Medical Unit)", "Cedar Ward"),
    "Respiratory Medicine": ("Ward 5 (Respiratory)", "Beech Ward"),
    "General Surgery": ("Ward 21 (Surgical Admissions)", "Ward 22 (General Surgery)"),
    "Colorectal Surgery": ("Ward 23 (Colorectal)",), "Hepatobiliary Surgery": ("Ward 24 (HPB)",),
    "Breast Surgery": ("Day Surgery Unit",), "Urology": ("Ward 26 (Urology)",),
    "Cardiology": ("Ward 7 (Cardiology)", "Coronary Care Unit"),
    "Trauma and Orthopaedics": ("Ward 30 (Orthopaedic Trauma)", "Ward 31 (Elective Orthopaedics)"),
    "Stroke Medicine": ("Hawthorn Ward (Stroke Unit)",), "Medicine for Older People": ("Ward 14 (Care of the Elderly)",),
    "Gastroenterology": ("Ward 9 (Gastroenterology)",), "Renal Medicine": ("Ward 10 (Renal)",),
}
_DEFAULT_WARDS = ("Ward 12 (Acute Medical Unit)", "Rowan Ward (General Medicine)")
# Ofcom ranges reserved for TV and radio drama.
_PHONE_RANGES = (("07700 900", 3), ("020 7946 0", 3), ("0161 496 0", 3), ("0113 496 0", 3),
                 ("0121 496 0", 3), ("0131 496 0", 3), ("0191 498 0", 3))
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")

_ROUTES = {"oral": ("PO", "orally", "oral"), "IV": ("IV", "intravenously", "IV"),
           "SC": ("SC", "subcutaneously", "SC"), "inhaled": ("INH", "inhaled", "inhaled"),
           "SL": ("SL", "sublingually", "sublingual")}
_FREQS = {"OD": ("OD", "once daily", "once a day"), "BD": ("BD", "twice daily", "twice a day"),
          "TDS": ("TDS", "three times daily", "three times a day"),
          "QDS": ("QDS", "four times daily", "four times a day"), "ON": ("ON", "at night", "at night"),
          "OM": ("OM", "in the morning", "each morning"), "PRN": ("PRN", "when required", "as required"),
          "WEEKLY": ("once weekly", "once weekly", "once a week")}


# --------------------------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticHospital:
    seed: int
    name: str
    trust: str
    start: date
    end: date
    patients: tuple[PatientIdentity, ...]
    records: tuple[ClinicalRecord, ...]

    def records_for(self, patient_key: str) -> tuple[ClinicalRecord, ...]:
        return tuple(r for r in self.records if r.patient_key == patient_key)


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


@dataclass
class _Staff:
    consultants: dict[str, str]
    juniors: tuple[str, ...]
    radiologists: tuple[str, ...]
    pathologists: tuple[str, ...]
    anaesthetists: tuple[str, ...]
    gps: tuple[str, ...]


@dataclass
class _Patient:
    identity: PatientIdentity
    title: str
    gp: str
    practice: str
    chronic: list[tuple[ConditionInfo, date]]  # condition, onset
    meds: list[Med]
    first: date  # first contact with the hospital


def _fmt_date(d: date, rng: random.Random | None = None, style: int | None = None) -> str:
    if style is None:
        style = rng.randrange(2) if rng is not None else 0
    if style == 0:
        return d.strftime("%d/%m/%Y")
    return f"{d.day} {_MONTHS[d.month - 1]} {d.year}"


def _doctor(rng: random.Random) -> str:
    return f"Dr {rng.choice(_INITIALS)}. {rng.choice(_CLINICIAN_SURNAMES)}"


def _staff(rng: random.Random) -> _Staff:
    specialties = sorted({c.specialty for c in CONDITIONS})
    return _Staff(
        consultants={s: _doctor(rng) for s in specialties},
        juniors=tuple(_doctor(rng) for _ in range(12)),
        radiologists=tuple(_doctor(rng) for _ in range(4)),
        pathologists=tuple(_doctor(rng) for _ in range(3)),
        anaesthetists=tuple(_doctor(rng) for _ in range(4)),
        gps=tuple(_doctor(rng) for _ in range(10)),
    )


def _nhs_number(rng: random.Random, used: set[str]) -> str:
    while True:
        nine = "999" + f"{rng.randrange(1_000_000):06d}"
        check = nhs_check_digit(nine)
        if check is None:
            continue
        value = nine + str(check)
        if value not in used:
            used.add(value)
            return value


def _mrn(rng: random.Random, used: set[str]) -> str:
    while True:
        value = f"MRN{rng.randrange(1_000_000, 10_000_000)}"
        if value not in used:
            used.add(value)
            return value


def _phone(rng: random.Random) -> str:
    prefix, _ = rng.choice(_PHONE_RANGES)
    return f"{prefix}{rng.randrange(1000):03d}"


def _random_date(rng: random.Random, lo: date, hi: date) -> date:
    if hi <= lo:
        return lo
    return lo + timedelta(days=rng.randrange((hi - lo).days + 1))


def _pick_chronic(rng: random.Random, age: int, sex: str) -> list[ConditionInfo]:
    count = rng.choices((0, 1, 2, 3, 4), weights=(3, 4, 4, 3, 1) if age >= 50 else (6, 4, 2, 1, 0))[0]
    pool = [c for c in _CHRONIC if c.min_age <= age and c.sex in (None, sex)]
    chosen: list[ConditionInfo] = []
    while len(chosen) < count and pool:
        c = rng.choice(pool)
        pool.remove(c)
        chosen.append(c)
    # common pairings
    keys = {c.key for c in chosen}
    if ("t2dm" in keys or "hf" in keys) and "htn" not in keys and rng.random() < 0.6:
        chosen.append(_BY_KEY["htn"])
    if "t1dm" in keys and "t2dm" in keys:
        chosen.remove(_BY_KEY["t1dm"])
    return chosen


def generate_hospital(
    patients: int,
    seed: int,
    *,
    start: date = date(2015, 1, 1),
    end: date = date(2025, 12, 31),
) -> SyntheticHospital:
    """Generate ``patients`` patients with 1-8 clinical documents each, dated within [start, end].

    Deterministic: the same arguments always give equal results.
    """
    if patients < 0:
        raise ValueError("patients must be >= 0")
    if patients > 500_000:
        raise ValueError("at most 500000 patients (the fake NHS-number range is finite)")
    if end < start:
        raise ValueError("end must not be before start")
    rng = random.Random(seed)
    hospital_name, trust = rng.choice(_HOSPITALS)
    staff = _staff(rng)
    used_nhs: set[str] = set()
    used_mrn: set[str] = set()
    identities: list[PatientIdentity] = []
    records: list[ClinicalRecord] = []
    doc_counter = 0
    for index in range(1, patients + 1):
        prng = random.Random(rng.getrandbits(64))
        patient = _make_patient(prng, index, staff, used_nhs, used_mrn, start, end)
        identities.append(patient.identity)
        drafts = _patient_documents(prng, patient, staff, hospital_name, trust, start, end)
        for record_date, document_type, conditions, text in drafts:
            doc_counter += 1
            records.append(ClinicalRecord(
                record_id=f"doc-{doc_counter:07d}",
                patient_key=patient.identity.key,
                record_date=record_date,
                document_type=document_type,
                conditions=conditions,
                text=text,
                age_at_record=age_on(patient.identity.birth_date, record_date),
            ))
    return SyntheticHospital(seed=seed, name=hospital_name, trust=trust, start=start, end=end,
                             patients=tuple(identities), records=tuple(records))


def _make_patient(rng, index, staff, used_nhs, used_mrn, start, end) -> _Patient:
    sex = rng.choice(("female", "male"))
    given = rng.choice(_FEMALE if sex == "female" else _MALE)
    family = rng.choice(_SURNAMES)
    # The patient's first document falls in the first part of the window; age at that point 18-95.
    span = (end - start).days
    first = start + timedelta(days=rng.randrange(max(1, span * 2 // 3 + 1)))
    age_first = min(95, max(18, int(rng.triangular(18, 96, 68))))
    birth = first - timedelta(days=int(age_first * 365.25) + rng.randrange(365))
    identity = PatientIdentity(
        key=f"pat-{index:06d}",
        mrn=_mrn(rng, used_mrn),
        given=given,
        family=family,
        birth_date=birth,
        sex=sex,
        phone=_phone(rng),
        national_id=_nhs_number(rng, used_nhs),
    )
    if sex == "female":
        title = rng.choice(("Mrs", "Ms", "Miss")) if age_on(birth, first) >= 25 else rng.choice(("Ms", "Miss"))
    else:
        title = "Mr"
    age = age_on(birth, first)
    chronic = [(c, first - timedelta(days=rng.randrange(60, 3650))) for c in _pick_chronic(rng, age, sex)]
    meds: list[Med] = []
    for c, _ in chronic:
        if c.meds:
            meds.extend(rng.sample(c.meds, rng.randint(1, min(2, len(c.meds)))))
    gp_i = rng.randrange(len(staff.gps))
    return _Patient(identity=identity, title=title, gp=staff.gps[gp_i],
                    practice=_PRACTICES[gp_i % len(_PRACTICES)], chronic=chronic, meds=_dedupe_meds(meds),
                    first=first)


def _lc_first(text: str) -> str:
    """Lower-case the first letter unless the first word is an acronym or eponym kept in capitals."""
    if not text or (len(text) > 1 and text[1].isupper()) or text.split(" ", 1)[0].endswith("'s"):
        return text
    return text[0].lower() + text[1:]


def _dedupe_meds(meds: Sequence[Med]) -> list[Med]:
    seen: dict[str, Med] = {}
    for m in meds:
        seen.setdefault(m[0], m)
    return list(seen.values())


# Episode plans: which documents an episode of each kind produces (in date order).
_EPISODE_DOCS = {
    "acute": (("radiology_report", 0.6), ("progress_note", 0.5), ("discharge_summary", 1.0)),
    "surgical": (("radiology_report", 0.6), ("operative_note", 1.0), ("pathology_report", 0.8), ("discharge_summary", 0.9)),
    "fracture": (("radiology_report", 1.0), ("operative_note", 0.9), ("progress_note", 0.4), ("discharge_summary", 0.9)),
    "cancer": (("radiology_report", 0.9), ("pathology_report", 1.0), ("clinic_letter", 1.0), ("operative_note", 0.5)),
    "review": (("clinic_letter", 0.8), ("progress_note", 0.5)),
}


def _patient_documents(rng, patient: _Patient, staff, hospital, trust, start, end):
    n_target = rng.choices(range(1, 9), weights=(18, 20, 17, 13, 11, 9, 7, 5))[0]
    ident = patient.identity
    anchors = sorted(_random_date(rng, patient.first, end) for _ in range(n_target))
    drafts: list[tuple[date, str, tuple[tuple[str, str], ...], str]] = []
    history: list[ConditionInfo] = []  # persisting episodic conditions (MI, stroke, cancers)
    for anchor in anchors:
        if len(drafts) >= n_target:
            break
        age = age_on(ident.birth_date, anchor)
        kind = rng.choices(("review", "acute", "surgical", "fracture", "cancer"), weights=(34, 34, 14, 8, 10))[0]
        if kind == "review":
            known = [c for c, onset in patient.chronic if onset <= anchor]
            if not known or rng.random() < 0.25:
                options = [c for c in _CHRONIC if c.min_age <= age <= c.max_onset_age and c.sex in (None, ident.sex)
                           and c not in [k for k, _ in patient.chronic]]
                if not options:
                    kind = "acute"
                else:
                    new = rng.choice(options)
                    patient.chronic.append((new, anchor))
                    if new.meds:
                        patient.meds = _dedupe_meds(patient.meds + [rng.choice(new.meds)])
                    main = new
            else:
                main = rng.choice(known)
        if kind != "review":
            pool = [c for c in _EPISODIC[kind] if c.min_age <= age and c.sex in (None, ident.sex)
                    and not (c.kind == "cancer" and c in history)]
            if not pool:
                kind = "acute"
                pool = [c for c in _EPISODIC["acute"] if c.min_age <= age and c.sex in (None, ident.sex)]
            main = rng.choice(pool)
        episode = _Episode(rng, patient, staff, hospital, trust, main, kind, anchor, start, end, history)
        remaining = n_target - len(drafts)
        docs = [d for d, p in _EPISODE_DOCS[kind] if rng.random() < p and _supports(main, kind, d)]
        if not docs:
            docs = [next(d for d, _ in reversed(_EPISODE_DOCS[kind]) if _supports(main, kind, d))]
        for doc_type in docs[:remaining]:
            drafts.append(episode.document(doc_type))
        if main.key in _PERSISTING and main not in history:
            history.append(main)
    drafts.sort(key=lambda d: d[0])
    return drafts


def _supports(c: ConditionInfo, kind: str, doc_type: str) -> bool:
    if doc_type == "radiology_report":
        return bool(c.imaging) or kind == "acute"
    if doc_type == "pathology_report":
        return bool(c.pathology)
    if doc_type == "operative_note":
        return bool(c.procedure)
    return True


class _Episode:
    """One admission / clinic contact and the documents it produces."""

    def __init__(self, rng, patient, staff, hospital, trust, main, kind, anchor, start, end, history):
        self.rng = rng
        self.p = patient
        self.ident = patient.identity
        self.staff = staff
        self.hospital = hospital
        self.trust = trust
        self.main = main
        self.kind = kind
        lo, hi = main.los if kind != "review" else (0, 0)
        self.los = rng.randint(lo, hi)
        self.start = max(start, self.ident.birth_date)
        self.end = end
        self.admit = max(self.start, min(anchor, end - timedelta(days=self.los)))
        self.discharge = min(self.admit + timedelta(days=self.los), end)
        self.op_day = min(self.admit + timedelta(days=rng.randint(0, min(2, self.los))), self.discharge)
        self.consultant = staff.consultants[main.specialty]
        self.ward = rng.choice(_WARDS.get(main.specialty, _DEFAULT_WARDS))
        self.junior = rng.choice(staff.juniors)
        self.history = list(history)
        self.comorbid = [c for c, onset in patient.chronic if onset <= self.admit and c is not main]
        self.comorbid += [c for c in history if c is not main]
        self.values = self._values()
        self.labs_text = _labs(rng, main.labs + tuple(x for c in self.comorbid[:2] for x in c.labs[:1]),
                               age=age_on(self.ident.birth_date, self.admit), female=self.ident.sex == "female")
        self.vitals_text = _vitals(rng, main.vitals)

    # -- helpers --------------------------------------------------------------------------------
    def _values(self) -> dict[str, object]:
        r = self.rng
        return dict(days=r.randint(2, 7), hours=r.randint(6, 48), weeks=r.randint(3, 12), trend=r.choice(
            ("improving", "stable", "deteriorating", "variable")), cbg=f"{r.randint(6, 9)}-{r.randint(10, 15)}",
            tir=r.randint(45, 80), homebp=f"{r.randint(128, 158)}/{r.randint(76, 94)}", packyears=r.randint(15, 60),
            mrc=r.randint(2, 4), exac=r.choice(("No", "One", "Two", "Three")), reliever=r.randint(1, 7),
            pef=r.randint(280, 520), nyha=r.choice(("I", "II", "II", "III")), ef=r.randint(25, 50),
            chads=r.randint(1, 6), egfr_lo=r.randint(32, 42), egfr_hi=r.randint(43, 58), acr=r.randint(3, 45),
            yards=r.choice((50, 100, 200, 300)), phq=r.randint(10, 22), migraine_days=r.randint(2, 10),
            months=r.randint(3, 30), moca=r.randint(14, 24), bmi=round(r.uniform(31, 46), 1),
            das=round(r.uniform(2.2, 5.8), 1), curb=r.randint(0, 3), o2day=r.randint(1, 4), nihss=r.randint(2, 14),
            clock=f"{r.randint(6, 22):02d}:{r.choice((0, 10, 15, 20, 30, 40, 45, 50)):02d}", wells=r.randint(2, 5),
            akistage=r.randint(1, 3), gbs=r.randint(4, 12), glasgow=r.randint(0, 4), drop=r.randint(20, 40),
            kg=r.randint(4, 12), fit=r.randint(80, 400), nodes=r.randint(1, 3), pdl1=r.choice((0, 5, 30, 60, 80)),
            psa=round(r.uniform(6.5, 24.0), 1))

    def fill(self, text: str) -> str:
        return text.format(**self.values)

    def pick(self, options: Sequence[str], default: str = "") -> str:
        return self.fill(self.rng.choice(options)) if options else default

    def codes_for(self, conds: Sequence[ConditionInfo]) -> tuple[tuple[str, str], ...]:
        out: list[tuple[str, str]] = []
        for c in conds:
            for pair in c.codes:
                if pair not in out:
                    out.append(pair)
        return tuple(out)

    def coded_line(self, c: ConditionInfo, style: int) -> str:
        if style == 0:
            return f"{c.name} [ICD-10 {c.icd10}] [SNOMED CT {c.snomed}]"
        if style == 1:
            return f"{c.name} ({c.icd10}; SCT {c.snomed})"
        return f"{c.icd10} | {c.snomed} | {c.name}"

    def coded_list(self, conds: Sequence[ConditionInfo], numbered: bool = True) -> str:
        style = self.rng.randrange(3)
        lines = []
        for i, c in enumerate(conds, 1):
            prefix = f"{i}. " if numbered else "- "
            lines.append(prefix + self.coded_line(c, style))
        return "\n".join(lines)

    def med_list(self, meds: Sequence[Med]) -> str:
        if not meds:
            return "No regular medications."
        meds = list(meds)[:10]
        style = self.rng.randrange(3)
        lines = []
        for drug, dose, route, freq in meds:
            if style == 0:
                lines.append(f"- {drug} {dose} {_ROUTES[route][0]} {_FREQS[freq][0]}")
            elif style == 1:
                lines.append(f"- {drug} {dose} {_ROUTES[route][1]} {_FREQS[freq][1]}")
            else:
                lines.append(f"{drug:<34} {dose:<22} {_ROUTES[route][2]:<9} {_FREQS[freq][2]}")
        return "\n".join(lines)

    def name_line(self) -> str:
        i, r = self.ident, self.rng
        dob = i.birth_date.strftime("%d/%m/%Y")
        nhs = format_nhs_number(i.national_id) if r.random() < 0.7 else i.national_id
        style = r.randrange(3)
        if style == 0:
            return f"Name: {i.given} {i.family}\nDOB: {dob}    Sex: {i.sex.capitalize()}\nMRN: {i.mrn}    NHS No: {nhs}"
        if style == 1:
            return f"Patient: {i.family.upper()}, {i.given} ({i.sex[0].upper()})    DOB: {dob}\nHospital No: {i.mrn}    NHS Number: {nhs}"
        return f"{self.p.title} {i.given} {i.family}  |  DOB {dob}  |  MRN: {i.mrn}  |  NHS No: {nhs}"

    def age_sex(self, on: date) -> str:
        return f"{age_on(self.ident.birth_date, on)}{'F' if self.ident.sex == 'female' else 'M'}"

    def episode_meds(self) -> list[Med]:
        meds = list(self.p.meds)
        if self.main.meds and self.kind != "review":
            meds += self.rng.sample(self.main.meds, self.rng.randint(1, min(3, len(self.main.meds))))
        elif self.main.meds:
            meds += [self.rng.choice(self.main.meds)]
        meds = _dedupe_meds(meds)
        self.p.meds = _dedupe_meds(self.p.meds + [m for m in meds if m[0] not in {"Amoxicillin", "Clarithromycin",
                                   "Co-amoxiclav", "Flucloxacillin", "Nitrofurantoin MR", "Trimethoprim"}])
        return meds

    # -- documents ------------------------------------------------------------------------------
    def document(self, doc_type: str):
        builder = getattr(self, f"_{doc_type}")
        record_date, conds, text = builder()
        record_date = min(max(record_date, self.start), self.end)
        return record_date, doc_type, self.codes_for(conds), text.strip() + "\n"

    def _discharge_summary(self):
        r, m, i = self.rng, self.main, self.ident
        conds = [m] + self.comorbid
        meds = self.episode_meds()
        adm, dis = _fmt_date(self.admit, style=0), _fmt_date(self.discharge, style=0)
        hpc = " ".join(self.fill(h) for h in r.sample(m.history, min(2, len(m.history)))) if m.history else ""
        exam = self.pick(m.exam, "Examination unremarkable.")
        course = " ".join(self.fill(c) for c in m.course) if m.course else "Recovered well with supportive care."
        plan = "\n".join(f"- {self.fill(p)}" for p in (m.plan or ("GP to review in 2 weeks.",)))
        imaging = ""
        if m.imaging:
            exam_name, _, impression = r.choice(m.imaging)
            imaging = f"{exam_name}: {impression}"
        pmh = self.coded_list(self.comorbid) if self.comorbid else "Nil of note."
        if r.random() < 0.5:
            text = f"""{self.hospital}
{self.trust}
DISCHARGE SUMMARY

{self.name_line()}
Tel: {i.phone}
Admitted: {adm}    Discharged: {dis}    Ward: {self.ward}
Consultant: {self.consultant} ({m.specialty})
GP: {self.p.gp}, {self.p.practice}

Presenting complaint:
{self.pick(m.complaint, "Unwell.")}

History of presenting complaint:
{hpc}

Past medical history:
{pmh}

Examination on admission:
{self.vitals_text}. {exam}

Investigations:
{self.labs_text}
{imaging}

Diagnoses:
{self.coded_list([m])}

Management and progress:
{course}

Medications on discharge:
{self.med_list(meds)}

Follow-up plan:
{plan}

Completed by {self.junior} (FY2) on behalf of {self.consultant}, {dis}
"""
        else:
            text = f"""eDISCHARGE NOTIFICATION - {self.hospital.upper()}
{self.name_line()}
Contact telephone: {i.phone}
Date of admission: {_fmt_date(self.admit, style=1)}    Date of discharge: {_fmt_date(self.discharge, style=1)}
Length of stay: {self.los} day(s)    Specialty: {m.specialty}    Responsible consultant: {self.consultant}

Reason for admission: {self.pick(m.complaint, "Unwell.")}

Diagnosis at discharge:
{self.coded_list(conds)}

Clinical summary:
{self.age_sex(self.admit)} {'presented with' if r.random() < 0.5 else 'admitted with'} {_lc_first(self.pick(m.complaint, 'symptoms').rstrip('.'))}. {hpc} On examination: {self.vitals_text}; {_lc_first(exam)} {course}

Key results: {self.labs_text.replace(chr(10), '; ')}{'. ' + imaging if imaging else ''}

Medication on discharge:
{self.med_list(meds)}

Actions for GP:
{plan}

Electronically signed: {self.junior}, {dis}
"""
        return self.discharge, conds, text

    def _clinic_letter(self):
        r, m, i = self.rng, self.main, self.ident
        when = self.discharge + timedelta(days=r.randint(7, 42)) if self.kind != "review" else self.admit
        when = min(when, self.end)
        conds = [m] + self.comorbid
        meds = self.episode_meds()
        gp_surname = self.p.gp.split()[-1]
        history = " ".join(self.fill(h) for h in m.history) if m.history else ""
        plan_items = [self.fill(p) for p in r.sample(m.plan, min(2, len(m.plan)))] if m.plan else ["Review in 6 months."]
        results = self.labs_text.replace("\n", "; ")
        if m.imaging and self.kind == "cancer":
            results += ". " + r.choice(m.imaging)[2]
        if m.pathology and self.kind == "cancer":
            results += " Histology: " + self.fill(r.choice(m.pathology)[3])
        opener = r.choice((
            f"I saw {self.p.title} {i.family} in the {m.specialty} clinic today.",
            f"Thank you for referring this {age_on(i.birth_date, when)}-year-old {'woman' if i.sex == 'female' else 'man'}, whom I reviewed in clinic on {_fmt_date(when, r)}.",
            f"I reviewed {self.p.title} {i.family} today with regard to {_lc_first(m.name)}.",
        ))
        text = f"""{m.specialty} Outpatient Department
{self.hospital}, {self.trust}
Secretary: {_phone(r)}

Dictated: {_fmt_date(when, style=0)}    Typed: {_fmt_date(min(when + timedelta(days=r.randint(1, 6)), self.end), style=0)}

{self.p.gp}
{self.p.practice}

Dear Dr {gp_surname},

Re: {self.p.title} {i.given} {i.family}, DOB {i.birth_date.strftime('%d/%m/%Y')}
NHS No: {format_nhs_number(i.national_id)}    MRN: {i.mrn}
Tel: {i.phone}

Diagnoses:
{self.coded_list(conds)}

Current medication:
{self.med_list(meds)}

{opener} {history} {'Examination today: ' + self.vitals_text + '.'} Recent results: {results.rstrip('.')}.

Plan:
{chr(10).join(f'{n}. {p}' for n, p in enumerate(plan_items, 1))}

{r.choice(('I will see them again in the clinic in 3 months.', 'I have not arranged further follow-up but would be happy to see them again.', 'We will review after the MDT outcome.'))}

Yours sincerely,

{self.consultant}
Consultant, {m.specialty}
cc: {self.p.title} {i.given} {i.family} (patient)
"""
        return when, conds, text

    def _operative_note(self):
        r, m, i = self.rng, self.main, self.ident
        if not m.procedure:
            return self._progress_note()
        operation, findings, steps = r.choice(m.procedure)
        if m.specialty == "Trauma and Orthopaedics":
            anaesthetic = r.choice(("Spinal anaesthetic with sedation", "General anaesthetic with LMA and fascia iliaca block"))
            prophylaxis = "teicoplanin 400 mg IV and gentamicin 3 mg/kg IV at induction"
            urgency = "Urgent (NCEPOD 3)"
        elif m.key == "hernia" or m.key == "breast_ca":
            anaesthetic = r.choice(("General anaesthetic with LMA", "General anaesthetic with LMA and local infiltration"))
            prophylaxis = "cefuroxime 1.5 g IV at induction" if m.key == "breast_ca" else "none required"
            urgency = "Elective"
        else:
            anaesthetic = "General anaesthetic with endotracheal tube" + r.choice(("", " and TAP blocks", " and rectus sheath catheters"))
            prophylaxis = "cefuroxime 1.5 g IV and metronidazole 500 mg IV at induction"
            urgency = "Elective" if m.kind == "cancer" else r.choice(("Emergency (NCEPOD 2)", "Urgent (NCEPOD 3)"))
        post = [self.fill(p) for p in m.plan[:1]]
        if operation.startswith("Laparoscopic"):
            ebl = r.choice((10, 20, 30, 50, 100))
        elif m.key == "nof":
            ebl = r.choice((200, 250, 300, 400, 500))
        elif m.key in ("ankle", "hernia", "breast_ca"):
            ebl = r.choice((10, 20, 30, 50))
        else:
            ebl = r.choice((100, 150, 200, 300, 400))
        vte = ("Enoxaparin", "40 mg", "SC", "OD")
        meds = [vte] + [x for x in m.meds if x[2] != "oral"][:1] + [x for x in m.meds if x[2] == "oral"][:2]
        when = self.op_day
        text = f"""OPERATION NOTE - {self.hospital}
{self.name_line()}
Date of operation: {_fmt_date(when, style=0)}    Theatre {r.randint(1, 12)}    {urgency}
Surgeon: {self.consultant}    Assistant: {self.junior}    Anaesthetist: {r.choice(self.staff.anaesthetists)}
Anaesthetic: {anaesthetic}. Antibiotic prophylaxis: {prophylaxis}.

Pre-operative diagnosis: {self.coded_line(m, r.randrange(3))}
Operation: {operation}
Indication: {self.pick(m.complaint, m.name).rstrip('.')}; {_lc_first(self.pick(m.imaging and tuple(x[2] for x in m.imaging) or ('clinical diagnosis',)).rstrip('.'))}.

Findings: {findings}
Procedure: {steps}
Estimated blood loss: {ebl} mL. Counts correct. WHO checklist completed.

Post-operative instructions:
- Observations as per ward protocol; {r.choice(('eat and drink as tolerated', 'free fluids today, light diet tomorrow', 'sips only for 6 hours'))}
- {post[0] if post else 'Routine post-operative care.'}
Post-operative prescription:
{self.med_list(meds)}

Signed: {self.consultant}, Consultant, {m.specialty}
"""
        return when, [m], text

    def _radiology_report(self):
        r, m = self.rng, self.main
        if m.imaging:
            exam_name, findings, impression = r.choice(m.imaging)
        else:
            exam_name, findings, impression = ("XR chest PA", "Heart size normal. Lungs clear. No effusion.",
                                               "No acute abnormality.")
        when = self.admit
        accession = f"RX{when.strftime('%y')}{r.randrange(10**6):06d}"
        comparison = r.choice(("None available.", f"Previous {exam_name.split()[0]} dated {_fmt_date(when - timedelta(days=r.randint(200, 1500)), style=0)}.", "No prior imaging on PACS."))
        technique = {
            "CT": "Axial images acquired following intravenous contrast (Omnipaque 350, 100 mL) with multiplanar reformats.",
            "MRI": "Multiplanar multisequence imaging including diffusion-weighted sequences.",
            "US": "Real-time grey-scale and colour Doppler ultrasound.",
            "XR": "Single projection radiograph." if r.random() < 0.5 else "AP and lateral projections.",
        }.get(exam_name.split()[0], "Standard protocol.")
        coded = f"Coded: {m.icd10} (ICD-10); {m.snomed} (SNOMED CT)" if r.random() < 0.5 else \
            f"Diagnosis code: ICD-10 {m.icd10} / SNOMED CT {m.snomed}"
        text = f"""DEPARTMENT OF RADIOLOGY - {self.hospital}
{self.name_line()}
Examination: {exam_name.upper()}
Date of examination: {_fmt_date(when, style=0)}    Accession: {accession}
Referrer: {self.junior}, {m.specialty}
Clinical details: {self.age_sex(when)}. {self.pick(m.complaint, 'Query pathology.')} {self.pick(('?' + _lc_first(m.name), 'Please assess.', 'Clinical concern for ' + _lc_first(m.name) + '.'))}
Technique: {technique}
Comparison: {comparison}

Findings:
{findings}
{r.choice(('The visualised bones are unremarkable.', 'No other significant abnormality.', 'Incidental simple renal cyst, no follow-up required.' if exam_name.startswith('CT') else 'No other abnormality.'))}

Impression:
{impression}

{coded}
Reported by: {r.choice(self.staff.radiologists)}, Consultant Radiologist, {_fmt_date(when, style=0)}
"""
        return when, [m], text

    def _pathology_report(self):
        r, m = self.rng, self.main
        if m.pathology:
            specimen, macro, micro, conclusion = r.choice(m.pathology)
        else:
            specimen, macro, micro, conclusion = ("Skin ellipse", "An ellipse of skin 20 x 8 mm.",
                                                  "Seborrhoeic keratosis. No dysplasia.", "Benign seborrhoeic keratosis.")
        taken = self.op_day
        when = min(taken + timedelta(days=r.randint(3, 10)), self.end)
        lab_no = f"H{taken.strftime('%y')}/{r.randrange(10**5):05d}"
        text = f"""CELLULAR PATHOLOGY REPORT
{self.hospital} - Department of Histopathology
Lab number: {lab_no}
{self.name_line()}
Sender: {self.consultant}, {m.specialty}    Location: {self.ward}
Date received: {_fmt_date(taken, style=0)}    Date reported: {_fmt_date(when, style=0)}

Specimen: {specimen}
Clinical details: {self.pick(m.complaint, 'Not given.')} {self.pick(tuple(x[2] for x in m.imaging) or ('',))}

Macroscopy:
{macro} {r.choice(('Representative blocks taken.', 'All embedded in 3 cassettes.', 'Serially sliced and embedded in full.'))}

Microscopy:
{self.fill(micro)}

Conclusion:
{self.fill(conclusion)}

SNOMED CT: {m.snomed}    ICD-10: {m.icd10}
Reported by: {r.choice(self.staff.pathologists)}, Consultant Histopathologist
"""
        return when, [m], text

    def _progress_note(self):
        r, m, i = self.rng, self.main, self.ident
        if self.kind == "review":
            when = self.admit
            conds = [m] + [c for c in self.comorbid if r.random() < 0.5]
            text = f"""{m.specialty} - nurse-led review    {_fmt_date(when, style=0)} {r.randint(8, 16):02d}:{r.choice(('00', '15', '30', '45'))}
{i.family.upper()}, {i.given}    {self.age_sex(when)}    MRN {i.mrn}    NHS {format_nhs_number(i.national_id)}

S: {' '.join(self.fill(h) for h in m.history) if m.history else 'Feels well.'}
O: {self.vitals_text}. {self.labs_text.replace(chr(10), '; ')}
A: {'; '.join(self.coded_line(c, 1) for c in conds)}
P: {' '.join(self.fill(p) for p in (m.plan or ('Continue current management.',)))}

{r.choice(('Clinical nurse specialist', 'Practice-based specialist nurse', 'Advanced nurse practitioner'))}: {r.choice(_FEMALE)} {r.choice(_CLINICIAN_SURNAMES)}
"""
            return when, conds, text
        when = min(self.admit + timedelta(days=min(1, self.los)), self.discharge)
        day = (when - self.admit).days + 1
        text = f"""WARD ROUND - {self.ward}    {_fmt_date(when, style=0)}    Day {day} of admission
{i.family.upper()}, {i.given}    {self.age_sex(when)}    MRN {i.mrn}    NHS {format_nhs_number(i.national_id)}
Consultant: {self.consultant}

S: {r.choice(('Feels a little better today.', 'Slept poorly; pain controlled with regular paracetamol.', 'No new complaints.', 'Still short of breath on minimal exertion.'))}
O: {self.vitals_text}. {self.pick(m.exam, 'Examination unchanged.')}
   Bloods: {self.labs_text.replace(chr(10), '; ')}
A: {self.coded_line(m, r.randrange(3))}{' - improving' if r.random() < 0.6 else ' - slow to settle'}
P: {r.choice(('Continue current treatment.', 'Step down to oral therapy if afebrile for 24 hours.', 'Physiotherapy and OT assessment today.'))}
   {self.pick(m.plan, 'Review tomorrow.')}
   VTE prophylaxis: {r.choice(('enoxaparin 40 mg SC OD prescribed', 'on therapeutic anticoagulation', 'TEDS, mechanical prophylaxis only'))}.

{self.junior} (ST2) for {self.consultant}
"""
        return when, [m], text


def _labs(rng: random.Random, flags: Sequence[str], *, age: int, female: bool) -> str:
    f = set(flags)
    hb = rng.randint(72, 98) if f & {"anaemia", "bleed"} else rng.randint(118, 158)
    wcc = round(rng.uniform(13.5, 24.0), 1) if f & {"infection", "severe_infection"} else round(rng.uniform(4.2, 10.5), 1)
    crp = rng.randint(120, 340) if "severe_infection" in f else rng.randint(40, 190) if "infection" in f else rng.randint(1, 9)
    creat = rng.randint(180, 420) if "aki" in f else rng.randint(120, 190) if "ckd" in f else rng.randint(58, 104)
    urea = round(rng.uniform(12, 28), 1) if "aki" in f or "bleed" in f else round(rng.uniform(3.5, 8.0), 1)
    # MDRD four-variable estimate, reported as ">90" above 90 as UK laboratories do.
    egfr_value = 175 * (creat / 88.4) ** -1.154 * max(age, 18) ** -0.203 * (0.742 if female else 1.0)
    egfr = ">90" if egfr_value > 90 else str(max(5, int(egfr_value)))
    na, k = rng.randint(131, 144), round(rng.uniform(3.5, 5.6 if "aki" in f else 5.0), 1)
    line1 = f"Hb {hb} g/L, WCC {wcc} x10^9/L, Plt {rng.randint(160, 420)} x10^9/L, CRP {crp} mg/L"
    line2 = f"Na {na} mmol/L, K {k} mmol/L, Urea {urea} mmol/L, Creatinine {creat} umol/L, eGFR {egfr} mL/min/1.73m2"
    extra: list[str] = []
    if "lactate" in f:
        extra.append(f"Lactate {round(rng.uniform(2.4, 6.5), 1)} mmol/L")
    if "troponin" in f:
        extra.append(f"hs-Troponin T {rng.randint(180, 4200)} ng/L (ref < 14)")
    if "bnp" in f:
        extra.append(f"NT-proBNP {rng.randint(900, 9000)} ng/L")
    if "ddimer" in f:
        extra.append(f"D-dimer {rng.randint(900, 4500)} ng/mL FEU")
    if "amylase" in f:
        extra.append(f"Amylase {rng.randint(450, 2400)} U/L")
    if "lft" in f:
        extra.append(f"Bilirubin {rng.randint(22, 180)} umol/L, ALP {rng.randint(140, 620)} U/L, ALT {rng.randint(40, 300)} U/L")
    if "hba1c" in f:
        extra.append(f"HbA1c {rng.randint(48, 96)} mmol/mol")
    if "glucose" in f:
        extra.append(f"Glucose {round(rng.uniform(5.5, 16.0), 1)} mmol/L")
    if "tft" in f:
        extra.append(f"TSH {round(rng.uniform(0.4, 9.5), 2)} mU/L, free T4 {round(rng.uniform(9, 19), 1)} pmol/L")
    if "urate" in f:
        extra.append(f"Urate {rng.randint(320, 560)} umol/L")
    if "lipids" in f:
        extra.append(f"Total cholesterol {round(rng.uniform(3.2, 6.8), 1)} mmol/L, LDL {round(rng.uniform(1.4, 4.5), 1)} mmol/L")
    if "psa" in f:
        extra.append(f"PSA {round(rng.uniform(6.5, 24.0), 1)} ng/mL")
    if "cea" in f:
        extra.append(f"CEA {round(rng.uniform(2.0, 38.0), 1)} ug/L")
    if "anaemia" in f:
        extra.append(f"Ferritin {rng.randint(4, 25)} ug/L")
    lines = [line1, line2] + (["; ".join(extra)] if extra else [])
    return "\n".join(lines)


def _vitals(rng: random.Random, flags: Sequence[str]) -> str:
    f = set(flags)
    sbp = rng.randint(78, 98) if "hypotension" in f else rng.randint(150, 182) if "hypertension" in f else rng.randint(108, 146)
    dbp = max(40, sbp - rng.randint(35, 60))
    hr = rng.randint(104, 136) if "tachy" in f else rng.randint(58, 96)
    rhythm = " irregularly irregular" if "af" in f else ""
    rr = rng.randint(22, 30) if "hypoxia" in f else rng.randint(12, 20)
    spo2 = rng.randint(86, 93) if "hypoxia" in f else rng.randint(91, 95) if "mild_hypoxia" in f else rng.randint(95, 99)
    temp = round(rng.uniform(38.0, 39.6), 1) if "fever" in f else round(rng.uniform(36.2, 37.4), 1)
    if rng.random() < 0.5:
        return f"BP {sbp}/{dbp} mmHg, HR {hr} bpm{rhythm}, RR {rr}/min, SpO2 {spo2}% on {'room air' if spo2 > 92 else '2 L/min nasal cannulae'}, temperature {temp} C"
    return f"Obs: BP {sbp}/{dbp}, HR {hr}{rhythm}, RR {rr}, sats {spo2}% {'RA' if spo2 > 92 else 'on 2 L O2'}, T {temp}"


# --------------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------------


def synthetic_corpus(hospital: SyntheticHospital) -> Iterator[str]:
    """Every record's text, in record order (for tokenizer training)."""
    for record in hospital.records:
        yield record.text


# --------------------------------------------------------------------------------------------
# FHIR R4 export (Synthea-shaped)
# --------------------------------------------------------------------------------------------

_BUNDLE_TYPES = ("transaction", "collection", "searchset")


def _uuid(seed: int, kind: str, ident: str) -> str:
    return str(uuid.uuid5(_UUID_NAMESPACE, f"{seed}/{kind}/{ident}"))


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _instant(d: date, n: int) -> str:
    return f"{d.isoformat()}T{8 + n % 10:02d}:{(n * 7) % 60:02d}:00Z"


def _group_conditions(conditions: Sequence[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """Split a flat (system, code) list into one group per Condition resource."""
    groups: list[list[tuple[str, str]]] = []
    for system, code in conditions:
        if not groups or any(s == system for s, _ in groups[-1]):
            groups.append([])
        groups[-1].append((system, code))
    return groups


def write_fhir_bundles(
    hospital: SyntheticHospital,
    out_dir: str | Path,
    *,
    per_bundle: int = 50,
    bundle_type: str = "transaction",
) -> list[Path]:
    """Write the hospital as FHIR R4 Bundles of ``per_bundle`` patients each; return the paths.

    transaction: ``urn:uuid:`` fullUrls and references, ``request`` POST entries, and a conditional
    create (``ifNoneExist`` on the MRN) for each Patient. collection: the same without ``request``.
    searchset: server-style absolute fullUrls, relative references (``Patient/<id>``) and
    ``search.mode`` (match for Patients, include for the rest). Radiology and pathology reports are
    written as DiagnosticReport (presentedForm), all other documents as DocumentReference.
    """
    if bundle_type not in _BUNDLE_TYPES:
        raise ValueError(f"bundle_type must be one of {_BUNDLE_TYPES}, not {bundle_type!r}")
    if per_bundle < 1:
        raise ValueError("per_bundle must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    by_patient: dict[str, list[ClinicalRecord]] = {p.key: [] for p in hospital.patients}
    for record in hospital.records:
        by_patient[record.patient_key].append(record)
    paths: list[Path] = []
    patients = hospital.patients
    for number, offset in enumerate(range(0, len(patients), per_bundle), 1):
        chunk = patients[offset:offset + per_bundle]
        bundle = _bundle(hospital, chunk, by_patient, bundle_type, number)
        path = out / f"{bundle_type}-{number:04d}.json"
        path.write_bytes((json.dumps(bundle, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8"))
        paths.append(path)
    return paths


def _bundle(hospital, chunk, by_patient, bundle_type, number) -> dict:
    seed = hospital.seed
    entries: list[dict] = []

    def full_url(rtype: str, rid: str) -> str:
        if bundle_type == "searchset":
            return f"{SEARCHSET_BASE}/{rtype}/{rid}"
        return f"urn:uuid:{_uuid(seed, rtype, rid)}"

    def ref(rtype: str, rid: str) -> str:
        return f"{rtype}/{rid}" if bundle_type == "searchset" else full_url(rtype, rid)

    def add(resource: dict, *, if_none_exist: str | None = None) -> None:
        rtype, rid = resource["resourceType"], resource["id"]
        entry: dict = {"fullUrl": full_url(rtype, rid), "resource": resource}
        if bundle_type == "transaction":
            request = {"method": "POST", "url": rtype}
            if if_none_exist:
                request["ifNoneExist"] = if_none_exist
            entry["request"] = request
        elif bundle_type == "searchset":
            entry["search"] = {"mode": "match" if rtype == "Patient" else "include"}
        entries.append(entry)

    for patient in chunk:
        add(_patient_resource(patient), if_none_exist=f"identifier={MRN_SYSTEM}|{patient.mrn}")
        pref = {"reference": ref("Patient", patient.key), "display": f"{patient.given} {patient.family}"}
        for record in by_patient[patient.key]:
            n = int("".join(ch for ch in record.record_id if ch.isdigit()) or "0")
            enc_id = f"enc-{record.record_id}"
            inpatient = record.document_type in ("discharge_summary", "operative_note")
            add({
                "resourceType": "Encounter",
                "id": enc_id,
                "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                          "code": "IMP" if inpatient else "AMB",
                          "display": "inpatient encounter" if inpatient else "ambulatory"},
                "type": [{"text": DOCUMENT_TYPE_TITLES[record.document_type]}],
                "subject": pref,
                "period": {"start": _instant(record.record_date, n), "end": _instant(record.record_date, n + 1)},
            })
            eref = {"reference": ref("Encounter", enc_id)}
            for k, group in enumerate(_group_conditions(record.conditions), 1):
                codings = []
                for system, code in group:
                    coding = {"system": ICD10_URI if system == "icd10" else SNOMED_URI, "code": code}
                    display = condition_display(system, code)
                    if display:
                        coding["display"] = display
                    codings.append(coding)
                text = next((c["display"] for c in codings if "display" in c), group[0][1])
                add({
                    "resourceType": "Condition",
                    "id": f"cond-{record.record_id}-{k}",
                    "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                                   "code": "active"}]},
                    "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                                       "code": "confirmed"}]},
                    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                              "code": "encounter-diagnosis", "display": "Encounter Diagnosis"}]}],
                    "code": {"coding": codings, "text": text},
                    "subject": {"reference": pref["reference"]},
                    "encounter": eref,
                    "onsetDateTime": record.record_date.isoformat(),
                    "recordedDate": _instant(record.record_date, n),
                })
            loinc, loinc_display = DOCUMENT_TYPE_LOINC[record.document_type]
            type_cc = {"coding": [{"system": LOINC_URI, "code": loinc, "display": loinc_display},
                                  {"system": DOCUMENT_TYPE_SYSTEM, "code": record.document_type}],
                       "text": DOCUMENT_TYPE_TITLES[record.document_type]}
            attachment = {"contentType": "text/plain; charset=utf-8", "data": _b64(record.text),
                          "title": DOCUMENT_TYPE_TITLES[record.document_type]}
            if record.document_type in ("radiology_report", "pathology_report"):
                category = ("RAD", "Radiology") if record.document_type == "radiology_report" else ("PAT", "Pathology (gross & histopath, not surgical)")
                add({
                    "resourceType": "DiagnosticReport",
                    "id": record.record_id,
                    "status": "final",
                    "category": [{"coding": [{"system": V2_0074, "code": category[0], "display": category[1]}]}],
                    "code": type_cc,
                    "subject": {"reference": pref["reference"]},
                    "encounter": eref,
                    "effectiveDateTime": _instant(record.record_date, n),
                    "issued": _instant(record.record_date, n + 2),
                    "presentedForm": [attachment],
                })
            else:
                add({
                    "resourceType": "DocumentReference",
                    "id": record.record_id,
                    "status": "current",
                    "type": type_cc,
                    "category": [{"coding": [{"system": "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",
                                              "code": "clinical-note", "display": "Clinical Note"}]}],
                    "subject": {"reference": pref["reference"]},
                    "date": _instant(record.record_date, n + 2),
                    "content": [{"attachment": attachment}],
                    "context": {"encounter": [eref],
                                "period": {"start": _instant(record.record_date, n), "end": _instant(record.record_date, n + 1)}},
                })
    bundle: dict = {"resourceType": "Bundle", "id": f"rapha-{seed}-{bundle_type}-{number:04d}", "type": bundle_type}
    if bundle_type == "searchset":
        bundle["total"] = len(chunk)
        bundle["link"] = [{"relation": "self", "url": f"{SEARCHSET_BASE}/Patient?_revinclude=*&_page={number}"}]
    bundle["entry"] = entries
    return bundle


def _patient_resource(p: PatientIdentity) -> dict:
    return {
        "resourceType": "Patient",
        "id": p.key,
        "identifier": [
            {"use": "usual",
             "type": {"coding": [{"system": V2_0203, "code": "MR", "display": "Medical record number"}],
                      "text": "Medical Record Number"},
             "system": MRN_SYSTEM, "value": p.mrn},
            {"use": "official", "system": NHS_NUMBER_SYSTEM, "value": p.national_id},
        ],
        "name": [{"use": "official", "family": p.family, "given": [p.given]}],
        "telecom": [{"system": "phone", "value": p.phone, "use": "mobile" if p.phone.startswith("07") else "home"}],
        "gender": p.sex,
        "birthDate": p.birth_date.isoformat(),
    }
