"""The commands: each runs a session (or a recording) through runtime.py
and hands what the model holds to its views.  cli.py only parses."""
