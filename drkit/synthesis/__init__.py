"""The parts of `drkit synth` (synthetic face videos with exact facial-action labels), usable
without the stage:

- `au_model`: action units as events, their landmark displacements, valence / arousal;
- `warp`: triangulation and piecewise-affine warp of an image by its landmarks;
- `identities`: faces to animate (photos, video frames, pseudo-identities of one photo);
- `render`: one animated sequence (frames, exact landmarks, AU curves).
"""
