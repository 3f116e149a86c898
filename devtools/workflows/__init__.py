"""Shipped workflows: the UI-format builder, their descriptions (specs/), the generator and the
UI -> API converter the demo and the tests use."""
