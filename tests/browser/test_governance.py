"""A researcher asks for data while the live preview counts the cohort; an officer approves it."""

from __future__ import annotations

import re

import pytest

from governance import services
from governance.models import DataAccessRequest
from governance.synthetic import generate_hospital
from tests import factories
from tests.browser.conftest import sign_in

SCREENSHOTS = "/tmp"


def hospital_dataset(steward):
    """120 synthetic patients: enough for the default policy's minimum of 100."""
    hospital = generate_hospital(120, seed=11)
    dataset = services.dataset_register(by=steward, name="synthetic-hospital", title="Synthetic hospital notes",
                                        modality="text", location="var/data/datasets/synthetic-hospital")
    services.dataset_import_records(dataset=dataset, patients=hospital.patients, records=hospital.records,
                                    by=steward, source="synthetic")
    return dataset


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_request_with_live_preview_submitted_and_approved(page, settings):
    from playwright.sync_api import expect

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    dataset = hospital_dataset(factories.steward())
    factories.text_base_model()
    researcher = factories.researcher()
    project = factories.project(pi=researcher, title="Discharge summary assistant")
    approval = factories.verified_ethics(project)  # a tiny PDF letter, verified by another officer
    officer = factories.officer()

    # The researcher fills in a request and watches the cohort preview follow the age range.
    sign_in(page, researcher, factories.PASSWORD)
    page.goto("/requests/new/")
    page.select_option("select[name=project]", str(project.pk))
    page.fill("input[name=title]", "Summarise discharge letters for GPs")
    page.fill("textarea[name=purpose]", "Fine-tune a small model to draft GP summaries of discharge letters.")
    page.check(f"input[name=datasets][value='{dataset.pk}']")
    patients = page.locator("#cohort-preview [data-preview-patients]")
    expect(patients).to_have_text("about 120")
    expect(page.locator("#cohort-preview [data-threshold]")).to_have_attribute("data-threshold", "met")

    page.fill("input[name=age_min]", "75")
    expect(patients).not_to_have_text("about 120")
    narrowed = int(re.fullmatch(r"about (\d+)", patients.inner_text()).group(1))
    assert narrowed < 100 and narrowed % 5 == 0
    expect(page.locator("#cohort-preview [data-threshold]")).to_have_attribute("data-threshold", "not-met")

    page.fill("input[name=age_max]", "60")  # a reversed range is named by its path
    expect(page.locator("#cohort-preview [data-preview-error]")).to_contain_text("$.all[0].age")
    page.fill("input[name=age_min]", "18")
    page.fill("input[name=age_max]", "")
    expect(patients).to_have_text("about 120")

    page.fill("input[name=base_model_name]", "tiny-text")
    page.fill("input[name=rank]", "8")
    page.select_option("select[name=ethics_approval]", str(approval.pk))
    page.screenshot(path=f"{SCREENSHOTS}/rapha-request-form.png", full_page=True)
    page.click("button:text('Save as draft')")
    page.wait_for_url(re.compile(r"/requests/\d+/$"))
    expect(page.locator(".status-line .badge")).to_have_text("Draft")
    page.click("button:text('Submit for review')")
    expect(page.locator(".status-line .badge")).to_have_text("Submitted")
    page.screenshot(path=f"{SCREENSHOTS}/rapha-request-researcher.png", full_page=True)
    page.click("button:text('Sign out')")

    # The officer signs in with a TOTP code, finds it in the queue and approves it.
    sign_in(page, officer, factories.PASSWORD, totp_code=lambda: factories.totp_code(officer))
    page.click("nav a:text('Review queue')")
    page.click("a:text('Summarise discharge letters for GPs')")
    expect(page.locator(".checks li.fail")).to_have_count(0)
    page.screenshot(path=f"{SCREENSHOTS}/rapha-request-officer.png", full_page=True)
    page.fill("textarea[name=approve-conditions]", "Outputs are reviewed before any release.")
    page.click("form[action$='/approve/'] button")
    expect(page.locator(".status-line .badge")).to_have_text("Approved")

    request = DataAccessRequest.objects.get(title="Summarise discharge letters for GPs")
    assert (request.status, request.decided_by, request.cohort.patient_count) == (
        DataAccessRequest.Status.APPROVED, officer, 120)
