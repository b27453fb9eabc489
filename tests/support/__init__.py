"""Shared test support: the cluster-side fakes and console capture every test layer uses.

Kept apart from the test modules so that no test module imports another one, and so that
one fake of kubectl, helm and the state store is the one all the specifications run against.
"""
