"""Simulators that drive a running stack like a population of users."""
