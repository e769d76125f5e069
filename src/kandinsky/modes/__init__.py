"""Generation modes: each builds a condition and a start latent, then runs the one sampling loop."""
