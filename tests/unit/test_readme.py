"""The README stays short, and its receiver example works as printed."""

import hashlib
import hmac
import json
import re
import sys
import types

import pytest

from tests.support.paths import README

SECRET = "whsec_dGVzdC1zZWNyZXQtZm9yLXRoZS1yZWFkbWU="


def test_the_readme_is_short() -> None:
    """At most about 200 lines: the rest is in docs/."""
    assert len(README.read_text().splitlines()) <= 200


def _receiver(monkeypatch: pytest.MonkeyPatch) -> object:
    """The app of the README's receiver block, run as a module of its own (Flask finds its root by module)."""
    [code] = re.findall(r"## Receive one.*?```python\n(.*?)```", README.read_text(), re.DOTALL)
    module = types.ModuleType("readme_receiver")
    module.__file__ = str(README)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(code, str(README), "exec"), module.__dict__)
    return module.app


def test_the_receiver_example_verifies_and_deduplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's Flask receiver accepts a correctly signed event once, answers its retry 200, refuses a forgery."""
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    client = _receiver(monkeypatch).test_client()  # type: ignore[attr-defined]
    body = json.dumps({"event": "webhook.test", "data": {"message": "hi"}}).encode()
    signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json", "X-DocExtract-Event-Id": "evt_1"}
    for _ in range(2):  # the retry of a delivered event is answered 2xx too
        assert client.post("/webhooks/docextract", data=body, headers=headers | {
            "X-DocExtract-Signature": signature}).status_code == 200
    forged = client.post("/webhooks/docextract", data=body, headers=headers | {"X-DocExtract-Signature": "0" * 64})
    assert forged.status_code == 401
