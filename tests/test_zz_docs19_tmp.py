"""Ad-hoc (not committed): responses of the accounts-mode endpoints match relay/openapi.json."""
from __future__ import annotations

import json
from importlib.resources import files

from flask import Flask
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from relay import create_app

DOC = json.loads(files("relay").joinpath("openapi.json").read_text())
REG = Registry().with_resource("urn:doc", Resource.from_contents(DOC, default_specification=__import__("referencing.jsonschema").jsonschema.DRAFT202012))


def check(path: str, method: str, response) -> None:
    op = DOC["paths"][path][method]
    status = str(response.status_code)
    assert status in op["responses"], (path, method, status, response.get_data(as_text=True))
    spec = op["responses"][status]
    if "$ref" in spec:
        spec = DOC["components"]["responses"][spec["$ref"].rsplit("/", 1)[1]]
    if "content" not in spec:
        assert not response.get_data(), (path, method, status)
        return
    schema = spec["content"]["application/json"]["schema"]
    ref = "urn:doc" + schema["$ref"]
    Draft202012Validator({"$ref": ref}, registry=REG).validate(response.get_json())
    print(method.upper(), path, status, json.dumps(response.get_json())[:150])


def test_accounts_flow(tmp_path, monkeypatch, migrated_store) -> None:
    import shutil
    shutil.copyfile(migrated_store, tmp_path / "relay.db")
    monkeypatch.chdir(tmp_path)
    app: Flask = create_app({"MOCK_DELAY_MS": 0.0, "INSTANCE_PATH": str(tmp_path), "AUTH": "accounts"})
    c = app.test_client()
    check("/auth/me", "get", c.get("/auth/me"))
    check("/new", "post", c.post("/new", json={"prompt": "hi"}))
    check("/metrics", "get", c.get("/metrics"))
    check("/v1/models", "get", c.get("/v1/models"))
    check("/auth/keys", "get", c.get("/auth/keys"))
    check("/auth/login", "post", c.post("/auth/login", json={"username": "x", "password": "y"}))
    check("/auth/setup", "post", c.post("/auth/setup", json={"username": "x", "password": "short"}))
    check("/auth/setup", "post", c.post("/auth/setup", data={"username": "root", "password": "correct horse"}))
    check("/auth/setup", "post", c.post("/auth/setup", json={"username": "root2", "password": "correct horse"}))
    check("/auth/me", "get", c.get("/auth/me"))
    check("/auth/setup", "post", c.post("/auth/setup", json={"username": "x", "password": "correct horse"}, headers={"Sec-Fetch-Site": "cross-site"}))
    check("/new", "post", c.post("/new", json={"prompt": "hi"}, headers={"Origin": "https://evil.example"}))
    r = c.post("/auth/keys", json={"name": "k", "expires_days": 1.5, "models": ["mock-echo"]})
    check("/auth/keys", "post", r)
    key = r.get_json()["key"]; kid = r.get_json()["id"]
    check("/auth/keys", "post", c.post("/auth/keys", json={"models": []}))
    check("/auth/keys", "post", c.post("/auth/keys", json={}))
    check("/auth/keys", "get", c.get("/auth/keys"))
    b = app.test_client()
    bearer = {"Authorization": f"Bearer {key}"}
    r = b.post("/new", json={"prompt": "hi", "model": "mock-echo"}, headers=bearer)
    check("/new", "post", r)
    url = r.get_json()["stream_url"]
    check("/new", "post", b.post("/new", json={"prompt": "hi", "model": "mock-chat"}, headers=bearer))
    check("/v1/chat/completions", "post", b.post("/v1/chat/completions", json={"model": "mock-chat", "messages": [{"role": "user", "content": "x"}]}, headers=bearer))
    check("/v1/models", "get", b.get("/v1/models", headers=bearer))
    check("/auth/keys", "get", b.get("/auth/keys", headers=bearer))
    check("/auth/me", "get", b.get("/auth/me", headers=bearer))
    check("/auth/me", "get", b.get("/auth/me", headers={"Authorization": "Bearer nope"}))
    check("/v1/models", "get", b.get("/v1/models", headers={"Authorization": "Bearer nope"}))
    tid = r.get_json()["id"]
    check("/sse/{ticket_id}", "get", b.get(f"/sse/{tid}?access_token=bad"))
    check("/sse/{ticket_id}", "head", b.head(f"/sse/{tid}?access_token=bad"))
    check("/sse/{ticket_id}", "get", b.get(f"/sse/{tid}"))
    s = b.get(url)
    assert s.status_code == 200 and s.headers["Referrer-Policy"] == "no-referrer", s
    s.close()
    check("/admin/users", "get", c.get("/admin/users"))
    check("/admin/users", "post", c.post("/admin/users", json={"username": "bob", "password": "bob password"}))
    check("/admin/users", "post", c.post("/admin/users", json={"username": "bob", "password": "bob password"}))
    check("/admin/users/{name}", "patch", c.patch("/admin/users/bob", json={"disabled": True}))
    check("/admin/users/{name}", "patch", c.patch("/admin/users/root", json={"disabled": True}))
    check("/admin/users/{name}", "patch", c.patch("/admin/users/nobody", json={"disabled": False}))
    check("/admin/users/{name}", "patch", c.patch("/admin/users/bob", json={}))
    check("/admin/users/{name}", "patch", c.patch("/admin/users/bob", json={"disabled": False, "password": "another one"}))
    d = app.test_client()
    check("/auth/login", "post", d.post("/auth/login", data={"username": "bob", "password": "another one"}))
    check("/admin/users", "get", d.get("/admin/users"))
    check("/auth/password", "post", d.post("/auth/password", json={"current_password": "wrong", "new_password": "x" * 9}))
    check("/auth/password", "post", d.post("/auth/password", json={"current_password": "another one", "new_password": "x"}))
    check("/auth/password", "post", d.post("/auth/password", json={"current_password": "another one", "new_password": "x" * 9}))
    check("/auth/me", "get", d.get("/auth/me"))
    for _ in range(6):
        r = d.post("/auth/login", json={"username": "bob", "password": "nope nope"})
    check("/auth/login", "post", r)
    assert r.headers["Retry-After"]
    check("/auth/keys/{key_id}", "delete", c.delete("/auth/keys/nope"))
    check("/auth/keys/{key_id}", "delete", c.delete(f"/auth/keys/{kid}"))
    check("/new", "post", b.post("/new", json={"prompt": "hi", "model": "mock-echo"}, headers=bearer))
    check("/auth/logout", "post", c.post("/auth/logout"))
    check("/auth/me", "get", c.get("/auth/me"))
    check("/auth/logout", "post", c.post("/auth/logout"))
