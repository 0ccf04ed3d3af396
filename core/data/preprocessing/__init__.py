"""From source files to model-ready arrays, recording everything needed to go back; one module per job:

* :mod:`~core.data.preprocessing.config`: what it is told (:class:`PreprocessingConfig`, :class:`NormalizationConfig`);
* :mod:`~core.data.preprocessing.pipeline`: what it does to a subject and to a cohort, step by step;
* :mod:`~core.data.preprocessing.resampling`: the model grid, and resampling between grids;
* :mod:`~core.data.preprocessing.normalization`: intensity normalisation;
* :mod:`~core.data.preprocessing.records`: what it did, JSON round-trippable;
* :mod:`~core.data.preprocessing.source_space`: going back, onto the source grids in source units.
"""
