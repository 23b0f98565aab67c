"""The example app: the seed's web server, on worker kernels. ``python -m examples.app`` (or ``make demo``)
serves it on http://localhost:8000; see README.md beside this file and `examples.app.server`."""
