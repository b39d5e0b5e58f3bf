"""Foundations every other package may use: domain errors, the hand-written SQL helpers, the Markdown sanitiser, SVG plots.

Nothing here knows about campaigns' rules; it depends only on Django and `annotate.models`.
"""
