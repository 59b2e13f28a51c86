"""The commands: the only place where a run is put together (data, encoder, family plug-in, engine, run folder).

One module per ``ssl-derm`` command; :mod:`ssl_derm.cli` parses arguments and :mod:`ssl_derm.api` takes Python
values, and both call the ``run_*`` functions here. Nothing below this layer imports it.
"""
