"""Root conftest: makes the checkout importable in tests without installing it."""
