"""PostgreSQL calls are bounded (connect + statement timeouts), except while `migrate` runs."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.models.signals import post_migrate, pre_migrate

from tuninglab import apps

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def _statement_timeout() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        return cursor.fetchone()[0]


def test_it_bounds_statements_with_the_configured_timeout():
    options = connection.settings_dict["OPTIONS"]
    assert options["connect_timeout"] == 5
    assert options["options"] == "-c statement_timeout=30000"
    assert _statement_timeout() == "30s"
    with pytest.raises(Exception, match="statement timeout"), connection.cursor() as cursor:
        cursor.execute("SET LOCAL statement_timeout = 100")
        cursor.execute("SELECT pg_sleep(2)")


def test_it_lifts_the_timeout_while_migrating_and_restores_it_after():
    assert apps._no_statement_timeout_while_migrating in pre_migrate._live_receivers(None)[0]
    assert apps._statement_timeout_back_after_migrating in post_migrate._live_receivers(None)[0]
    apps._no_statement_timeout_while_migrating(using="default")
    assert _statement_timeout() == "0"
    apps._statement_timeout_back_after_migrating(using="default")
    assert _statement_timeout() == "30s"
