"""The lifecycle dashboard: one web page under ``/ui`` with the views Now, Data, Models,
Drift and Events (:mod:`.routes`), read through the same state, layout and registry
interfaces as the CLI (:mod:`.views`), charts drawn on the server (:mod:`.charts`), the
serving metrics as the Now view shows them (:mod:`.live`), served by the serving app and by
``driftloop ui`` (:mod:`.app`).
"""

from __future__ import annotations

from driftloop.ui.app import create_ui_app, with_ui
from driftloop.ui.routes import PREFIX, ui_router

__all__ = ["PREFIX", "create_ui_app", "ui_router", "with_ui"]
