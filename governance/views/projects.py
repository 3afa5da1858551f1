"""Projects: the list, a new project, and a project's page (members, requests, ethics approvals)."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db.models import Count
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from governance import selectors, services
from governance.forms import EthicsForm, ProjectForm, add_service_errors
from governance.views._common import visible_project
from portal import permissions as p


@p.permission_required(p.PROJECT_VIEW)
def project_list(request):
    projects = selectors.projects_for(request.user).annotate(request_total=Count("requests", distinct=True))
    return render(request, "governance/project_list.html", {
        "projects": projects,
        "can_create": p.has_permission(request.user, p.PROJECT_CREATE),
    })


@require_http_methods(["GET", "POST"])
@p.permission_required(p.PROJECT_CREATE)
def project_create(request):
    form = ProjectForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            project = services.project_create(
                by=request.user, title=data["title"], lay_summary=data["lay_summary"],
                members=data["members"], sponsor=data["sponsor"],
            )
        except ValidationError as exc:
            add_service_errors(exc, form)
        else:
            messages.success(request, f"Project “{project.title}” created. Next: submit its ethics approval.")
            return redirect("governance:project_detail", pk=project.pk)
    status = 400 if form.is_bound else 200
    return render(request, "governance/project_form.html", {"form": form}, status=status)


def _project_page(request, project, *, ethics_form=None, status=200):
    user = request.user
    can_submit_ethics = p.has_permission(user, p.ETHICS_SUBMIT, project=project)
    context = {
        "project": project,
        "members": project.members.order_by("full_name"),
        "requests": selectors.requests_for(user, project=project),
        "approvals": selectors.ethics_for(user).filter(project=project),
        "can_submit_ethics": can_submit_ethics,
        "can_create_request": p.has_permission(user, p.REQUEST_CREATE, project=project),
        "ethics_form": ethics_form or (EthicsForm() if can_submit_ethics else None),
    }
    return render(request, "governance/project_detail.html", context, status=status)


@p.permission_required(p.PROJECT_VIEW)
def project_detail(request, pk: int):
    return _project_page(request, visible_project(request.user, pk))


@require_POST
@p.permission_required(p.ETHICS_SUBMIT)
def ethics_submit(request, pk: int):
    project = visible_project(request.user, pk)
    p.check_permission(request.user, p.ETHICS_SUBMIT, project=project)
    form = EthicsForm(request.POST, request.FILES)
    if form.is_valid():
        data = form.cleaned_data
        try:
            approval = services.ethics_submit(
                by=request.user, project=project, committee=data["committee"], reference=data["reference"],
                approved_on=data["approved_on"], expires_on=data["expires_on"], scope=data["scope"],
                letter=form.letter_bytes(),
            )
        except ValidationError as exc:
            add_service_errors(exc, form)
        else:
            messages.success(request, f"Ethics approval {approval.reference} submitted. A governance officer will verify it.")
            return redirect("governance:project_detail", pk=project.pk)
    return _project_page(request, project, ethics_form=form, status=400)
