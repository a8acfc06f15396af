"""The few browser pages midway serves for sign-in (no script, no external resource)."""

from __future__ import annotations

from html import escape

from aiohttp import web

_STYLE = ("body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;"
          "color:#1a1a1a}code{font-size:1.6rem;letter-spacing:.15rem}"
          "button{font-size:1rem;padding:.5rem 1.2rem}input{font-size:1.2rem;padding:.3rem}")
HEADERS = {"cache-control": "no-store", "x-frame-options": "DENY",
           "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                      "form-action 'self'; frame-ancestors 'none'",
           "referrer-policy": "same-origin", "x-content-type-options": "nosniff"}


def page(title: str, body: str, status: int = 200, form_to: str = "") -> web.Response:
    html = (f"<!doctype html><html><head><meta charset=utf-8><title>{escape(title)}</title>"
            f"<meta name=viewport content='width=device-width'><style>{_STYLE}</style></head>"
            f"<body><main data-page='{escape(title)}'><h1>{escape(title)}</h1>{body}</main>"
            "</body></html>")
    headers = dict(HEADERS)
    if form_to:  # the form's answer redirects there (CSP form-action covers redirects)
        headers["content-security-policy"] = headers["content-security-policy"].replace(
            "form-action 'self'", f"form-action 'self' {form_to}")
    return web.Response(status=status, text=html, content_type="text/html", headers=headers)


def confirm_code(user_code: str, idp_origin: str) -> web.Response:
    # Never submitted on its own (RFC 8628 5.4): the person compares the code with their
    # terminal and presses the button.
    return page("Sign in to midway", (
        "<p>Check that this code is the one your terminal shows:</p>"
        f"<p><code id=user-code>{escape(user_code)}</code></p>"
        "<form method=post action='/device'>"
        f"<input type=hidden name=user_code value='{escape(user_code)}'>"
        "<button type=submit id=continue>Continue to sign in</button></form>"
        "<p>If you did not start a sign-in, close this page.</p>"), form_to=idp_origin)


def enter_code(message: str = "", status: int = 200) -> web.Response:
    note = f"<p role=alert>{escape(message)}</p>" if message else ""
    return page("Sign in to midway", (
        f"{note}<form method=get action='/device'><label>Code from your terminal "
        "<input name=user_code autocomplete=off required></label> "
        "<button type=submit>Next</button></form>"), status)


def done(who: str) -> web.Response:
    return page("Signed in", f"<p id=signed-in>Signed in as <b>{escape(who)}</b>. "
                "You can close this window and return to your terminal.</p>")


def failed(message: str, status: int = 400) -> web.Response:
    return page("Sign-in failed", f"<p role=alert id=failure>{escape(message)}</p>", status)
