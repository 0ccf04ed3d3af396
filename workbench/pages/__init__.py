"""The workflow pages of the main window: Data, Model, Train, Explore and Synthesize."""
