"""Synthetic scenes of coloured shapes: the media the reference model is trained and evaluated on,
how a scene becomes a model input, and how a caption or tag answer is graded against its truth."""
