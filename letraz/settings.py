"""Django settings for the Letraz backend.

Every value comes from the environment through ``letraz.env`` (this is the only module
that reads it); ``.env.example`` documents each variable. Nothing here probes a
dependency: the health checks do that, live.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import dj_database_url

from health.conf import DEFAULT_STREAM_MAX
from health.status import Component
from letraz.env import env, masked
from letraz.logging import logging_config, parse_log_format
from letraz.proxies import trusted_proxies
from letraz.sentry import init_sentry
from letraz.version import SERVICE_VERSION

BASE_DIR = Path(__file__).resolve().parent.parent

# --- Core -----------------------------------------------------------------------------
DEBUG = env.boolean("DJANGO_DEBUG", False)
# A production secret has no default: gunicorn refuses to start without one (the
# deploy check letraz.E001), while tools that never sign anything, such as
# `manage.py spectacular` on a fresh clone, still run.
SECRET_KEY = env.string("DJANGO_SECRET_KEY") or ("insecure-development-key" if DEBUG else "")
# Probes answer whatever the Host (letraz.middleware); nothing else is loosened.
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
    # /metrics before anything checks the Host (Prometheus sends the pod's IP).
    "letraz.metrics.MetricsEndpointMiddleware",
    # Next, so a probe's latency counts everything the server does for it.
    "letraz.metrics.ProbeMetricsMiddleware",
    "letraz.middleware.ServiceVersionHeader",
    "letraz.middleware.HeadWithoutBody",
    # First: hostile requests end here (400, one WARNING line), and errors under /api/ are JSON.
    "letraz.middleware.EdgeMiddleware",
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
_SQLITE_URL = f"sqlite:///{BASE_DIR / 'db.sqlite3'}"
try:
    _database = dj_database_url.parse(env.string("DATABASE_URL", _SQLITE_URL), conn_max_age=0)
except ValueError:  # an unknown scheme or an unparsable URL: letraz.E004 reports it
    env.report(
        "DATABASE_URL",
        masked(env.string("DATABASE_URL")),
        "a database URL such as postgres://USER:PASSWORD@HOST:5432/NAME or sqlite:///PATH",
    )
    _database = dj_database_url.parse(_SQLITE_URL, conn_max_age=0)
DATABASES = {"default": _database}
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
# Files served at the root: /favicon.ico, which every browser asks for (a 404 and a log
# warning on every docs visit otherwise).
WHITENOISE_ROOT = BASE_DIR / "letraz" / "public"
warnings.filterwarnings("ignore", message="No directory at: ", category=UserWarning)

USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"

# --- HTTP hardening -------------------------------------------------------------------
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Peers allowed to send X-Forwarded-* (gunicorn.conf.py reads the same list): nobody by
# default. From anyone else such a header is a 400 (letraz.middleware), so this header
# only ever comes from a trusted proxy.
FORWARDED_ALLOW_IPS = trusted_proxies()
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
    # The contract's info.version: the version of the API document, fixed by the contract.
    # The service's own version (SERVICE_VERSION, from pyproject.toml) may move without it.
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
    # Swagger UI's default badge asks validator.swagger.io about the schema: the docs
    # must load nothing from outside this server (tests/browser/).
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    "REDOC_DIST": "SIDECAR",
}

# --- Health ---------------------------------------------------------------------------------
HEALTH_CHECK_TIMEOUT = env.number("HEALTH_CHECK_TIMEOUT", 0.5, unit="a number of seconds")
HEALTH_DB_SLOW_MS = env.number("HEALTH_DB_SLOW_MS", 250, unit="a number of milliseconds")
HEALTH_CRITICAL_COMPONENTS = env.items("HEALTH_CRITICAL_COMPONENTS", ("clerk", "db", "util_service"))
HEALTH_CACHE_TTL = env.number("HEALTH_CACHE_TTL", 5.0, unit="a number of seconds")
# HEALTH_CACHE_TTL_<COMPONENT> (e.g. HEALTH_CACHE_TTL_CLERK): that dependency's budget;
# only the ones set are kept, the rest follow HEALTH_CACHE_TTL.
HEALTH_CACHE_TTL_OVERRIDES = {
    c.value: env.number(f"HEALTH_CACHE_TTL_{c.value.upper()}", HEALTH_CACHE_TTL, unit="a number of seconds")
    for c in Component
    if env.raw(f"HEALTH_CACHE_TTL_{c.value.upper()}") is not None
}
# Components whose failure takes this instance out of rotation. None by default: Clerk,
# the database and the util service are shared by every pod, so failing readiness on them
# would empty the Service at once (see README, "Readiness").
HEALTH_READINESS_COMPONENTS = env.items("HEALTH_READINESS_COMPONENTS", ())
HEALTH_MAX_STALENESS = env.number("HEALTH_MAX_STALENESS", 30.0, unit="a number of seconds")
HEALTH_DRAIN_FILE = env.string("HEALTH_DRAIN_FILE")
# At most one Sentry event per component per this many seconds while it flaps.
HEALTH_EVENT_INTERVAL = env.number("HEALTH_EVENT_INTERVAL", 600.0)
INSTANCE_ID = env.string("INSTANCE_ID")
# The timeline, the fleet and the status page (issue 11).
HEALTH_HISTORY_DAYS = env.number("HEALTH_HISTORY_DAYS", 30)
HEALTH_HEARTBEAT_INTERVAL = env.number("HEALTH_HEARTBEAT_INTERVAL", 5.0)
HEALTH_FLEET_GONE_AFTER = env.number("HEALTH_FLEET_GONE_AFTER", 30.0)
HEALTH_STREAM_MAX = env.integer("HEALTH_STREAM_MAX", DEFAULT_STREAM_MAX)
HEALTH_STATUS_PAGE = env.string("HEALTH_STATUS_PAGE", "public")
HEALTH_DIAGNOSTICS_TOKEN = env.string("HEALTH_DIAGNOSTICS_TOKEN")

CLERK_SECRET_KEY = env.string("CLERK_SECRET_KEY")
CLERK_API_URL = env.string("CLERK_API_URL", "https://api.clerk.com/v1")
UTIL_GRPC_HOST = env.string("UTIL_GRPC_HOST")
UTIL_GRPC_TLS = env.boolean("UTIL_GRPC_TLS", True)
UTIL_GRPC_HEALTH_PROTOCOL = env.string("UTIL_GRPC_HEALTH_PROTOCOL", "letraz")

PORT = env.integer("PORT", 8000, unit="a port number")
GRPC_PORT = env.integer("GRPC_PORT", 50051, unit="a port number")

# --- Sentry (on only when SENTRY_DSN is set; a bad DSN is reported, never fatal) --------
SENTRY_DSN = env.string("SENTRY_DSN")
SENTRY_ENVIRONMENT = env.string("SENTRY_ENVIRONMENT")
SENTRY_TRACES_SAMPLE_RATE = env.number("SENTRY_TRACES_SAMPLE_RATE", 0.0, unit="a number from 0 to 1")
init_sentry(
    SENTRY_DSN, environment=SENTRY_ENVIRONMENT, traces_sample_rate=SENTRY_TRACES_SAMPLE_RATE, release=SERVICE_VERSION
)

# --- Metrics and diagnostics (see letraz/metrics.py, core/diagnostics.py) -------------
# The service feeds these listeners every result; the metrics listener keeps /metrics.
HEALTH_LISTENERS = ["letraz.metrics.MetricsListener"]
# Set by gunicorn.conf.py (a fresh directory of its own) unless given: where the workers'
# metrics files live. Leave it unset for every other process.
PROMETHEUS_MULTIPROC_DIR = env.string("PROMETHEUS_MULTIPROC_DIR")
# Unset: /metrics is open (as exporters usually are). Set: only "Authorization: Bearer <it>".
METRICS_TOKEN = env.string("METRICS_TOKEN")
# The gRPC process's /metrics listens here (127.0.0.1 keeps it inside the pod).
METRICS_HOST = env.string("METRICS_HOST", "0.0.0.0")  # noqa: S104
METRICS_PORT = env.integer("METRICS_PORT", 9464)
# Unset: /api/v1/health/diagnostics/ is a 404. Set: only "Authorization: Bearer <it>".
HEALTH_DIAGNOSTICS_TOKEN = env.string("HEALTH_DIAGNOSTICS_TOKEN")

# --- Logging: one line per change of a component's state; LOG_FORMAT=json for pipelines ----
LOG_FORMAT = parse_log_format(env)
LOGGING = logging_config(LOG_FORMAT)

# --- Malformed variables (each fell back to its default above): letraz.E004 reports them --
ENVIRONMENT_PROBLEMS = env.problems
