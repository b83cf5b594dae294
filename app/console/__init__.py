"""The admin console at ``/console``: server-rendered pages (Jinja2, htmx vendored), signed in with an admin key."""
