"""An example plasticity plugin: `plugin.py` registers what it brings."""
