"""HTML forms of training: only the job list's filter (starting and cancelling take no input)."""

from __future__ import annotations

from django import forms

from training.models import TrainingJob


class JobFilterForm(forms.Form):
    status = forms.ChoiceField(choices=[("", "Any status"), *TrainingJob.Status.choices], required=False)
    kind = forms.ChoiceField(choices=[("", "Training and audits"), *TrainingJob.Kind.choices], required=False)
