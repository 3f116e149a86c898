"""Descriptions of the shipped workflows, one module per area; scripts/make_workflows.py writes them."""
