"""Is a release worth using? Fidelity (distribution metrics on image features) and utility (label consistency,
train-on-synthetic/test-on-real) of synthetic images against real ones: ``guard evaluate``."""
