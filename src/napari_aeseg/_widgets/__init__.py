"""napari dock widgets: thin Qt front-ends over :mod:`napari_aeseg.core`.

One module per widget (``train.py``, ``denoise.py``); ``session.py`` holds the models the
widgets of one napari session share. Nothing heavy is imported here.
"""
