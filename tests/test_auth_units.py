"""The pure parts of who-is-calling: stream tokens, the one-second cache, client addresses,
password rules, key shapes."""

from __future__ import annotations

import pytest

from relay import apikeys, passwords, secondcache, streamtokens
from relay.signin import address_in, client_address

SECRET = "s" * 64


def test_a_stream_token_says_its_ticket_key_and_age() -> None:
    token = streamtokens.make_token(SECRET, "ticket-1", "key_a")
    said = streamtokens.read_token(SECRET, token, now=2e9)
    assert (said.ticket_id, said.key_id) == ("ticket-1", "key_a")
    assert said.age > 0


@pytest.mark.parametrize("mangle", [
    # The signature's first character (the last one also carries padding bits, which decode
    # to the same bytes when only they change).
    lambda t: t[: t.rindex(".") + 1] + ("A" if t[t.rindex(".") + 1] != "A" else "B")
    + t[t.rindex(".") + 2:],
    lambda t: t[:-5],  # truncated
    lambda t: "x" + t,  # payload changed
    lambda t: "",
    lambda t: "not.a.token",
])
def test_a_changed_stream_token_is_refused(mangle) -> None:  # type: ignore[no-untyped-def]
    token = streamtokens.make_token(SECRET, "ticket-1", "key_a")
    with pytest.raises(streamtokens.InvalidStreamToken):
        streamtokens.read_token(SECRET, mangle(token), now=2e9)


def test_a_stream_token_of_another_secret_is_refused() -> None:
    token = streamtokens.make_token("other" * 13, "ticket-1", "key_a")
    with pytest.raises(streamtokens.InvalidStreamToken):
        streamtokens.read_token(SECRET, token, now=2e9)


def test_a_signed_payload_of_another_shape_is_refused() -> None:
    token = streamtokens._serializer(SECRET).dumps({"ticket": "t"})
    with pytest.raises(streamtokens.InvalidStreamToken):
        streamtokens.read_token(SECRET, token, now=2e9)


def test_the_second_cache_forgets_at_the_turn_of_the_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.1]
    monkeypatch.setattr(secondcache.time, "monotonic", lambda: now[0])
    cache = secondcache.SecondCache()
    lookups: list[int] = []

    def look_up() -> int:
        lookups.append(1)
        return len(lookups)

    assert cache.get("k", look_up) == 1
    now[0] = 100.99
    assert cache.get("k", look_up) == 1  # remembered within the second
    now[0] = 101.0
    assert cache.get("k", look_up) == 2  # looked up again in the next one
    assert cache.get("other", lambda: None) is None
    assert cache.get("other", look_up) is None  # None is remembered too (a refused key)


@pytest.mark.parametrize(("remote", "forwarded", "trusted", "expected"), [
    ("203.0.113.9", None, (), "203.0.113.9"),
    ("203.0.113.9", "198.51.100.1", (), "203.0.113.9"),  # not a trusted proxy: header ignored
    ("127.0.0.1", "198.51.100.1", ("127.0.0.1",), "198.51.100.1"),
    ("10.0.0.2", "198.51.100.1, 10.0.0.7", ("10.0.0.0/8",), "198.51.100.1"),
    ("10.0.0.2", "spoofed, 198.51.100.1", ("10.0.0.0/8",), "198.51.100.1"),
    ("10.0.0.2", "10.0.0.3", ("10.0.0.0/8",), "10.0.0.2"),
])
def test_the_client_address_believes_only_trusted_proxies(
    remote: str, forwarded: str | None, trusted: tuple[str, ...], expected: str
) -> None:
    environ = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        environ["HTTP_X_FORWARDED_FOR"] = forwarded
    assert client_address(environ, trusted) == expected


def test_addresses_match_networks() -> None:
    assert address_in("::1", ("::1",))
    assert address_in("10.1.2.3", ("127.0.0.1", "10.0.0.0/8"))
    assert not address_in("11.1.2.3", ("10.0.0.0/8",))
    assert not address_in("not an address", ("0.0.0.0/0",))


@pytest.mark.parametrize(("password", "problem"), [
    ("", "required"), (None, "required"), ("short", "at least 8"),
    ("x" * 1025, "at most 1024"), ("nul\x00inside", "NUL"),
])
def test_password_rules(password: object, problem: str) -> None:
    assert problem in (passwords.password_problem(password) or "")


def test_a_good_password_has_no_problem() -> None:
    assert passwords.password_problem("correct horse battery") is None


def test_passwords_verify_and_nothing_else_does() -> None:
    stored = passwords.hash_password("correct horse")
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")  # OWASP's minimum, not less
    assert passwords.verify_password(stored, "correct horse")
    assert not passwords.verify_password(stored, "correct horsf")
    assert not passwords.verify_password(None, "correct horse")  # no user: a dummy hash
    assert not passwords.verify_password("not a hash", "correct horse")


@pytest.mark.parametrize("secret", [
    "", "rk_", "rk_short", "xx_" + "a" * 43, "rk_" + "a" * 42, "rk_" + "a" * 44,
])
def test_a_key_of_the_wrong_shape_is_refused_without_a_lookup(secret: str) -> None:
    assert apikeys.key_by_secret(SECRET, secret) is None  # no app, no store: never looked up


def test_key_hashes_are_keyed_by_the_secret() -> None:
    key = "rk_" + "a" * 43
    assert apikeys._digest(SECRET, key) != apikeys._digest("t" * 64, key)
    assert len(apikeys._digest(SECRET, key)) == 64
