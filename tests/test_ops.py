"""Health, metrics, models and the chat page's routes, in-process."""

from __future__ import annotations

from flask.testing import FlaskClient

from .helpers import assert_error_shape


def test_healthz(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}


def test_metrics_count_created_tickets(client: FlaskClient) -> None:
    def created() -> float:
        text = client.get("/metrics").get_data(as_text=True)
        line = next(x for x in text.splitlines() if x.startswith("relay_tickets_created_total"))
        return float(line.split()[-1])

    before = created()
    client.post("/new", json={"prompt": "x"})
    assert created() == before + 1


def test_models_lists_the_mock_default_first(client: FlaskClient) -> None:
    body = client.get("/v1/models").get_json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["mock-chat", "mock-echo"]


def test_static_files_cannot_escape_the_frontend_folder(client: FlaskClient) -> None:
    assert_error_shape(client.get("/static/../__init__.py"), 404)
    assert_error_shape(client.get("/static/%2e%2e/views/web.py"), 404)


def test_page_headers(client: FlaskClient) -> None:
    with client.get("/") as page:
        assert page.status_code == 200 and b"<html" in page.data
        assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
        assert page.headers["X-Content-Type-Options"] == "nosniff"
    with client.get("/static/js/app.js") as script:
        assert script.status_code == 200 and script.headers["Cache-Control"] == "no-cache"
        assert script.mimetype in ("text/javascript", "application/javascript")
