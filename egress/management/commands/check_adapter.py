"""The egress validator on a folder, outside the portal's flow (contract in DESIGN.md)."""

import json
import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from training.models import BaseModel


class Command(BaseCommand):
    help = "Validate DIR/adapter_model.safetensors against a registered base model and recipe; exit 0 accepted, 1 rejected."

    def add_arguments(self, parser):
        parser.add_argument("dir")
        parser.add_argument("--base-model", required=True, help="Registry name of the base model.")
        parser.add_argument("--rank", type=int, required=True)
        parser.add_argument("--alpha", type=float, default=None)
        parser.add_argument("--target-modules", required=True, help="Comma-separated, e.g. q_proj,v_proj")
        parser.add_argument("--json", action="store_true", help="Print the full report as JSON.")

    def handle(self, *args, dir, base_model, rank, alpha, target_modules, json: bool, **options):  # noqa: A002
        from egress.validation import ValidationPolicy, validate_adapter

        model = BaseModel.objects.filter(name=base_model).first()
        if model is None:
            raise CommandError(f"No registered base model {base_model!r}.")
        folder = Path(dir)
        if not folder.is_dir():
            raise CommandError(f"{dir} is not a folder.")
        recipe = {"target_modules": [m.strip() for m in target_modules.split(",") if m.strip()], "rank": rank,
                  "alpha": alpha if alpha is not None else 2 * rank}
        # No cohort here: the identifier scan is skipped (and says so); every other rule runs.
        report = validate_adapter(folder, base_model_dir=model.local_path, recipe=recipe, identifiers=None,
                                  policy=ValidationPolicy(require_identifiers=False))
        data = report.to_dict()
        if json:
            self.stdout.write(_json().dumps(data, indent=2))
        else:
            for rule in data["verdicts"]:
                self.stdout.write(f"{rule['status'].upper():7} {rule['rule']}: {rule.get('detail', '')}")
            self.stdout.write("ACCEPTED" if report.accepted else "REJECTED: " + "; ".join(report.reasons()))
        if not report.accepted:
            sys.exit(1)


def _json():
    import json as module

    return module
