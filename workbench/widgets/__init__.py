"""Reusable widgets: schema-generated forms, loss curves, the presence matrix and slice previews."""
