"""Delta rules, one operator per module. Each module's docstring states its rule."""
