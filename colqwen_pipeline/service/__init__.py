"""The model server (`colqwen-pipeline serve`): one loaded model behind HTTP for queries, pages
and search, shared by many pipeline runs (see docs/deployment.md).

``app.py`` has the routes, ``model.py`` the model holder (background load, readiness, cache),
``limits.py`` the request limits. FastAPI is imported only by ``app.py``.
"""
