"""Shared by the import commands: find or register the dataset, acting as the data steward."""

from __future__ import annotations

from django.core.management.base import CommandError

from governance import services
from governance.models import Dataset
from portal.models import Role, User


def acting_steward(email: str | None) -> User:
    queryset = User.objects.filter(role_assignments__role=Role.DATA_STEWARD, is_active=True)
    steward = queryset.filter(email=email).first() if email else queryset.order_by("pk").first()
    if steward is None:
        raise CommandError(
            f"No active data steward {email!r}." if email else
            "No data steward exists yet: create one (make demo seeds one) or pass --steward EMAIL."
        )
    return steward


def dataset_for_import(*, name: str, title: str, modality: str, location: str, steward: User) -> Dataset:
    dataset = Dataset.objects.filter(name=name).first()
    if dataset is None:
        dataset = services.dataset_register(by=steward, name=name, title=title, modality=modality, location=location)
    elif dataset.modality != modality:
        raise CommandError(f"Dataset {name!r} holds {dataset.modality} data, not {modality}.")
    return dataset
