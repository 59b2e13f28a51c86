"""Trained models out of the harness: export (``model.safetensors`` + ``model.json``), loading, and
``ssl-derm predict`` on new image folders. See :mod:`ssl_derm.serve.export` for the file layout."""
