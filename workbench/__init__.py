"""mmvae workbench: the PySide6 desktop application over the headless ``core`` library.

Pages follow the workflow Data -> Model -> Train -> Explore -> Synthesize. Every long operation is a
plain ``core`` function run by :mod:`workbench.workers` in a QThread; the GUI never computes models or
data itself. Start it with ``python app.py`` (or ``make run``).
"""
