"""What error reports may show: Django's filter, also hiding connection URLs.

Django's ``SafeExceptionReporterFilter`` hides settings and request META whose names contain
API, KEY, PASS, SECRET, TOKEN...; ``DATABASE_URL``, ``REDIS_URL``, the Celery broker/result
URLs and the cache ``LOCATION`` carry passwords too but match none of those words. The
broader pattern also catches any ``*_URL``/``*_URLS``/``*_URI`` (e.g. the MLflow tracking URI,
judge URLs): a hidden ``STATIC_URL`` costs nothing, a shown password does.
"""

from __future__ import annotations

import re

from django.views.debug import SafeExceptionReporterFilter as DjangoSafeExceptionReporterFilter


class SafeExceptionReporterFilter(DjangoSafeExceptionReporterFilter):
    """Django's filter with connection URLs added to the hidden settings (set as the default)."""

    hidden_settings = re.compile(
        DjangoSafeExceptionReporterFilter.hidden_settings.pattern
        + r"|(?:^|_)(?:URL|URLS|URI)$|BROKER|RESULT_BACKEND|^LOCATION$",
        flags=re.IGNORECASE,
    )
