"""Inference engines behind the gateway: the SGLang client/launcher and the built-in engine."""
