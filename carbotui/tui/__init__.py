"""The operations dashboard (Textual). Entry point: carbotui.tui.app.run()."""
