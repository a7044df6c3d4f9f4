"""Recital's shipped data, installed as the package `recital_assets`: models/<name>/ and primers/primer.mid.

A package so that a wheel carries it and importlib.resources finds it wherever Recital is installed.
"""
