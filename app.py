"""Open the mmvae workbench on the bundled demo cohort: ``python app.py`` (or ``make run``).

Options: ``--no-demo``, ``--demo-subjects N``, ``--demo-shape X Y Z``, ``--settings FILE``, ``--runs DIR``,
``--screenshots DIR``; see ``python app.py --help``.
"""

import sys

import pyqtgraph as pg

from workbench.main import PYQTGRAPH_OPTIONS, main

if __name__ == "__main__":
    pg.setConfigOptions(**PYQTGRAPH_OPTIONS)
    sys.exit(main(sys.argv))
