"""The reviewer's and the sponsor's dashboards list their work, in a constant number of queries."""

import pytest
from django.urls import reverse

from portal.middleware import SESSION_KEY
from tests import factories, flow


def _get_dashboard(client, user):
    client.force_login(user)
    session = client.session
    session[SESSION_KEY] = True
    session.save()
    return client.get(reverse("dashboard"))


@pytest.mark.django_db
def test_dashboard_reviewer_lists_adapter_waiting(client):
    adapter = flow.adapter_in_review()
    reviewer = factories.reviewer()

    response = _get_dashboard(client, reviewer)

    assert reverse("egress:adapter_detail", args=[adapter.pk]).encode() in response.content
    assert b"0 of 2 sign-offs" in response.content


@pytest.mark.django_db
def test_dashboard_sponsor_lists_only_own_releases(client):
    release = flow.release()
    own = factories.sponsor(org=release.organisation)
    other = factories.sponsor()

    assert reverse("egress:release_detail", args=[release.pk]).encode() in _get_dashboard(client, own).content
    other_page = _get_dashboard(client, other)
    assert reverse("egress:release_detail", args=[release.pk]).encode() not in other_page.content
    assert b"Nothing has been released to your organisation yet." in other_page.content
