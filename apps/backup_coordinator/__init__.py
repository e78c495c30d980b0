"""backup-coordinator: scheduled BorgBackup across many hosts, steered from Home Assistant.

Everything here except ``app.py`` is plain Python with no AppDaemon import, so the core can be
used and tested on its own (see ``__main__.py`` for the CLI).
"""

__version__ = "0.2.0"
