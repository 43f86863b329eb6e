"""Loom in the browser (docs/browser.md): `loom web build DIR` writes a static site that runs Loom under
Pyodide (runtime.py fetches the runtime into a cache; wheel.py packs this installation of Loom;
site.py writes the site with the native run's fingerprints; app.py is what the page runs, in the
browser and, for the native reference, here), `loom web serve DIR` serves it on loopback (serve.py).
"""
