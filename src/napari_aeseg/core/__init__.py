"""The napari-aeseg engine: models, noise, training, tiling, post-processing and I/O.

Nothing in this package imports napari, Qt or magicgui; the command line, the Python API and
the napari widgets all drive the same functions from here.
"""
