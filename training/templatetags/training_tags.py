"""Template helpers of training: the request page's jobs panel, and readable durations."""

from __future__ import annotations

from django import template

register = template.Library()


@register.inclusion_tag("training/_request_jobs.html", takes_context=True)
def request_training(context, access_request):
    """`{% load training_tags %}{% request_training obj %}`: the request's training jobs and the
    Start training button, for whoever is signed in."""
    from training.views import request_jobs_context

    return {**request_jobs_context(context["request"].user, access_request), "csrf_token": context.get("csrf_token")}


@register.filter
def duration(seconds) -> str:
    """12 s, 3 min 20 s, 2 h 5 min."""
    if seconds is None or seconds == "":
        return "—"
    seconds = int(round(float(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"
