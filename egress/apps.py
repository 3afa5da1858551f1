from django.apps import AppConfig


class EgressConfig(AppConfig):
    name = "egress"
    verbose_name = "Egress"

    def ready(self) -> None:
        from egress import rules, services  # noqa: F401  permission rules
        from training import hooks

        hooks.adapter_produced.append(lambda job, quarantine_dir: services.adapter_receive(job=job, quarantine_dir=quarantine_dir))
        hooks.audit_finished.append(lambda job: services.audit_receive(job=job))
        hooks.job_links.append(_adapter_link)


def _adapter_link(*, job, user) -> list[tuple[str, str]]:
    """On a job's page: a link to the adapter it produced or audited, for those who may see it."""
    from django.db.models import Q
    from django.urls import reverse

    from egress.models import Adapter
    from portal import permissions as p

    adapter = Adapter.objects.filter(Q(job=job) | Q(audit_job=job)).select_related("job__request__project").first()
    if adapter is None or not p.has_permission(user, p.ADAPTER_VIEW, adapter=adapter):
        return []
    return [("Adapter review" if adapter.status == Adapter.Status.IN_REVIEW else "Adapter",
             reverse("egress:adapter_detail", args=[adapter.pk]))]
