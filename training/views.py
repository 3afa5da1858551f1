"""Training pages: jobs (list, live progress, cancel, the container log for hospital staff), starting
a job from an approved request, and the base-model registry. Every write is one service call."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from governance.models import DataAccessRequest
from portal import permissions as p
from portal.models import User
from training import hooks, selectors, services
from training.charts import line_svg
from training.forms import JobFilterForm
from training.models import TrainingJob

S = TrainingJob.Status
PAGE_SIZE = 50
RECIPE_LABELS = {"rank": "LoRA rank", "alpha": "LoRA alpha", "dropout": "LoRA dropout", "learning_rate": "Learning rate",
                 "epochs": "Epochs", "batch_size": "Batch size", "max_seq_length": "Max sequence length",
                 "seed": "Seed", "quantization": "Quantization", "canaries": "Canaries inserted",
                 "target_modules": "Target modules", "dp": "Differential privacy (DP-SGD)"}


def recipe_rows(recipe: dict) -> list[tuple[str, str]]:
    """A resolved recipe as (label, readable value) rows."""
    def shown(value) -> str:
        if value is None:
            return "off"
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, dict):
            return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in value.items())
        if isinstance(value, list):
            return ", ".join(map(str, value))
        return str(value)

    return [(RECIPE_LABELS.get(key, key.replace("_", " ").capitalize()), shown(value)) for key, value in recipe.items()]


def query_without_page(request) -> str:
    """The list's filter as a query string, for the pager's links."""
    query = request.GET.copy()
    query.pop("page", None)
    return query.urlencode()


def quantization_label(job: TrainingJob) -> str:
    return {"nf4": "QLoRA (4-bit NF4)", "none": "LoRA (full precision)"}.get(job.quantization, "not yet known")


def visible_job(user: User, pk) -> TrainingJob:
    """The job, or 404 for one the user may not see (as for one that does not exist)."""
    job = get_object_or_404(
        TrainingJob.objects.select_related("request__project", "base_model", "created_by", "cancel_requested_by", "parent"),
        pk=pk,
    )
    if not p.has_permission(user, p.JOB_VIEW, request=job.request):
        raise Http404("No such job.")
    return job


def _progress_context(user: User, job: TrainingJob) -> dict:
    return {
        "job": job,
        "failure": selectors.failure_text(user, job),
        "can_view_logs": p.has_permission(user, p.JOB_VIEW_LOGS),
        "loss_chart": line_svg(job.loss_curve) if job.kind == TrainingJob.Kind.TRAIN else None,
        "quantization": quantization_label(job),
        "elapsed_seconds": ((job.finished_at - job.started_at).total_seconds()
                            if job.started_at and job.finished_at else None),
    }


@p.permission_required(p.JOB_VIEW)
def job_list(request):
    filters = JobFilterForm(request.GET or None)
    data = filters.cleaned_data if filters.is_valid() else {}
    jobs = selectors.jobs_for(request.user, status=data.get("status") or None, kind=data.get("kind") or None)
    page = Paginator(jobs, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "training/job_list.html", {"page": page, "jobs": page.object_list, "filters": filters,
                                                      "query": query_without_page(request)})


@p.permission_required(p.JOB_VIEW)
def job_detail(request, pk):
    user = request.user
    job = visible_job(user, pk)
    context = _progress_context(user, job)
    context.update({
        "recipe": recipe_rows(job.recipe),
        "can_cancel": (not job.is_finished and job.cancel_requested_at is None
                       and p.has_permission(user, p.JOB_CANCEL, request=job.request)),
        "staff": p.has_permission(user, p.JOB_VIEW_LOGS),
        "audits": (list(job.audits.select_related("base_model", "created_by").order_by("created_at"))
                   if job.kind == TrainingJob.Kind.TRAIN else []),
        "links": [link for handler in hooks.job_links for link in handler(job=job, user=user)],
    })
    return render(request, "training/job_detail.html", context)


@p.permission_required(p.JOB_VIEW)
def job_progress(request, pk):
    """The live part of the job page, polled every few seconds until the job has finished."""
    job = visible_job(request.user, pk)
    return render(request, "training/_job_progress.html", _progress_context(request.user, job))


@p.permission_required(p.JOB_VIEW_LOGS)
def job_log(request, pk):
    """The sandbox's stdout and stderr as plain text (capped by the backend), for hospital staff."""
    job = visible_job(request.user, pk)
    try:
        handle = open(job.log_path, "rb")
    except FileNotFoundError:
        raise Http404("No container log was kept for this job.") from None
    response = FileResponse(handle, content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = f'inline; filename="job-{job.pk}.log"'
    return response


@require_POST
@p.permission_required(p.JOB_CANCEL)
def job_cancel(request, pk):
    job = visible_job(request.user, pk)
    job = services.job_cancel(job=job, by=request.user)
    if job.status == S.CANCELLED:
        messages.success(request, "The job was cancelled before it started.")
    elif job.is_finished:
        messages.info(request, f"The job had already {job.get_status_display().lower()}.")
    else:
        messages.success(request, "Cancellation requested: the worker stops the job within seconds.")
    return redirect("training:job_detail", pk=job.pk)


@require_POST
@p.permission_required(p.JOB_START)
def job_start(request, pk: int):
    """Start training for an approved request, then follow the job's progress on its page."""
    access_request = get_object_or_404(DataAccessRequest.objects.select_related("project"), pk=pk)
    if not p.has_permission(request.user, p.REQUEST_VIEW, request=access_request):
        raise Http404("No such request.")
    try:
        job = services.job_start(request=access_request, by=request.user)
    except ValidationError as exc:
        for message in exc.messages:
            messages.error(request, f"Training could not start: {message}")
        return redirect("governance:request_detail", pk=access_request.pk)
    messages.success(request, "Training queued. It starts when a GPU worker is free; this page follows it.")
    return redirect("training:job_detail", pk=job.pk)


@p.permission_required(p.BASE_MODEL_VIEW)
def base_model_list(request):
    return render(request, "training/base_model_list.html", {"models": selectors.base_models()})


def request_jobs_context(user: User, access_request: DataAccessRequest) -> dict:
    """What `training/_request_jobs.html` shows on a request's page: its jobs and the start button."""
    jobs = list(TrainingJob.objects.filter(request=access_request, kind=TrainingJob.Kind.TRAIN)
                .select_related("base_model").order_by("-created_at"))
    active = any(job.status not in (S.FAILED, S.CANCELLED, S.TIMED_OUT) for job in jobs)
    may_start = p.has_permission(user, p.JOB_START, request=access_request)
    problems = services.training_preconditions(access_request) if may_start and not active else []
    return {
        "request_obj": access_request,
        "training_jobs": jobs,
        "can_start_training": may_start and not active and not problems,
        "training_problems": problems if access_request.status == DataAccessRequest.Status.APPROVED else [],
        "may_start_training": may_start,
    }
