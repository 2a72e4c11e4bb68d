"""The ``deliverer`` command: its parser, one function per command, and output formatting.

The top layer: may import every other package. Only the ``demo`` command imports
``deliverer.dev``, lazily.
"""
