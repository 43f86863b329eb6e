"""The optional packages the server's tests need, each a clean skip naming it where it is missing."""
import pytest


def need() -> tuple:
    """(openai, httpx), once starlette, uvicorn, tokenizers and jinja2 import too."""
    for name in ("starlette", "uvicorn", "tokenizers", "jinja2"):
        pytest.importorskip(name)
    return pytest.importorskip("openai"), pytest.importorskip("httpx")
