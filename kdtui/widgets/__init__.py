"""Widgets of the app: run table cells, terminal plots, log tail, GPU panel."""
