"""Browser tests: the notebooks in a real JupyterLab, driven by Playwright on Chromium (make browser-test)."""
