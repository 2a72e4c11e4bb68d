"""The package's metadata: what the bare install and each extra pull in, and one version."""

import tomllib
from importlib.metadata import version

import yaml

from tests.support.paths import DEPLOY, ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_the_bare_install_is_psycopg_and_the_tracing_api() -> None:
    """outbox needs psycopg and the OpenTelemetry API only; SQLAlchemy, the deliverer's libraries and the
    OpenTelemetry SDK are extras."""
    assert [dep.split(">")[0] for dep in PROJECT["dependencies"]] == ["psycopg[binary]", "opentelemetry-api"]
    extras = PROJECT["optional-dependencies"]
    assert [dep.split(">")[0] for dep in extras["otel"]] == ["opentelemetry-sdk",
                                                             "opentelemetry-exporter-otlp-proto-http"]
    assert [dep.split(">")[0] for dep in extras["sqlalchemy"]] == ["sqlalchemy[asyncio]"]
    assert {"aiohttp", "structlog", "prometheus-client", "cryptography"} <= {
        dep.split(">")[0] for dep in extras["deliverer"]}


def test_every_copy_of_the_version_follows_pyproject() -> None:
    """pyproject.toml holds the version; the OpenAPI document's and the deployed image tag, its copies, agree."""
    assert version("docextract-webhooks") == PROJECT["version"]
    from deliverer.api import openapi  # generated at start-up, from the installed package's version
    assert openapi.document()["info"]["version"] == PROJECT["version"]
    for kustomization in ("base", "overlays/production"):
        images = yaml.safe_load((DEPLOY / kustomization / "kustomization.yaml").read_text())["images"]
        assert [image["newTag"] for image in images] == [PROJECT["version"]]
