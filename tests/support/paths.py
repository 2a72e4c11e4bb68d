"""Where things are in the repository, whichever layer of tests/ a test lives in."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_SQL = ROOT / "schema.sql"
DEPLOY = ROOT / "deploy"
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"
README = ROOT / "README.md"
