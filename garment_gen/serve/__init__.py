"""The design studio: a web service and page over a trained garment model.

    python -m garment_gen.serve model=pretrained:reference [host=127.0.0.1] [port=8000] [device=cpu]

The service holds the model and the sample store; the page at ``/`` lets a designer pick or
draw a shape, pick or upload a texture, and get the garment, its variations and a
shape x texture grid. ``app.py`` builds the FastAPI app, ``batching.py`` groups concurrent
requests into one forward pass, ``variations.py`` draws several garments for one pair,
``uploads.py`` reads uploads in memory and refuses bad ones, ``loadtest.py`` measures it.
Needs the ``serve`` extra (``pip install 'garment-gen[serve]'``); importing this package
does not import FastAPI.
"""

from __future__ import annotations
