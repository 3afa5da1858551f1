"""HTML forms of egress. Forms check the shape of input; services decide and write."""

from __future__ import annotations

from django import forms

from egress.models import Adapter, SignOff
from portal.models import Organisation


class SignOffForm(forms.Form):
    decision = forms.ChoiceField(choices=SignOff.Decision.choices, widget=forms.RadioSelect)
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Required either way: it becomes part of the release record.",
    )


class ReleaseForm(forms.Form):
    organisation = forms.ModelChoiceField(
        queryset=Organisation.objects.filter(kind=Organisation.Kind.SPONSOR).order_by("name"),
        empty_label="Choose a sponsor organisation",
        label="Release to",
    )
    terms = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 4}),
        label="Data-use terms",
        help_text="Leave empty for the hospital's standard terms. The sponsor accepts them before the first download.",
    )


class ReasonForm(forms.Form):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), help_text="The sponsor sees this reason.")


class AdapterFilterForm(forms.Form):
    status = forms.ChoiceField(choices=[("", "Any status"), *Adapter.Status.choices], required=False)
