"""The one settings module. Every deployment knob is an environment variable (see README)."""

from __future__ import annotations

from pathlib import Path

from portal.env import (
    env_bool,
    env_broker,
    env_choice,
    env_database,
    env_int,
    env_list,
    env_secret,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("RAPHA_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DJANGO_DEBUG", False)
_secret = env_secret("DJANGO_SECRET_KEY")
if _secret is None:
    if not DEBUG and not env_bool("RAPHA_ALLOW_INSECURE_SECRET", False):
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY (or DJANGO_SECRET_KEY_FILE) is not set. "
            "For local development set DJANGO_DEBUG=true or RAPHA_ALLOW_INSECURE_SECRET=true."
        )
    _secret = "insecure-development-key-never-use-in-production"
SECRET_KEY = _secret
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "csp",
    "portal",
    "governance",
    "training",
    "egress",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "portal.middleware.RequireTwoFactorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"
AUTH_USER_MODEL = "portal.User"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "portal.context_processors.navigation",
            ],
        },
    },
]

DATABASES = {"default": env_database("DATABASE_URL", VAR_DIR / "rapha.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

_redis_url = env_str("REDIS_URL", "")
CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": _redis_url}
        if _redis_url
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-gb"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if env_bool("RAPHA_MANIFEST_STATIC", not DEBUG)
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = True

# Security headers. HTTPS settings switch on behind TLS (RAPHA_HTTPS=true).
_https = env_bool("RAPHA_HTTPS", False)
SESSION_COOKIE_SECURE = _https
CSRF_COOKIE_SECURE = _https
SECURE_SSL_REDIRECT = _https
SECURE_HSTS_SECONDS = 31536000 if _https else 0
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if _https else None
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = env_int("RAPHA_SESSION_SECONDS", 8 * 3600, minimum=300)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
    }
}

# Login throttling: failures per e-mail and per address within the window.
LOGIN_MAX_FAILURES = env_int("RAPHA_LOGIN_MAX_FAILURES", 5, minimum=1)
LOGIN_WINDOW_SECONDS = env_int("RAPHA_LOGIN_WINDOW_SECONDS", 900, minimum=1)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "portal.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_THROTTLE_RATES": {"download": env_str("RAPHA_DOWNLOAD_RATE", "30/hour")},
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Rapha API",
    "DESCRIPTION": "Compute-to-data portal for clinical generative AI.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": "/api/v1",
    # Several models have a `status`; name each enum after its model so the schema has no clashes.
    "ENUM_NAME_OVERRIDES": {
        "RequestStatusEnum": "governance.models.DataAccessRequest.Status",
        "EthicsStatusEnum": "governance.models.EthicsApproval.Status",
        "JobStatusEnum": "training.models.TrainingJob.Status",
        "AdapterStatusEnum": "egress.models.Adapter.Status",
    },
}

# Celery. The embedded default is kombu's filesystem transport under var/: no server needed.
CELERY_BROKER_URL = env_broker("CELERY_BROKER_URL", "filesystem://")
_broker_is_fs = CELERY_BROKER_URL.startswith("filesystem://")
CELERY_RESULT_BACKEND = env_str(
    "CELERY_RESULT_BACKEND", "" if _broker_is_fs else CELERY_BROKER_URL
) or None
# The longest a training job may run; the broker's visibility timeout sits above it so a
# long job is never redelivered while its worker still runs it, and task limits sit below it.
JOB_MAX_SECONDS = env_int("RAPHA_JOB_MAX_SECONDS", 6 * 3600, minimum=60)
JOB_MAX_ATTEMPTS = env_int("RAPHA_JOB_MAX_ATTEMPTS", 3, minimum=1)
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    "training.tasks.*": {"queue": "gpu"},
    "egress.tasks.*": {"queue": "egress"},
}
# A task is acknowledged only once it has finished, so a worker that dies mid-job hands it back
# to the broker; our job rows count the attempts, so a poison job stops after JOB_MAX_ATTEMPTS.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_TIME_LIMIT = JOB_MAX_SECONDS + 600
CELERY_TASK_SOFT_TIME_LIMIT = JOB_MAX_SECONDS + 300
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": JOB_MAX_SECONDS + 3600}
if _broker_is_fs:
    _broker_dir = VAR_DIR / "broker"
    CELERY_BROKER_TRANSPORT_OPTIONS.update(
        data_folder_in=str(_broker_dir / "queue"),
        data_folder_out=str(_broker_dir / "queue"),
        processed_folder=str(_broker_dir / "processed"),
        control_folder=str(_broker_dir / "control"),
        store_processed=False,
    )
CELERY_BEAT_SCHEDULE = {
    "expire-ethics-approvals": {"task": "governance.tasks.task_expire_ethics_approvals", "schedule": 3600.0},
    "reap-rejected-adapters": {"task": "egress.tasks.task_delete_expired_rejections", "schedule": 6 * 3600.0},
}

# Sandboxes and storage.
SANDBOX_BACKEND = env_choice("RAPHA_SANDBOX", "auto", ("auto", "docker", "bubblewrap"))
SANDBOX_IMAGE = env_str("RAPHA_SANDBOX_IMAGE", "rapha-sandbox:bookworm-py311-1")
SANDBOX_MEMORY_MB = env_int("RAPHA_SANDBOX_MEMORY_MB", 8192, minimum=256)
SANDBOX_PIDS = env_int("RAPHA_SANDBOX_PIDS", 256, minimum=16)
SANDBOX_CPUS = env_int("RAPHA_SANDBOX_CPUS", 2, minimum=1)
WORKER_GPUS = env_list("RAPHA_WORKER_GPUS", [])
DATA_ROOT = Path(env_str("RAPHA_DATA_ROOT", str(VAR_DIR / "data")))
MODELS_ROOT = Path(env_str("RAPHA_MODELS_ROOT", str(VAR_DIR / "models")))
STAGING_ROOT = Path(env_str("RAPHA_STAGING_ROOT", str(VAR_DIR / "staging")))
QUARANTINE_ROOT = Path(env_str("RAPHA_QUARANTINE_ROOT", str(VAR_DIR / "quarantine")))
RELEASES_ROOT = Path(env_str("RAPHA_RELEASES_ROOT", str(VAR_DIR / "releases")))
UPLOADS_ROOT = Path(env_str("RAPHA_UPLOADS_ROOT", str(VAR_DIR / "uploads")))
SIGNING_KEY_PATH = Path(env_str("RAPHA_SIGNING_KEY", str(VAR_DIR / "keys" / "release-signing.pem")))
ETHICS_LETTER_MAX_BYTES = env_int("RAPHA_ETHICS_LETTER_MAX_BYTES", 10 * 1024 * 1024, minimum=1024)
AUDIO_MAX_SECONDS = env_int("RAPHA_AUDIO_MAX_SECONDS", 30, minimum=1)  # longer recordings are refused at import
IMAGING_EXCLUDE_BURNED_IN = env_bool("RAPHA_IMAGING_EXCLUDE_BURNED_IN", True)  # staging declines BurnedInAnnotation YES
CODE_VERSION = env_str("RAPHA_CODE_VERSION", "dev")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("RAPHA_LOG_LEVEL", "INFO")},
}
