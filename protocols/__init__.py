"""Wayland protocol descriptions (XML) shipped with wlproxy; see SOURCES.md."""
