"""The HTTP API (``deliverer api``): the aiohttp app and its middlewares, the handlers,
request validation, the OpenAPI document and the dashboard's static files.

May import everything but ``deliverer.cli`` and ``deliverer.dev``.
"""
