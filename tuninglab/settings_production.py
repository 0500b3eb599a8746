"""Production settings: the embedded defaults plus the hardening ``check --deploy`` asks for.

Required env: ``SECRET_KEY`` (≥ 50 random chars), ``ALLOWED_HOSTS``, ``DATABASE_URL``.
Optional: ``REDIS_URL`` (Celery + throttle counters shared across processes),
``CSRF_TRUSTED_ORIGINS``, ``SECURE_SSL_REDIRECT``, ``SECURE_HSTS_SECONDS``,
``TRUST_X_FORWARDED_PROTO``. See docs/operations.md for the full table.

Missing required values fail at start-up with ImproperlyConfigured rather than falling
back to a development default (a dev secret or ``localhost`` host list in production is a
silent security hole).
"""

from __future__ import annotations

import os

from django.core.exceptions import ImproperlyConfigured

from tuninglab.env import env_bool, env_int, env_list, env_str
from tuninglab.settings import *  # noqa: F403
from tuninglab.settings import DATABASE_URL

DEBUG = False
SECRET_KEY = env_str("SECRET_KEY", "")
if len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5 or SECRET_KEY.startswith("dev-insecure"):
    raise ImproperlyConfigured("SECRET_KEY must be set to a random string of at least 50 characters")

if not os.environ.get("ALLOWED_HOSTS", "").strip():
    raise ImproperlyConfigured("ALLOWED_HOSTS must list the host names this server answers to (comma-separated)")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS")

if not DATABASE_URL:
    # SQLite serialises every writer; with several API and worker processes it is the
    # first thing to fall over. Production runs on PostgreSQL.
    raise ImproperlyConfigured("DATABASE_URL must point at PostgreSQL, e.g. postgres://user:pass@host:5432/tuninglab")

# The admin posts forms over HTTPS; by default trust the https:// origin of each allowed host.
CSRF_TRUSTED_ORIGINS = env_list(
    "CSRF_TRUSTED_ORIGINS", [f"https://{h.lstrip('.')}" for h in ALLOWED_HOSTS if h != "*" and not h.startswith(".")]
)

SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
# Load balancers probe /healthz over plain HTTP; a redirect would read as "down".
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
# Only correct behind a proxy that sets (and strips client-sent) X-Forwarded-Proto.
if env_bool("TRUST_X_FORWARDED_PROTO", True):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_SECURE = True
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_SECURE = True
X_FRAME_OPTIONS = "DENY"
