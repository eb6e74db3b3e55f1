"""Django settings for the Letraz backend.

Every value comes from the environment through ``letraz.env`` (this is the only module
that reads it); ``.env.example`` documents each variable. Nothing here probes a
dependency: the health checks do that, live.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import dj_database_url

from letraz.env import env
from letraz.sentry import init_sentry

BASE_DIR = Path(__file__).resolve().parent.parent

# --- Core -----------------------------------------------------------------------------
DEBUG = env.boolean("DJANGO_DEBUG", False)
# A production secret has no default: gunicorn refuses to start without one (the
# deploy check letraz.E001), while tools that never sign anything, such as
# `manage.py spectacular` on a fresh clone, still run.
SECRET_KEY = env.string("DJANGO_SECRET_KEY") or ("insecure-development-key" if DEBUG else "")
ALLOWED_HOSTS = list(env.items("DJANGO_ALLOWED_HOSTS", ("localhost", "127.0.0.1", "[::1]")))

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "health",
    "core",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "letraz.urls"
WSGI_APPLICATION = "letraz.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]

# --- Database ---------------------------------------------------------------------------
DATABASES = {
    "default": dj_database_url.parse(
        env.string("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
        conn_max_age=0,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Without it a connect to a silent host blocks for about two minutes.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", 3)
    # No JIT: it compiles the timeline's aggregate queries for 10-20 ms each, longer than
    # they take to run (measured by `make bench BENCH_ARGS=--fleet`; issue 11).
    DATABASES["default"]["OPTIONS"].setdefault("options", "-c jit=off")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Static files (Swagger UI and Redoc assets come from drf-spectacular-sidecar) -------
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# Served straight from the apps' static folders; STATIC_ROOT exists only after
# collectstatic (the image runs it), so WhiteNoise's warning about it is noise.
WHITENOISE_USE_FINDERS = True
warnings.filterwarnings("ignore", message="No directory at: ", category=UserWarning)

USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"

# --- HTTP hardening -------------------------------------------------------------------
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- REST framework and the schema -------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Letraz Backend Server",
    "DESCRIPTION": (
        "This is the backend service repository of Letraz. Create tailored resumes for every job "
        "application effortlessly with Letraz. Our AI-powered tool helps you stand out by automatically "
        "optimizing your resume for ATS and recruiters, ensuring your skills and experience match the "
        "job's requirements."
    ),
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": r"/api/v[0-9]",
    "SCHEMA_PATH_PREFIX_TRIM": True,
    "SERVERS": [
        {"url": "https://api.letraz.app/api/v1", "description": "Production Server"},
        {"url": "http://localhost:8000/api/v1", "description": "Local Development Server"},
    ],
    "TAGS": [
        {"name": "Core APIs", "description": "Core APIs for Letraz Backend"},
        {
            "name": "Waitlist",
            "description": "Mange waitlist, signups, retrieve waitlist and everything related to waitlist",
        },
        {"name": "User", "description": "Get or update user details of currently logged in user"},
        {
            "name": "Job object",
            "description": "Manage job objects, retrieve job objects and everything related to job objects",
        },
        {
            "name": "Resume object",
            "description": "Manage resume objects, retrieve resume objects and everything related to resume objects",
        },
        {
            "name": "Education object",
            "description": (
                "Manage education objects, retrieve education objects and everything related to education objects"
            ),
        },
        {
            "name": "Experience object",
            "description": (
                "Manage experience objects, retrieve experience objects and everything related to experience objects"
            ),
        },
    ],
    # The contract has its enums inline, as drf-spectacular writes them with no hooks.
    "POSTPROCESSING_HOOKS": [],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Health ---------------------------------------------------------------------------------
HEALTH_CHECK_TIMEOUT = env.number("HEALTH_CHECK_TIMEOUT", 0.5)
HEALTH_DB_SLOW_MS = env.number("HEALTH_DB_SLOW_MS", 250)
HEALTH_CRITICAL_COMPONENTS = env.items("HEALTH_CRITICAL_COMPONENTS", ("clerk", "db", "util_service"))
HEALTH_CACHE_TTL = env.number("HEALTH_CACHE_TTL", 5.0)
HEALTH_MAX_STALENESS = env.number("HEALTH_MAX_STALENESS", 30.0)
HEALTH_DRAIN_FILE = env.string("HEALTH_DRAIN_FILE")
INSTANCE_ID = env.string("INSTANCE_ID")
# The timeline, the fleet and the status page (issue 11).
HEALTH_HISTORY_DAYS = env.number("HEALTH_HISTORY_DAYS", 30)
HEALTH_HEARTBEAT_INTERVAL = env.number("HEALTH_HEARTBEAT_INTERVAL", 5.0)
HEALTH_FLEET_GONE_AFTER = env.number("HEALTH_FLEET_GONE_AFTER", 30.0)
HEALTH_STREAM_MAX = env.integer("HEALTH_STREAM_MAX", 25)
HEALTH_STATUS_PAGE = env.string("HEALTH_STATUS_PAGE", "public")
HEALTH_DIAGNOSTICS_TOKEN = env.string("HEALTH_DIAGNOSTICS_TOKEN")

CLERK_SECRET_KEY = env.string("CLERK_SECRET_KEY")
CLERK_API_URL = env.string("CLERK_API_URL", "https://api.clerk.com/v1")
UTIL_GRPC_HOST = env.string("UTIL_GRPC_HOST")
UTIL_GRPC_TLS = env.boolean("UTIL_GRPC_TLS", True)
UTIL_GRPC_HEALTH_PROTOCOL = env.string("UTIL_GRPC_HEALTH_PROTOCOL", "letraz")

PORT = env.integer("PORT", 8000)
GRPC_PORT = env.integer("GRPC_PORT", 50051)

# --- Sentry (on only when SENTRY_DSN is set; a bad DSN is reported, never fatal) --------
SENTRY_DSN = env.string("SENTRY_DSN")
SENTRY_ENVIRONMENT = env.string("SENTRY_ENVIRONMENT")
SENTRY_TRACES_SAMPLE_RATE = env.number("SENTRY_TRACES_SAMPLE_RATE", 0.0)
init_sentry(SENTRY_DSN, environment=SENTRY_ENVIRONMENT, traces_sample_rate=SENTRY_TRACES_SAMPLE_RATE)

# --- Logging: one line per change of a component's state -----------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {"health": {"level": "INFO", "propagate": True}},
}
