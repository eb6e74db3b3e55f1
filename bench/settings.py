"""Bench-only settings: production settings plus django-health-check 4.x for comparison.

Never used outside ``python -m bench``. django-health-check 4 has no plugin registry:
its app only ships the template and the ``health_check`` command, and the checks are
an explicit list handed to its view (see ``bench/urls.py``).
"""

from __future__ import annotations

from letraz.settings import *  # noqa: F403
from letraz.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "health_check"]
ROOT_URLCONF = "bench.urls"
