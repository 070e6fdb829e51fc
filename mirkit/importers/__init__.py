"""Converters from other checkpoint formats into mirkit model folders (``mirkit import ...``)."""
