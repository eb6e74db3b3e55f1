"""The HTTP API of the Letraz backend (``/api/v1/``)."""
