"""The HTTP API (``deliverer api``): the aiohttp app and its middlewares (``app``), the
handlers (``handlers``), the request and response bodies (``models``), request validation
(``validation``), the error shape (``errors``), what the app and its requests carry
(``context``), the OpenAPI document built from the models and the event catalog (``openapi``,
``catalog``) and the dashboard.

May import everything but ``deliverer.cli`` and ``deliverer.dev``.
"""
