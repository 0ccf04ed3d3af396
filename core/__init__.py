"""mmvae-workbench core: the headless library (data, models, training, metrics, export). No Qt here."""

__version__ = "0.1.0"
