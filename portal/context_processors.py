from portal import permissions


def navigation(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"nav": []}
    links = [("Dashboard", "/", None)]
    candidates = [
        ("Projects", "/projects/", permissions.PROJECT_VIEW),
        ("Requests", "/requests/", permissions.REQUEST_VIEW),
        ("Datasets", "/datasets/", permissions.DATASET_VIEW),
        ("Review queue", "/review/queue/", permissions.REQUEST_DECIDE),
        ("Jobs", "/jobs/", permissions.JOB_VIEW),
        ("Base models", "/base-models/", permissions.BASE_MODEL_VIEW),
        ("Adapters", "/adapters/", permissions.ADAPTER_VIEW),
        ("Releases", "/releases/", permissions.RELEASE_VIEW),
        ("Tokens", "/tokens/", permissions.TOKEN_ISSUE),
        ("Audit log", "/audit/", permissions.AUDIT_VIEW),
    ]
    from django.urls import NoReverseMatch, resolve, Resolver404

    for label, url, permission in candidates:
        try:
            resolve(url)
        except Resolver404:
            continue
        if permissions.has_permission(user, permission):
            links.append((label, url, permission))
    return {"nav": [(label, url) for label, url, _ in links]}
