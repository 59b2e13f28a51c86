"""Commands: each puts a run together from the families below it (``ssl-derm <command>``)."""
