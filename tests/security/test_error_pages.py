"""Errors outside the views (no route matches, an uncaught exception) keep the API's error shape."""

from __future__ import annotations

import pytest
from django.test import Client


def test_an_unknown_api_route_is_a_404_in_the_error_shape(api_client):
    response = api_client.get("/v1/no-such-thing/../x")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "not_found"


def test_an_unknown_page_outside_the_api_keeps_the_html_404(client):
    response = client.get("/no-such-page")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


@pytest.mark.urls("tests.security.urls_boom")
def test_an_uncaught_exception_is_a_500_in_the_error_shape_without_details(db):
    client = Client(raise_request_exception=False)
    response = client.get("/v1/boom")
    assert response.status_code == 500
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "internal_error")
    assert b"secret" not in response.content and b"RuntimeError" not in response.content
    page = client.get("/boom")
    assert page.status_code == 500 and page["Content-Type"].startswith("text/html")
