"""Production settings: the embedded defaults plus the hardening ``check --deploy`` asks for.

Required env: ``SECRET_KEY`` (≥ 50 chars), ``ALLOWED_HOSTS``, ``DATABASE_URL``.
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

from tuninglab.env import env_bool, env_int, env_str
from tuninglab.settings import *  # noqa: F403

DEBUG = False
SECRET_KEY = env_str("SECRET_KEY", "")
if len(SECRET_KEY) < 50:
    raise ImproperlyConfigured("SECRET_KEY must be set to a random string of at least 50 characters")

SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
