"""The embedded mini benchmark: `python -m adamerging.mini.build` (see DESIGN.md)."""
