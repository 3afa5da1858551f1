"""The governance pages, one module per kind of object (see urls.py)."""
