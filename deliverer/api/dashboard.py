"""The Webhooks dashboard: a static page served by ``deliverer api`` at /dashboard.

The page (HTML, one script, one stylesheet, all in ``deliverer/api/static/``) is
public and carries no secrets: it asks for an org's API key, keeps it in the
tab's sessionStorage and sends it only in the Authorization header of its calls
to the JSON API under /v1/, so the key never appears in a URL or an access log.
Everything it shows comes from the documented API; it adds no data routes of its own.
The Content-Security-Policy allows nothing but this server, so the page works
offline and an injected script could not send data anywhere else.
"""

from importlib import resources

from aiohttp import web

PAGE = "/dashboard"

_ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}

_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def add_routes(app: web.Application) -> None:
    """Serve the dashboard page at /dashboard and its script and stylesheet below it."""
    files = {name: _read(name) for name in ("index.html", *_ASSETS)}

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=files["index.html"], content_type="text/html", charset="utf-8", headers=_HEADERS)

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in _ASSETS:
            raise web.HTTPNotFound()
        return web.Response(body=files[name], content_type=_ASSETS[name], charset="utf-8", headers=_HEADERS)

    async def to_page(request: web.Request) -> web.Response:
        raise web.HTTPFound(PAGE)

    app.router.add_get(PAGE, page)
    app.router.add_get(PAGE + "/", to_page)
    app.router.add_get(PAGE + "/{name}", asset)
