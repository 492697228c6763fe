"""The Decoding Workbench app (Gradio): `ui.app.build_app` / `ui.app.launch`, views in `ui.presenters`."""
