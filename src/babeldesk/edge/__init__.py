"""The HTTP edge shared by every app (worker, gateway): who may call what (``auth``).
``babeldesk.web`` holds the rest of it (errors -> JSON, bounded bodies, disconnects,
server lifecycle) until it moves here."""
