from django.apps import AppConfig


class EgressConfig(AppConfig):
    name = "egress"
    verbose_name = "Egress"

    def ready(self) -> None:
        from egress import rules, services  # noqa: F401  permission rules
        from training import hooks

        hooks.adapter_produced.append(lambda job, quarantine_dir: services.adapter_receive(job=job, quarantine_dir=quarantine_dir))
        hooks.audit_finished.append(lambda job: services.audit_receive(job=job))
