"""Helpers that start the real stack on this machine (borg, sshd, Home Assistant, AppDaemon).

Used by the integration and end-to-end tests and by ``scripts/demo``; never part of the app.
"""
