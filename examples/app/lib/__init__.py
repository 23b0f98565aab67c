"""What the example app's workers share. Untrusted workers see this folder on their ``sys.path`` (and may read
nothing else of the app but their own module), so they import its modules by their own names: ``import state``,
``from web import Response``. The host and the trusted workers import them as ``examples.app.lib.web``."""
