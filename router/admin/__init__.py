"""The router's admin API (HTTP and JSON) and its live dashboard (``docs/operations.md``)."""
