"""``cgcnn-lab serve``: a local web page and JSON API to try models on uploaded structures (the ``serve`` extra).

``app.create_app`` builds the FastAPI app; this package's modules import FastAPI only there, so that
``cgcnn-lab --help`` never loads it.
"""
