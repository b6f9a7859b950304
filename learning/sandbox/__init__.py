"""Untrusted code, executed in the jail: the lowest layer, so training's rewards can use it too."""
