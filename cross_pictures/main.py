"""`uvicorn cross_pictures.main:app`: the app built from the environment."""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import ValidationError

from cross_pictures.app import create_app
from cross_pictures.config import describe_validation_error
from cross_pictures.errors import ModelLoadError


def build_app_or_exit() -> FastAPI:
    """The app, or exit with one line naming the bad setting and its fix (no traceback)."""
    try:
        return create_app()
    except ValidationError as exc:
        raise SystemExit(f"cross-pictures: {describe_validation_error(exc)}") from None
    except ModelLoadError as exc:
        raise SystemExit(f"cross-pictures: {exc}") from None


app = build_app_or_exit()
