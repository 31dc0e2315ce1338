"""The documentation builds in strict mode: a broken link or anchor fails."""
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.docs
def test_docs_build_strict(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "transforms" / "index.html").exists()


def test_every_page_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert [p for p in pages if p not in nav] == []


def test_the_values_table_is_generated_from_the_matrix():
    """docs/dialects.md's conversions are the ones the fidelity suite accepts."""
    from django_pdr.dialects import matrix

    text = (ROOT / "docs" / "dialects.md").read_text()
    assert matrix.BEGIN in text and matrix.END in text
    assert matrix.render_docs(text) == text, "run: python -m django_pdr.dialects.matrix"
