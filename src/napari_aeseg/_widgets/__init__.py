"""napari dock widgets: thin Qt front-ends over :mod:`napari_aeseg.core`.

One module per widget (``train.py``, ``denoise.py``); ``session.py`` holds the models the
widgets of one napari session share. Nothing heavy is imported here.
"""

import os

# training shares the CPU with napari's main thread: OpenMP threads that spin between
# parallel regions would starve it (see benchmarks/gui_responsiveness.py)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
