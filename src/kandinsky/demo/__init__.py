"""The demo model's world: synthetic captioned scenes and an independent judge.

- `kandinsky.demo.data`: scenes of 1–3 coloured shapes on plain or gradient backgrounds,
  rendered with PIL and captioned in English and Russian, deterministic by seed.
- `kandinsky.demo.judge`: a small attribute classifier trained on those scenes (its own
  network, nothing shared with the generator) that scores prompt adherence and gives
  features for a domain Fréchet distance.

Importing this package does no work; import the submodules you need.
"""
