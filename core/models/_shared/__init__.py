"""Machinery every model shares, written once: Gaussians, product of experts, likelihoods, subsets,
annealing, masking and typed outputs."""
