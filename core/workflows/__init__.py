"""What a user asks for, each a module: train and resume runs (:mod:`~core.workflows.runs`), impute a cohort
(:mod:`~core.workflows.impute`), synthesize a subject (:mod:`~core.workflows.synthesis`), project the latent
space (:mod:`~core.workflows.projection`), evaluate (:mod:`~core.workflows.evaluate`), export volumes
(:mod:`~core.workflows.export`), report (:mod:`~core.workflows.report`), share a model
(:mod:`~core.workflows.sharing`), and the ``mmvae`` command line over them all (:mod:`~core.workflows.cli`)."""
