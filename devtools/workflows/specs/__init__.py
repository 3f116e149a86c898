"""Descriptions of the shipped workflows, one module per area; devtools.workflows.generate writes them."""
